from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core.testing import VirtualClock
from headrace_guards import (
    CapacityExceeded,
    ConfigurationError,
    GuardEvent,
    RateLimited,
    RateLimiter,
)


async def test_bucket_starts_full_then_paces(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(10, 1.0)  # burst 10, one token per 0.1 s
        start = clock.now()
        for _ in range(10):
            await limiter.acquire()
        assert clock.now() == start
        await limiter.acquire()
        assert clock.now() - start == pytest.approx(0.1)
        await limiter.acquire()
        assert clock.now() - start == pytest.approx(0.2)


async def test_default_burst() -> None:
    assert RateLimiter(2.5).burst == 3
    assert RateLimiter(0.5, 1).burst == 1
    assert RateLimiter(100, 60).burst == 100


async def test_first_come_first_served_reservations(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(1, 1, burst=1)
        start = clock.now()
        done: list[tuple[int, float]] = []

        async def one(i: int) -> None:
            await limiter.acquire()
            done.append((i, clock.now() - start))

        await asyncio.gather(*(one(i) for i in range(4)))
    assert [i for i, _ in done] == [0, 1, 2, 3]
    assert [t for _, t in done] == pytest.approx([0, 1, 2, 3])


async def test_cost(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(1, 1, burst=5)
        start = clock.now()
        await limiter.acquire(5)
        await limiter.acquire(3)
        assert clock.now() - start == pytest.approx(3)


@pytest.mark.parametrize("cost", [0, -1, 6, 1.5, True, "1"])
async def test_cost_outside_capacity_raises_capacity_exceeded(cost: Any) -> None:
    limiter = RateLimiter(1, burst=5, name="api")
    with pytest.raises(CapacityExceeded) as info:
        await limiter.acquire(cost)
    assert isinstance(info.value, ValueError)
    assert info.value.capacity == 5
    assert limiter.snapshot().acquired == 0


async def test_max_wait_rejects_and_consumes_nothing(clock_start: float) -> None:
    events: list[GuardEvent] = []
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(1, 1, burst=2, max_wait=0.5, name="api")
        limiter.add_listener(events.append)
        await limiter.acquire(2)
        with pytest.raises(RateLimited) as info:
            await limiter.acquire()
        assert info.value.retry_after == pytest.approx(1.0)
        assert info.value.name == "api"
        await clock.advance(0.5)
        await limiter.acquire()  # wait 0.5 <= max_wait: the rejected call took nothing
        assert limiter.snapshot().rejected == 1
    assert [e.kind for e in events] == ["rejected"]


async def test_max_wait_zero_never_waits(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        limiter = RateLimiter(1, burst=1, max_wait=0)
        await limiter.acquire()
        with pytest.raises(RateLimited):
            await limiter.acquire()


async def test_cancelled_waiter_refunds(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(1, 1, burst=1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        assert limiter.snapshot().waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.snapshot().waiting == 0
        assert limiter.snapshot().acquired == 1  # the cancelled wait was never granted
        start = clock.now()
        await limiter.acquire()  # the refunded slot: 1 s after the first, not 2
        assert clock.now() - start == pytest.approx(1)
        assert limiter.snapshot().acquired == 2


async def test_float_noise_costs_no_sleep(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(3, 1, burst=3)
        start = clock.now()
        for _ in range(3):
            await limiter.acquire()
        await clock.advance(1 / 3)
        before = clock.now()
        await limiter.acquire()
        assert clock.now() == before
        assert clock.now() - start == pytest.approx(1 / 3)


async def test_call_async_with_and_decorator(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(1, 2, burst=1)
        start = clock.now()

        async def work(x: int) -> int:
            return x

        assert await limiter.call(work, 1) == 1
        async with limiter as entered:
            assert entered is limiter
        decorated = limiter(work)
        assert await decorated(3) == 3
        assert clock.now() - start == pytest.approx(4)
        assert limiter.snapshot().acquired == 3


async def test_snapshot_available(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        limiter = RateLimiter(2, 1, burst=4)
        assert limiter.snapshot().available == 4
        await limiter.acquire(3)
        assert limiter.snapshot().available == pytest.approx(1)
        await clock.advance(0.5)
        assert limiter.snapshot().available == pytest.approx(2)
        assert limiter.would_wait(4) == pytest.approx(1)


def test_state_resets_on_a_new_loop() -> None:
    limiter = RateLimiter(1, 3600, burst=1, max_wait=0)

    async def main() -> None:
        await limiter.acquire()

    asyncio.run(main())
    asyncio.run(main())  # a new loop (a new time base) starts with a full bucket


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": 1, "per": 0}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": 1.5}, "burst"),
        ({"rate": 1, "max_wait": -1}, "max_wait"),
        ({"rate": 1, "clock": 1}, "clock"),
    ],
)
def test_validation(kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        RateLimiter(**kwargs)


@settings(max_examples=80, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    per=st.floats(0.1, 10),
    burst=st.integers(1, 20),
    requests=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 20)), min_size=1, max_size=40),
)
def test_gcra_never_exceeds_rate_plus_burst(
    rate: float, per: float, burst: int, requests: list[tuple[float, int]]
) -> None:
    """Within any interval of length d, granted tokens <= burst + d * rate / per."""
    now = [0.0]
    limiter = RateLimiter(rate, per, burst=burst, clock=lambda: now[0])
    interval = per / rate
    grants: list[tuple[float, int]] = []
    for gap, cost in requests:
        now[0] += gap
        cost = min(cost, burst)
        expected = limiter.would_wait(cost)
        wait = limiter._reserve(cost)
        assert wait == pytest.approx(expected, abs=1e-9)
        assert wait >= 0
        grants.append((now[0] + wait, cost))
    # Reservations are first come, first served: grant times never go backwards.
    times = [t for t, _ in grants]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(times))
    for i in range(len(grants)):
        total = 0
        for j in range(i, len(grants)):
            total += grants[j][1]
            span = grants[j][0] - grants[i][0]
            assert total <= burst + span / interval + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.1, 1000), per=st.floats(0.01, 100), burst=st.integers(1, 50))
def test_gcra_full_bucket_grants_exactly_burst_at_once(rate: float, per: float, burst: int) -> None:
    limiter = RateLimiter(rate, per, burst=burst, clock=lambda: 1000.0)
    waits = [limiter._reserve(1) for _ in range(burst + 1)]
    assert waits[:burst] == [0.0] * burst
    assert waits[burst] == pytest.approx(per / rate)
    assert limiter.snapshot().available == 0


@settings(max_examples=100, deadline=None)
@given(
    burst=st.integers(1, 20),
    idle=st.floats(0, 100),
    costs=st.lists(st.integers(1, 20), min_size=1, max_size=10),
)
def test_gcra_refund_restores_state(burst: int, idle: float, costs: list[int]) -> None:
    now = [0.0]
    limiter = RateLimiter(3, 1, burst=burst, clock=lambda: now[0])
    for cost in costs:
        limiter._reserve(min(cost, burst))
    now[0] += idle
    before = limiter.would_wait(1)
    limiter._reserve(burst)
    limiter._tat -= burst * limiter._interval  # what a cancelled sleeper gives back
    assert limiter.would_wait(1) == pytest.approx(before, abs=1e-9)


@pytest.mark.parametrize("start", [0.0, 1.0, 100.0, 1000.0, 1234.0, 5000.0, 86400.0, 1e6])
async def test_a_wait_equal_to_max_wait_is_admitted_at_every_clock_magnitude(
    start: float,
) -> None:
    with VirtualClock(start=start) as clock:
        limiter = RateLimiter(10, per=1.0, burst=10, max_wait=0.3)
        await limiter.acquire(cost=5)
        await limiter.acquire(cost=5)
        with pytest.raises(RateLimited) as info:
            await limiter.acquire(cost=5)
        assert info.value.retry_after == pytest.approx(0.5)
        before = clock.now()
        await limiter.acquire(cost=3)  # needs exactly 0.3 s: admitted, whatever the start
        assert clock.now() - before == pytest.approx(0.3)
        snap = limiter.snapshot()
        assert (snap.acquired, snap.rejected, snap.waiting) == (3, 1, 0)


async def test_a_sync_function_is_named_not_async() -> None:
    def compute() -> int:
        return 42

    limiter = RateLimiter(10)
    with pytest.raises(TypeError, match="compute is not an async function"):
        await limiter.call(compute)  # type: ignore[arg-type]


@pytest.mark.parametrize("reading", [math.nan, math.inf, "12", None])
async def test_a_bad_clock_reading_is_refused_and_corrupts_nothing(reading: object) -> None:
    readings: list[object] = [0.0, reading, 0.0]

    def clock() -> Any:
        return readings.pop(0) if readings else 0.0

    limiter = RateLimiter(1, burst=1, clock=clock)
    await limiter.acquire()
    with pytest.raises((TypeError, ValueError), match="clock"):
        await limiter.acquire()
    # Nothing was reserved from the bad reading: the state is what one token left.
    assert limiter.would_wait() == pytest.approx(1.0)


def test_a_rate_and_period_whose_interval_overflows_fail_at_construction() -> None:
    with pytest.raises(
        ConfigurationError, match=r"per=1e\+308: must make per / rate \(rate=1e-300\) finite"
    ):
        RateLimiter(1e-300, per=1e308)
    with pytest.raises(ConfigurationError, match="per=1e-300"):
        RateLimiter(1e300, per=1e-300)  # an interval of 0: every call would pass


async def test_a_clock_reading_past_any_float_is_a_clear_error() -> None:
    limiter = RateLimiter(3, 1, clock=lambda: 10**400)
    with pytest.raises(ValueError, match=r"clock .* returned 1000.*, not a finite time"):
        await limiter.acquire()
