"""Budgets: S5 (reserve then reconcile), S6 (impossible request), S13 (O(1) accounting)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core import CapacityExceeded
from headrace_core.testing import VirtualClock
from headrace_throttle import (
    ConfigurationError,
    RequestBudget,
    Slot,
    Throttle,
    TokenBudget,
    TokenBudgetExceeded,
)

# Time-based behaviour must not depend on the clock's magnitude.
MAGNITUDES = pytest.mark.parametrize("start", [0.0, 1e3, 1e6])


@MAGNITUDES
async def test_estimates_are_reserved_before_the_call(start: float) -> None:
    """Budget 100/60 s, 10 concurrent calls of 50: never more than 100 in the window."""
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(100, 60.0)
        t = Throttle(10, token_budget=budget)
        starts: list[float] = []
        peak = [0]

        async def call(slot: Slot) -> None:
            starts.append(clock.now() - start)
            peak[0] = max(peak[0], budget.used(clock.now()))
            await asyncio.sleep(1)
            slot.record_tokens(50)

        await asyncio.gather(*(t.execute(call, tokens=50) for _ in range(10)))
        assert peak[0] == 100
        assert starts == [0.0, 0.0, 60.0, 60.0, 120.0, 120.0, 180.0, 180.0, 240.0, 240.0]


@MAGNITUDES
async def test_recorded_tokens_replace_the_estimate(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(1000, 60.0)
        t = Throttle(10, token_budget=budget)

        async def call(slot: Slot) -> None:
            assert budget.used(clock.now()) == 500  # the estimate, during the call
            slot.record_tokens(120)
            slot.record_tokens(30)

        await t.execute(call, tokens=500)
        assert budget.used(clock.now()) == 150
        snap = t.snapshot()
        assert snap.tokens_used == 150
        assert snap.tokens_remaining == 850

        async def more(slot: Slot) -> None:
            slot.record_tokens(700)

        await t.execute(more, tokens=100)  # an extra charge beyond the estimate
        assert budget.used(clock.now()) == 850
        await asyncio.sleep(60)
        assert budget.used(clock.now()) == 0  # charges expire window_seconds after start


@MAGNITUDES
async def test_estimate_stays_when_nothing_is_recorded(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(1000, 60.0)
        t = Throttle(2, token_budget=budget)
        await t.execute(lambda s: asyncio.sleep(0), tokens=300)
        assert budget.used(clock.now()) == 300


@MAGNITUDES
async def test_failed_calls_tokens_count(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(100, 60.0)
        t = Throttle(2, token_budget=budget)

        async def fails(slot: Slot) -> None:
            slot.record_tokens(80)
            raise RuntimeError("server error after consuming tokens")

        with pytest.raises(RuntimeError):
            await t.execute(fails)
        assert budget.used(clock.now()) == 80


@MAGNITUDES
async def test_zero_token_call_waits_while_the_window_is_overspent(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(100, 10.0)
        t = Throttle(2, token_budget=budget)

        async def overspend(slot: Slot) -> None:
            slot.record_tokens(150)

        await t.execute(overspend)
        started: list[float] = []

        async def note(slot: Slot) -> None:
            started.append(clock.now() - start)

        await t.execute(note)
        assert started == [10.0]


@MAGNITUDES
async def test_request_larger_than_budget_fails_at_once(start: float) -> None:
    with VirtualClock(start=start) as clock:
        t = Throttle(2, budgets=[RequestBudget(10), TokenBudget(1000, name="tpm")])
        called: list[int] = []

        async def record(slot: Slot) -> None:
            called.append(1)

        with pytest.raises(TokenBudgetExceeded) as info:
            await t.execute(record, tokens=1001)
        assert clock.now() == start
        assert called == []
        assert isinstance(info.value, CapacityExceeded)
        assert isinstance(info.value, ValueError)
        assert info.value.requested == 1001
        assert info.value.capacity == 1000
        assert "1001" in str(info.value)
        assert "1000" in str(info.value)
        with pytest.raises(TokenBudgetExceeded):
            async with t.acquire(tokens=5000):
                pass
        assert t.snapshot().waiting == 0


async def test_negative_tokens_are_refused() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(2)
        with pytest.raises(ValueError, match="tokens"):
            await t.execute(lambda s: asyncio.sleep(0), tokens=-1)
        slot = Slot()
        with pytest.raises(ValueError, match="count"):
            slot.record_tokens(-3)


@MAGNITUDES
async def test_requests_and_tokens_per_minute_at_once(start: float) -> None:
    with VirtualClock(start=start) as clock:
        rpm = RequestBudget(3, 60.0)
        tpm = TokenBudget(1000, 60.0)
        t = Throttle(10, budgets=[rpm, tpm])
        starts: list[float] = []

        async def call(slot: Slot) -> None:
            starts.append(clock.now() - start)
            slot.record_tokens(100)

        await asyncio.gather(*(t.execute(call, tokens=100) for _ in range(7)))
        assert starts == [0.0, 0.0, 0.0, 60.0, 60.0, 60.0, 120.0]  # RPM binds
        starts.clear()
        await asyncio.sleep(120)

        async def big(slot: Slot) -> None:
            starts.append(clock.now())
            slot.record_tokens(600)

        await asyncio.gather(*(t.execute(big, tokens=600) for _ in range(2)))
        assert starts[1] - starts[0] == 60.0  # TPM binds (600 + 600 > 1000)


@MAGNITUDES
async def test_cancelled_in_flight_call_keeps_its_charge(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(1000, 60.0)
        t = Throttle(2, token_budget=budget)

        async def hang(slot: Slot) -> None:
            slot.record_tokens(10)
            await asyncio.sleep(3600)

        task = asyncio.create_task(t.execute(hang, tokens=400))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.used(clock.now()) == 400  # max(estimate, recorded): it may have counted
        assert t.snapshot().failed == 0


@MAGNITUDES
async def test_cancelled_waiter_holds_nothing(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(100, 60.0)
        rpm = RequestBudget(5, 60.0)
        t = Throttle(1, budgets=[budget, rpm])
        gate = asyncio.Event()
        running = asyncio.create_task(t.execute(lambda s: gate.wait(), tokens=10))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0), tokens=50))
        await asyncio.sleep(1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.set()
        await running
        assert budget.used(clock.now()) == 10
        assert rpm.used(clock.now()) == 1
        assert t.snapshot().waiting == 0


@MAGNITUDES
async def test_waiter_cancelled_after_hand_off_gives_everything_back(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(100, 60.0)
        t = Throttle(1, token_budget=budget)
        gate = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        async def first(slot: Slot) -> None:
            await gate.wait()
            # runs before the hand-off below wakes the waiter: it is cancelled after it
            asyncio.get_running_loop().call_soon(tasks[0].cancel)

        running = asyncio.create_task(t.execute(first))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0), tokens=30))
        tasks.append(waiter)
        await asyncio.sleep(0)
        assert t.snapshot().waiting == 1
        gate.set()
        await running  # hands the slot to the waiter, which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert t.snapshot().in_flight == 0
        assert budget.used(clock.now()) == 0
        assert await t.execute(lambda s: asyncio.sleep(0, "ok")) == "ok"


class CountingDeque(deque[Any]):
    """Counts every operation the budget performs on its window; iteration is forbidden."""

    ops = 0

    def append(self, x: Any) -> None:
        CountingDeque.ops += 1
        super().append(x)

    def popleft(self) -> Any:
        CountingDeque.ops += 1
        return super().popleft()

    def __getitem__(self, i: Any) -> Any:
        CountingDeque.ops += 1
        return super().__getitem__(i)

    def __iter__(self) -> Any:
        raise AssertionError("the budget walked its whole window")


def _ops_per_call(window_entries: int) -> float:
    async def main() -> float:
        with VirtualClock(start=0.0):
            tpm = TokenBudget(10**9, 60.0)
            rpm = RequestBudget(10**9, 60.0)
            for budget in (tpm, rpm):
                entries = CountingDeque()
                for _ in range(window_entries):
                    entries.append([0.0, 1, True])
                budget._entries = entries
                budget._used = window_entries
            t = Throttle(8, budgets=[rpm, tpm])

            async def call(slot: Slot) -> None:
                slot.record_tokens(3)

            await asyncio.sleep(1)
            CountingDeque.ops = 0
            calls = 1000
            for _ in range(calls):
                await t.execute(call, tokens=5)
            t.snapshot()
            assert tpm.used(1.5) == window_entries + 3 * calls
            return CountingDeque.ops / calls

    return asyncio.run(main())


def test_budget_accounting_is_constant_in_window_size() -> None:
    small = _ops_per_call(10)
    large = _ops_per_call(100_000)
    assert small == large
    assert large <= 8


@MAGNITUDES
async def test_expiry_is_amortised_over_calls(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(10**9, 1.0)
        t = Throttle(8, token_budget=budget)
        for _ in range(5000):
            await t.execute(lambda s: asyncio.sleep(0), tokens=1)
        assert budget.used(clock.now()) == 5000
        await asyncio.sleep(1)
        assert budget.used(clock.now()) == 0
        assert len(budget._entries) == 0


def test_budget_validation() -> None:
    with pytest.raises(ConfigurationError, match="max_tokens"):
        TokenBudget(0)
    with pytest.raises(ConfigurationError, match="window_seconds"):
        TokenBudget(10, 0)
    with pytest.raises(ConfigurationError, match="max_requests"):
        RequestBudget(0)
    with pytest.raises(ConfigurationError, match="window_seconds"):
        RequestBudget(10, -1.0)
    with pytest.raises(ConfigurationError, match="name"):
        TokenBudget(10, store=object())  # type: ignore[arg-type]
    assert TokenBudget(5, 2.0).max_tokens == 5
    assert RequestBudget(7).max_requests == 7
    assert "TokenBudget(5" in repr(TokenBudget(5))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=60),  # estimate
            st.integers(min_value=0, max_value=80),  # recorded
            st.floats(min_value=0.0, max_value=3.0),  # duration
            st.booleans(),  # fails
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from([0.0, 1e3, 1e6]),
)
def test_admission_never_overspends_a_window(
    calls: list[tuple[int, int, float, bool]], start: float
) -> None:
    async def main() -> None:
        with VirtualClock(start=start) as clock:
            budget = TokenBudget(100, 5.0)
            t = Throttle(4, token_budget=budget)
            seen: list[int] = []

            async def one(estimate: int, recorded: int, duration: float, fails: bool) -> None:
                async def body(slot: Slot) -> None:
                    seen.append(budget.used(clock.now()))  # includes this call's estimate
                    await asyncio.sleep(duration)
                    # refunds only: usage can then only fall between admission and here
                    slot.record_tokens(min(recorded, estimate))
                    if fails:
                        raise RuntimeError

                with contextlib.suppress(RuntimeError):
                    await t.execute(body, tokens=estimate)

            await asyncio.gather(*(one(*c) for c in calls))
            assert len(seen) == len(calls)
            assert all(used <= 100 for used in seen)
            assert t.snapshot().in_flight == 0

    asyncio.run(main())


@MAGNITUDES
async def test_one_budget_shared_by_two_throttles(start: float) -> None:
    with VirtualClock(start=start) as clock:
        tpm = TokenBudget(100, 10.0)
        first = Throttle(2, token_budget=tpm)
        second = Throttle(2, token_budget=tpm)
        await first.execute(lambda s: asyncio.sleep(0), tokens=100)
        started: list[float] = []

        async def note(slot: Slot) -> None:
            started.append(clock.now() - start)

        await second.execute(note, tokens=10)
        assert started == [10.0]  # it waited for the other throttle's charge to expire


@MAGNITUDES
async def test_a_call_longer_than_the_window_reconciles_consistently(start: float) -> None:
    with VirtualClock(start=start) as clock:
        budget = TokenBudget(100, 10.0)
        t = Throttle(2, token_budget=budget)

        async def long_call(slot: Slot) -> None:
            await asyncio.sleep(20)
            slot.record_tokens(80)

        await t.execute(long_call, tokens=50)
        assert budget.used(clock.now()) == 0  # its charge started at t=0 and expired at 10
        assert budget._used == 0
        await t.execute(lambda s: asyncio.sleep(0), tokens=100)  # the whole window is free
        assert clock.now() == start + 20.0


@pytest.mark.parametrize("name", [42, b"tpm", ["tpm"], 1.5])
def test_a_budget_name_must_be_a_str(name: object) -> None:
    with pytest.raises(ConfigurationError, match="name") as info:
        TokenBudget(10, name=name)  # type: ignore[arg-type]
    assert info.value.argument == "name"
    with pytest.raises(ConfigurationError, match="name"):
        RequestBudget(10, name=name)  # type: ignore[arg-type]
