"""The latency-based limit finds a service's concurrency from its latency alone."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import ConfigurationError, Gradient, Limit, Slot, Throttle, Vegas

KNEE = 12
BASE = 0.1


def contended(concurrency: int) -> float:
    """12 workers: past the knee every extra concurrent call adds a full base latency."""
    return BASE if concurrency <= KNEE else BASE * (1 + concurrency - KNEE)


async def simulate(
    limit: Gradient | Vegas, latency: Callable[[int], float], seconds: float = 300.0
) -> tuple[list[int], int, int]:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(100, initial_concurrency=1, limit=limit)
        active = [0]
        failures = [0]
        done = [0]
        rng = random.Random(1)
        history: list[int] = []

        async def service(slot: Slot) -> None:
            active[0] += 1
            try:
                await asyncio.sleep(latency(active[0]) * rng.uniform(0.95, 1.05))
            finally:
                active[0] -= 1
            done[0] += 1

        async def worker() -> None:
            while clock.now() < seconds:
                try:
                    await t.execute(service)
                except Exception:
                    failures[0] += 1

        async def sample() -> None:
            while clock.now() < seconds:
                await asyncio.sleep(1.0)
                history.append(t.snapshot().concurrency)

        await asyncio.gather(sample(), *(worker() for _ in range(100)))
        return history, failures[0], done[0]


async def test_settles_near_the_knee_without_failures() -> None:
    history, failures, done = await simulate(
        Gradient(probe_interval=30.0, rng=random.Random(2)), contended
    )
    assert failures == 0
    # the periodic probe drops to 1 for a few samples on purpose: leave those out
    settled = [c for c in history[-150:] if c > 1]
    assert len(settled) >= 140
    assert min(settled) >= KNEE - 2
    assert max(settled) <= KNEE + 8
    assert KNEE <= sum(settled) / len(settled) <= KNEE + 5
    # the sqrt(limit) headroom costs throughput on so steep a knee, but far less than
    # an unbounded queue would (at 100 in flight the service does 1.1 calls/s)
    assert done / 300.0 > 0.3 * KNEE / BASE


async def test_grows_to_the_ceiling_when_latency_stays_flat() -> None:
    history, failures, _ = await simulate(Gradient(), lambda c: BASE, seconds=20.0)
    assert failures == 0
    assert history[-1] == 100


async def test_does_not_grow_while_the_caller_is_the_bottleneck() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(50, initial_concurrency=10, limit=Gradient())
        for _ in range(200):  # one call at a time: never half of the limit in use
            await t.execute(lambda s: asyncio.sleep(0.1))
        assert t.snapshot().concurrency == 10


def test_gradient_formula_and_bounds() -> None:
    g = Gradient(min_limit=2, max_limit=40, tolerance=2.0, smoothing=1.0, window=1)
    g._bind(16, 1, 100)
    assert g.on_sample(0.1, 16, False) == 20  # 16 * 1.0 + sqrt(16)
    assert g.long_rtt == pytest.approx(0.1)
    # latency four times the long-run level: gradient 2 * 0.1 / 0.4 = 0.5 (the floor)
    g2 = Gradient(smoothing=1.0, window=1)
    g2._bind(16, 1, 100)
    g2.on_sample(0.1, 16, False)
    for _ in range(9):
        g2.on_sample(0.1, 16, False)
    limit = g2.limit
    new = g2.on_sample(0.8, int(limit), False)
    assert new == int(limit * 0.5 + limit**0.5) or new < limit
    assert g.on_sample(0.0, 16, False) == g.limit  # a sample without latency is ignored
    assert isinstance(g, Limit)


def test_gradient_validation() -> None:
    with pytest.raises(ConfigurationError, match="min_limit"):
        Gradient(min_limit=0)
    with pytest.raises(ConfigurationError, match="max_limit"):
        Gradient(min_limit=5, max_limit=2)
    with pytest.raises(ConfigurationError, match="tolerance"):
        Gradient(tolerance=0.5)
    with pytest.raises(ConfigurationError, match="smoothing"):
        Gradient(smoothing=0)
    with pytest.raises(ConfigurationError, match="long_window"):
        Gradient(long_window=0)
    with pytest.raises(ConfigurationError, match="probe_interval"):
        Gradient(probe_interval=0)
    with pytest.raises(ConfigurationError, match="window"):
        Gradient(window=0)


async def test_a_user_limit_plugs_in() -> None:
    class Fixed:
        def __init__(self) -> None:
            self.samples: list[tuple[float, int, bool]] = []

        def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
            self.samples.append((rtt, in_flight, dropped))
            return 3 if dropped else 7

    with VirtualClock(start=0.0):
        user = Fixed()
        t = Throttle(10, limit=user)
        await t.execute(lambda s: asyncio.sleep(2))
        assert user.samples == [(2.0, 1, False)]
        assert t.snapshot().concurrency == 7

        async def fail(slot: Slot) -> None:
            raise RuntimeError

        with pytest.raises(RuntimeError):
            await t.execute(fail)
        assert t.snapshot().concurrency == 3
        assert t.snapshot().epoch == 2  # 10 -> 7 and 7 -> 3 were both decreases


async def test_server_hint_halves_a_gradient_limit_once() -> None:
    from headrace_throttle import ServerBusy

    with VirtualClock(start=0.0):
        t = Throttle(40, initial_concurrency=20, limit=Gradient())

        async def busy(slot: Slot) -> None:
            raise ServerBusy(retry_after=1.0)

        with pytest.raises(ServerBusy):
            await t.execute(busy)
        assert t.snapshot().concurrency == 10
        assert isinstance(t.limit, Gradient)
        assert t.limit.limit == 10.0


async def test_vegas_settles_near_the_knee_and_keeps_the_throughput() -> None:
    def queueing(concurrency: int) -> float:
        """12 workers and a FIFO queue: past the knee, latency grows with the queue."""
        return BASE * max(1.0, concurrency / KNEE)

    history, failures, done = await simulate(Vegas(), queueing, seconds=100.0)
    assert failures == 0
    settled = history[-60:]
    assert min(settled) >= KNEE
    assert max(settled) <= 2 * KNEE
    assert done / 100.0 > 0.95 * KNEE / BASE  # the service's best: 12 calls per 0.1 s
    history, failures, _ = await simulate(Vegas(), contended, seconds=100.0)
    assert failures == 0
    assert KNEE - 2 <= sum(history[-60:]) / 60 <= KNEE + 6


def test_vegas_steps_and_validation() -> None:
    v = Vegas(smoothing=1.0)
    v._bind(10, 1, 100)
    for _ in range(10):  # one window at the no-queue latency: grow by beta = 6
        v.on_sample(0.1, 10, False)
    assert v.limit == 16.0
    assert v.min_rtt == 0.1
    for _ in range(16):  # queue = 16 * (1 - 0.1 / 0.14) = 4.6, between alpha and beta: hold
        v.on_sample(0.14, 16, False)
    assert v.limit == 16.0
    for _ in range(16):  # latency x5: queue far above beta: shrink by log10(16)
        v.on_sample(0.5, 16, False)
    assert v.limit < 16.0
    before = v.limit
    v.on_sample(0.1, 16, True)  # a failure ends the window and shrinks
    assert v.limit < before
    assert isinstance(v, Limit)
    with pytest.raises(ConfigurationError, match="min_limit"):
        Vegas(min_limit=0)
    with pytest.raises(ConfigurationError, match="max_limit"):
        Vegas(min_limit=3, max_limit=2)
    with pytest.raises(ConfigurationError, match="alpha"):
        Vegas(alpha=0)
    with pytest.raises(ConfigurationError, match="beta"):
        Vegas(alpha=5, beta=2)
    with pytest.raises(ConfigurationError, match="smoothing"):
        Vegas(smoothing=0)
    with pytest.raises(ConfigurationError, match="probe_interval"):
        Vegas(probe_interval=-1)


async def test_vegas_probe_measures_min_rtt_afresh() -> None:
    with VirtualClock(start=0.0):
        v = Vegas(probe_interval=10.0, rng=random.Random(1))
        t = Throttle(8, initial_concurrency=2, limit=v)
        await t.execute(lambda s: asyncio.sleep(0.1))
        await t.execute(lambda s: asyncio.sleep(0.1))
        assert v.min_rtt == pytest.approx(0.1)
        await asyncio.sleep(20)
        for _ in range(8):  # the service got slower for good: the probe takes the new floor
            await t.execute(lambda s: asyncio.sleep(0.3))
        assert v.min_rtt == pytest.approx(0.3)
        assert Throttle.from_dict({"limit": {"kind": "vegas", "alpha": 2}}).limit.alpha == 2  # type: ignore[attr-defined]
