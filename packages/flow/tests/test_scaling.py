"""Scaling strategies: validation, decisions, and autoscaling on virtual time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core.testing import VirtualClock
from headrace_flow import (
    DROP,
    ConfigurationError,
    FixedScaling,
    Flow,
    Last,
    ScaleEvent,
    ScalingStrategy,
    StageStats,
    UtilizationScaling,
    fifo_queue,
    flow,
    lifo_queue,
    priority_queue,
    stage,
)
from headrace_flow._autoscale import Scaler


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"min_workers": -1}, "min_workers"),
        ({"min_workers": 5, "max_workers": 2}, "min_workers"),
        ({"max_workers": 0}, "max_workers"),
        ({"lower_utilization": 0.9, "upper_utilization": 0.1}, "lower_utilization"),
        ({"lower_utilization": -0.1}, "lower_utilization"),
        ({"upper_utilization": 1.5}, "upper_utilization"),
        ({"upscaling_rate": 0}, "upscaling_rate"),
        ({"downscaling_rate": 0}, "downscaling_rate"),
        ({"cooldown_seconds": -1}, "cooldown_seconds"),
        ({"dampening": 0}, "dampening"),
        ({"dampening": 1.5}, "dampening"),
        ({"sampling_period": 0}, "sampling_period"),
        ({"sampling_events": 0}, "sampling_events"),
        ({"min_workers": 1.5}, "min_workers"),
    ],
)
def test_utilization_scaling_validation(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        UtilizationScaling(**kwargs)


def test_fixed_scaling_validation() -> None:
    with pytest.raises(ConfigurationError, match="workers"):
        FixedScaling(0)
    with pytest.raises(ValueError, match="workers"):
        FixedScaling(workers=True)
    assert FixedScaling(3).initial_workers() == 3
    assert repr(FixedScaling(3)) == "FixedScaling(workers=3)"


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": 2, "scaling": FixedScaling(2)}, "workers"),
        ({"queue_size": -1}, "queue_size"),
        ({"retries": -1}, "retries"),
        ({"retry_on": 3}, "retry_on"),
        ({"timeout": 0}, "timeout"),
        ({"name": ""}, "name"),
        ({"ordered": "yes"}, "ordered"),
        ({"initial_delay": -1}, "initial_delay"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"jitter": 2}, "jitter"),
        ({"queue": 3}, "queue"),
    ],
)
def test_stage_validation(kwargs: dict[str, Any], argument: str) -> None:
    async def work(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match=argument):
        stage(work, **kwargs)


def test_other_validation() -> None:
    from headrace_flow import batched

    async def work(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="size"):
        batched(0)
    with pytest.raises(ConfigurationError, match="max_wait"):
        batched(2, max_wait=0)
    with pytest.raises(ConfigurationError, match="default_queue_size"):
        flow(work, default_queue_size=-1)
    with pytest.raises(ConfigurationError, match="queue_size"):
        flow(work).configure("work", queue_size=-2)
    with pytest.raises(ConfigurationError, match="on_error"):
        flow(work, on_error=42)


def _stats(workers: int, busy: int, queue: int, up: float | None = None) -> StageStats:
    return StageStats(
        "s",
        workers=workers,
        busy_workers=busy,
        idle_workers=workers - busy,
        queue_length=queue,
        last_scale_up_at=up,
    )


def test_decide_rules() -> None:
    s = UtilizationScaling(min_workers=1, max_workers=4, cooldown_seconds=1.0)
    assert isinstance(s, ScalingStrategy)
    assert s.decide(_stats(2, 2, 3), 10.0, False) == 1  # backlog and busy: up
    assert s.decide(_stats(2, 2, 0), 10.0, False) == 0  # busy, no backlog (trickle)
    assert s.decide(_stats(2, 0, 0), 10.0, True) == -1  # idle: down
    assert s.decide(_stats(1, 0, 0), 10.0, True) == 0  # at min
    assert s.decide(_stats(4, 4, 9), 10.0, False) == 0  # at max
    assert s.decide(_stats(2, 2, 3, up=9.5), 10.0, False) == 0  # cooldown
    assert s.decide(_stats(0, 0, 1, up=9.9), 10.0, False) == 1  # from zero, no cooldown
    big = UtilizationScaling(max_workers=20, upscaling_rate=4, dampening=1.0, cooldown_seconds=0)
    assert big.decide(_stats(2, 2, 3), 0.0, False) == 4
    assert UtilizationScaling(upscaling_rate=4).step_up() == 2


@given(
    workers=st.integers(0, 20),
    busy=st.integers(0, 20),
    queue=st.integers(0, 50),
    low=st.integers(0, 5),
    extra=st.integers(0, 10),
)
def test_decision_stays_within_bounds(
    workers: int, busy: int, queue: int, low: int, extra: int
) -> None:
    s = UtilizationScaling(min_workers=low, max_workers=max(1, low + extra), cooldown_seconds=0)
    busy = min(busy, workers)
    if not low <= workers <= s.max_workers:
        return
    delta = s.decide(_stats(workers, busy, queue), 0.0, False)
    assert s.min_workers <= workers + delta <= s.max_workers


async def test_flowrhythm_methods_on_builtin_strategies() -> None:
    from headrace_flow import StageSnapshot

    s = UtilizationScaling(max_workers=3, cooldown_seconds=0)
    snap = StageSnapshot("x", busy_workers=1, idle_workers=0, queue_length=2)
    assert s.on_enqueue(snap) == 1
    assert s.on_dequeue(StageSnapshot("x", 0, 2, 0)) == -1
    assert FixedScaling(2).on_enqueue(snap) == 0 == FixedScaling(2).on_dequeue(snap)


async def test_burst_scales_up_then_idle_shrinks_on_a_timer() -> None:
    scaling = UtilizationScaling(
        min_workers=1, max_workers=6, cooldown_seconds=0.2, sampling_period=0.5
    )
    events: list[ScaleEvent] = []

    async def work(x: int) -> None:
        await asyncio.sleep(0.05)

    f = flow(stage(work, scaling=scaling, queue_size=10))
    f.add_listener(lambda e: events.append(e) if isinstance(e, ScaleEvent) else None)
    samples: list[int] = []
    with VirtualClock() as clock:
        async with f.push() as h:
            for i in range(300):
                await h.send(i)
                samples.append(f.stats().stages["work"].workers)
            assert f.stats().stages["work"].workers == 6
            start = clock.now()
            await asyncio.sleep(4)
            assert f.stats().stages["work"].workers == 1
            down = [e for e in events if e.after < e.before]
            assert down
            assert all(e.at > start for e in down)
            assert all(e.at - start <= 4 for e in down)
    assert max(samples) == 6
    assert min(samples) >= 1
    stats = f.stats().stages["work"]
    assert stats.last_scale_up_at is not None
    assert stats.last_scale_down_at is not None


async def test_min_workers_kept_while_source_runs() -> None:
    scaling = UtilizationScaling(
        min_workers=2, max_workers=8, cooldown_seconds=0, sampling_period=0.01
    )

    async def trickle() -> AsyncIterator[int]:
        for i in range(50):
            await asyncio.sleep(0.05)
            yield i

    seen: list[int] = []

    async def work(x: int) -> None:
        seen.append(f.stats().stages["work"].workers)

    f = flow(stage(work, scaling=scaling))
    with VirtualClock():
        await f.run(trickle)
    assert min(seen) >= 2


async def test_custom_protocol_strategy_is_clamped() -> None:
    class Wild:
        min_workers = 1
        max_workers = 3

        def initial_workers(self) -> int:
            return 10

        def decide(self, stats: StageStats, now: float, tick: bool) -> int:
            return random.choice([-5, 5])

    async def work(x: int) -> None:
        await asyncio.sleep(0.01)
        counts.append(f.stats().stages["work"].workers)

    counts: list[int] = []
    random.seed(7)
    f = flow(stage(work, scaling=Wild()))
    with VirtualClock():
        await f.run(range(100))
    assert counts
    assert all(1 <= c <= 3 for c in counts)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_autoscaling_never_leaves_bounds(seed: int) -> None:
    rng = random.Random(seed)
    low, high = rng.randint(0, 2), rng.randint(3, 6)

    async def main() -> list[int]:
        scaling = UtilizationScaling(
            min_workers=low,
            max_workers=high,
            cooldown_seconds=rng.choice([0, 0.1]),
            sampling_period=0.05,
        )
        observed: list[int] = []

        async def src() -> AsyncIterator[int]:
            for i in range(80):
                if rng.random() < 0.2:
                    await asyncio.sleep(rng.random() * 0.3)
                observed.append(f.stats().stages["work"].workers)
                yield i

        async def work(x: int) -> None:
            await asyncio.sleep(rng.random() * 0.05)

        f = flow(stage(work, scaling=scaling))
        with VirtualClock():
            await f.run(src)
        return observed

    observed = asyncio.run(main())
    assert all(0 <= w <= high for w in observed)
    assert max(observed) >= 1


async def _double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: flow(_double, default_queue_size=True), "default_queue_size=True"),
        (lambda: flow(_double, default_queue_size=1.0), "default_queue_size=1.0"),  # type: ignore[call-overload]
        (lambda: flow(), r"stages=\(\): flow\(\) needs at least one stage"),
        (lambda: fifo_queue(float("nan")), "maxsize=nan"),  # type: ignore[arg-type]
        (lambda: lifo_queue("1"), "maxsize='1'"),  # type: ignore[arg-type]
        (lambda: priority_queue(-1), "maxsize=-1"),
        (lambda: Flow().add_transformer(_double, scaling_strategy=3), "scaling_strategy=3"),
        (lambda: Flow().set_default_scaling_strategy(3), "strategy=3"),
        (lambda: Flow().set_error_handler(3), "handler=3"),
    ],
)
def test_bad_settings_name_the_argument_the_caller_gave(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_no_stage_is_still_a_type_error() -> None:
    with pytest.raises(TypeError):
        flow()


class _Ticking:
    """A custom strategy with a ``sampling_period``, counting its periodic evaluations."""

    min_workers = 1
    max_workers = 2

    def __init__(self, sampling_period: float) -> None:
        self.sampling_period = sampling_period
        self.ticks = 0

    def initial_workers(self) -> int:
        return 1

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        self.ticks += tick
        if self.ticks > 10_000:  # a tick re-armed at the same instant: fail, do not hang
            raise RuntimeError("the tick never lets the clock move on")
        return 0


async def _slow(x: int) -> int:
    await asyncio.sleep(0.1)
    return x


@pytest.mark.parametrize("period", [1e-300, 1e-9])
async def test_a_sampling_period_under_a_millisecond_ticks_every_millisecond(
    period: float,
) -> None:
    strategy = _Ticking(period)
    with VirtualClock():
        loop = asyncio.get_running_loop()
        start = loop.time()
        # with the period as given, the tick re-armed at the same instant for ever: the
        # virtual clock never moved on
        stats = await flow(stage(_slow, scaling=strategy)).run(range(3))
        elapsed = loop.time() - start
    assert stats.completed == 3
    assert 0 < strategy.ticks <= elapsed / 0.001 + 1  # at most one tick per millisecond
    utilization = UtilizationScaling(min_workers=1, max_workers=2, sampling_period=period)
    assert Scaler(utilization).tick == 0.001  # the built-in strategy's tick is clamped too


async def test_last_of_drop_and_a_fan_out_yielding_a_marker_fail_the_item_clearly() -> None:
    with pytest.raises(TypeError, match=r"Last\(DROP\) has no final item"):
        Last(DROP)

    async def spread(x: int) -> AsyncIterator[object]:
        yield x
        if x == 1:
            yield DROP

    errors: list[BaseException] = []

    async def keep(item: object, exc: BaseException) -> None:
        errors.append(exc)

    out: list[object] = []

    async def sink(x: object) -> None:
        out.append(x)

    stats = await flow(spread, sink, on_error=keep).run(range(3))
    assert out == [0, 1, 2]  # the marker never reached the sink as data
    assert stats.failed == 1
    assert len(errors) == 1
    assert isinstance(errors[0], TypeError)
    assert "fan-out stage" in str(errors[0])
    assert "yielded DROP" in str(errors[0])
