"""S7 (pacing is global and exact) and S8 (strict FIFO across slot, pacing and budgets)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core.testing import VirtualClock
from headrace_throttle import Slot, Throttle, TokenBudget

# Time-based behaviour must not depend on the clock's magnitude.
MAGNITUDES = pytest.mark.parametrize("start", [0.0, 1e3, 1e6])


@MAGNITUDES
async def test_concurrent_callers_start_exactly_one_interval_apart(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(5, min_dispatch_interval=1.0)
        starts: list[float] = []

        async def record(slot: Slot) -> None:
            starts.append(clock.now() - start)

        await asyncio.gather(*(t.execute(record) for _ in range(5)))
        assert starts == [0.0, 1.0, 2.0, 3.0, 4.0]


@MAGNITUDES
async def test_default_has_no_pacing_and_no_loop_turns(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(5)

        async def trivial(slot: Slot) -> int:
            return 1

        for _ in range(10):
            assert await t.execute(trivial) == 1
        assert clock.now() == start
        assert t.snapshot().dispatch_interval == 0.0


@MAGNITUDES
async def test_pacing_uses_the_doubled_interval_after_a_decrease(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(4, min_dispatch_interval=0.5, failure_threshold=1)
        t.record_failure()
        assert t.snapshot().dispatch_interval == 1.0
        starts: list[float] = []

        async def record(slot: Slot) -> None:
            starts.append(clock.now() - start)

        await asyncio.gather(*(t.execute(record) for _ in range(3)))
        assert starts == [0.0, 1.0, 2.0]


async def test_max_dispatch_interval_caps_the_doubling() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(64, min_dispatch_interval=1.0, max_dispatch_interval=3.0, failure_threshold=1)
        for _ in range(4):
            t.record_failure()
        assert t.snapshot().dispatch_interval == 3.0


@MAGNITUDES
async def test_jitter_is_reproducible_and_within_bounds(start: float) -> None:
    async def run(seed: int) -> list[float]:
        with VirtualClock(start=start) as clock:
            t = Throttle(5, min_dispatch_interval=1.0, jitter_fraction=0.5, rng=random.Random(seed))
            starts: list[float] = []

            async def record(slot: Slot) -> None:
                starts.append(clock.now())

            await asyncio.gather(*(t.execute(record) for _ in range(20)))
            return starts

    first = await run(7)
    assert first == await run(7)
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert all(0.5 - 1e-6 <= g <= 1.0 + 1e-6 for g in gaps)
    assert len(set(gaps)) > 1


@MAGNITUDES
async def test_fifo_large_request_is_not_starved_by_small_ones(start: float) -> None:
    """A 10-token request queued first, behind a 20/s stream of 1-token requests."""
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(10, window_seconds=1.0)
        t = Throttle(100, token_budget=budget)
        admitted: list[tuple[str, float]] = []

        async def job(label: str) -> None:
            async def body(slot: Slot) -> None:
                admitted.append((label, clock.now()))

            await t.execute(body, tokens=10 if label == "big" else 1)

        # the window is full of small charges when the big one arrives
        for _ in range(10):
            await job("small")
        big = asyncio.create_task(job("big"))
        await asyncio.sleep(0)
        stream = []
        for _ in range(20):
            stream.append(asyncio.create_task(job("small")))
            await asyncio.sleep(0.05)
        await asyncio.gather(big, *stream)
        order = [label for label, _ in admitted]
        big_at = dict(admitted)["big"]
        # as soon as the first window's charges expire (a small call arriving within the
        # clock's rounding of that instant counts as arriving at it)
        assert big_at - start == pytest.approx(1.0, abs=1e-6)
        assert order.index("big") == 10  # no small one overtook it
        assert all(at >= big_at for label, at in admitted[11:])


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=30),
    st.sampled_from([0.0, 1e3, 1e6]),
)
def test_admission_order_is_arrival_order(sizes: list[int], start: float) -> None:
    async def main() -> None:
        with VirtualClock(start=start):
            t = Throttle(3, token_budget=TokenBudget(10, 2.0), min_dispatch_interval=0.1)
            order: list[int] = []

            async def job(i: int, tokens: int) -> None:
                async def body(slot: Slot) -> None:
                    order.append(i)
                    await asyncio.sleep(0.3)

                await t.execute(body, tokens=tokens)

            tasks = []
            for i, n in enumerate(sizes):
                tasks.append(asyncio.create_task(job(i, n)))
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)
            assert order == list(range(len(sizes)))

    asyncio.run(main())


@MAGNITUDES
async def test_cancelled_head_waiter_unblocks_the_next(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(10, token_budget=TokenBudget(10, 60.0))
        await t.execute(lambda s: asyncio.sleep(0), tokens=8)
        admitted: list[float] = []

        async def body(slot: Slot) -> None:
            admitted.append(clock.now())

        big = asyncio.create_task(t.execute(body, tokens=5))
        small = asyncio.create_task(t.execute(body, tokens=2))
        await asyncio.sleep(1)
        assert admitted == []  # small waits behind big (FIFO)
        big.cancel()
        with pytest.raises(asyncio.CancelledError):
            await big
        await small
        assert admitted == [start + 1.0]
        assert t.snapshot().waiting == 0


# -- a wait that meets its bound: the decision does not flip with the clock's magnitude --


async def _arrive_after_three_tenths() -> float:
    """Sleep 0.1 s three times (the sum is not exactly 0.3 at every magnitude)."""
    for _ in range(3):
        await asyncio.sleep(0.1)
    return asyncio.get_running_loop().time()


@MAGNITUDES
async def test_a_call_one_interval_after_the_last_start_starts_at_once(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(4, min_dispatch_interval=0.3)
        await t.execute(lambda s: asyncio.sleep(0))
        arrived = await _arrive_after_three_tenths()
        starts: list[float] = []

        async def record(slot: Slot) -> None:
            starts.append(clock.now())

        await t.execute(record)
        assert starts == [arrived]  # no timer for a float residue of the interval


@MAGNITUDES
async def test_a_charge_has_left_the_window_exactly_one_window_later(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(10, window_seconds=0.3)
        t = Throttle(4, token_budget=budget)
        await t.execute(lambda s: asyncio.sleep(0), tokens=10)
        arrived = await _arrive_after_three_tenths()
        assert budget.remaining(clock.now()) == 10
        assert t.snapshot().tokens_used == 0
        starts: list[float] = []

        async def record(slot: Slot) -> None:
            starts.append(clock.now())

        await t.execute(record, tokens=10)
        assert starts == [arrived]


@MAGNITUDES
async def test_a_pause_has_ended_exactly_at_its_end(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(4)
        t.hold(0.3)
        arrived = await _arrive_after_three_tenths()
        assert t.snapshot().paused_until is None
        starts: list[float] = []

        async def record(slot: Slot) -> None:
            starts.append(clock.now())

        await t.execute(record)
        assert starts == [arrived]


@MAGNITUDES
async def test_the_limit_grows_exactly_one_cooling_period_later(start: float) -> None:
    with VirtualClock(start=start):
        t = Throttle(4, initial_concurrency=2, cooling_period=0.3)
        await t.execute(lambda s: asyncio.sleep(0))  # the first admission starts the clock
        await _arrive_after_three_tenths()
        await t.execute(lambda s: asyncio.sleep(0))
        assert t.snapshot().concurrency == 3
