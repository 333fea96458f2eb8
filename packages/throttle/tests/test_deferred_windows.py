"""Deferred window bookkeeping and the slot queue: equal to the eager forms, bounded, FIFO.

A window removes the charges that have left it only when its running room would refuse
a call, when it is read, and once per ``_SWEEP`` charges. These tests hold it to an
eager reference (every charge that has left is removed before every operation) over
random sequences of charges, reconciliations, refunds, outside charges, reads and wake
times; and the queue of waiting slots to strict FIFO under random cancellations.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core.lowlevel import within
from headrace_core.testing import VirtualClock
from headrace_throttle import RequestBudget, Slot, Throttle, TokenBudget
from headrace_throttle._budget import _SWEEP, Budget, LocalBudgets


# -- the eager reference -------------------------------------------------------------------
@dataclass
class EagerWindow:
    """One window that drops every charge that has left it before each operation."""

    capacity: int
    window: float
    tokens: bool
    charges: list[list[float | int | bool]] = field(default_factory=list)

    def expire(self, now: float) -> None:
        while self.charges and within(float(self.charges[0][0]) + self.window, now):
            self.charges.pop(0)[2] = False

    def used(self, now: float) -> int:
        self.expire(now)
        return sum(int(c[1]) for c in self.charges)

    def wake_time(self, amount: int, now: float) -> float:
        need = self.used(now) + amount - self.capacity
        if need <= 0:
            return 0.0
        freed = 0
        when = now
        for start, charged, _ in self.charges:
            freed += int(charged)
            when = float(start) + self.window
            if freed >= need:
                break
        return when


class Eager:
    """The reference for :class:`LocalBudgets`: the same rules, removal at every step."""

    def __init__(self, windows: list[EagerWindow]) -> None:
        self.windows = windows
        self.calls: dict[int, list[list[float | int | bool]]] = {}

    def amount(self, window: EagerWindow, tokens: int) -> int:
        return tokens if window.tokens else 1

    def try_charge(self, call: int, tokens: int, now: float) -> bool:
        if any(w.used(now) + self.amount(w, tokens) > w.capacity for w in self.windows):
            return False
        charges = []
        for w in self.windows:
            charge: list[float | int | bool] = [now, self.amount(w, tokens), True]
            w.charges.append(charge)
            charges.append(charge)
        self.calls[call] = charges
        return True

    def wake_time(self, tokens: int, now: float) -> float:
        return max(w.wake_time(self.amount(w, tokens), now) for w in self.windows)

    def settle(self, call: int, amount_of: list[int | None]) -> None:
        for charge, amount in zip(self.calls[call], amount_of, strict=True):
            if amount is not None and charge[2]:
                charge[1] = amount

    def record(self, tokens: int, now: float) -> None:
        for w in self.windows:
            if w.tokens:
                w.charges.append([now, tokens, True])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[bool, int, float]], list[tuple[object, ...]]]:
    kinds = draw(
        st.lists(
            st.tuples(
                st.booleans(),  # a token budget?
                st.integers(min_value=1, max_value=60),  # capacity
                st.sampled_from([1e-9, 0.5, 1.0, 3.0, 10.0]),  # window
            ),
            min_size=1,
            max_size=3,
        )
    )
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("charge"), st.integers(0, 40)),
                st.tuples(st.just("charge"), st.integers(0, 40)),
                st.tuples(st.just("tick"), st.sampled_from([0.0, 1e-8, 0.25, 0.5, 1.0, 2.5])),
                st.tuples(st.just("reconcile"), st.integers(0, 50), st.integers(0, 80)),
                st.tuples(st.just("cancelled"), st.integers(0, 50), st.integers(0, 80)),
                st.tuples(st.just("refund"), st.integers(0, 50)),
                st.tuples(st.just("record"), st.integers(0, 30)),
                st.tuples(st.just("wake"), st.integers(0, 40)),
                st.tuples(st.just("read")),
            ),
            max_size=120,
        )
    )
    return kinds, ops


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from([0.0, 1e3, 1e6]))
def test_deferred_removal_decides_exactly_as_eager_removal(
    scenario: tuple[list[tuple[bool, int, float]], list[tuple[object, ...]]], start: float
) -> None:
    kinds, ops = scenario
    budgets: list[Budget] = [
        TokenBudget(capacity, window) if tokens else RequestBudget(capacity, window)
        for tokens, capacity, window in kinds
    ]
    local = LocalBudgets(tuple(budgets))
    eager = Eager([EagerWindow(c, w, t) for t, c, w in kinds])
    # No call asks for more than the smallest token budget (TokenBudgetExceeded first).
    most = min((c for t, c, _ in kinds if t), default=40)
    slots: dict[int, Slot] = {}
    now = start
    for op in ops:
        kind = op[0]
        if kind == "tick":
            now += float(op[1])  # type: ignore[arg-type]
        elif kind == "charge":
            tokens = min(int(op[1]), most)  # type: ignore[call-overload]
            slot = Slot(tokens)
            admitted = local.try_charge(slot, now)
            assert admitted == eager.try_charge(len(slots), tokens, now)
            if admitted:
                slots[len(slots)] = slot
            else:
                assert not hasattr(slot, "_charges")
        elif kind in ("reconcile", "cancelled", "refund") and slots:
            call = int(op[1]) % len(slots)  # type: ignore[call-overload]
            slot = slots[call]
            if kind == "refund":
                if slot._charges is not None:
                    eager.settle(call, [0] * len(budgets))
                local.refund(slot)
                continue
            slot._recorded = int(op[2])  # type: ignore[call-overload]
            cancelled = kind == "cancelled"
            if slot._charges is not None:
                amount = max(slot._recorded, slot.tokens) if cancelled else slot._recorded
                eager.settle(call, [amount if w.tokens else None for w in eager.windows])
            local.reconcile(slot, cancelled=cancelled)
        elif kind == "record":
            local.record(int(op[1]), now)  # type: ignore[call-overload]
            eager.record(int(op[1]), now)  # type: ignore[call-overload]
        elif kind == "wake":
            tokens = min(int(op[1]), most)  # type: ignore[call-overload]
            assert local.wake_time(tokens, now) == eager.wake_time(tokens, now)
        elif kind == "read":
            for budget, window in zip(budgets, eager.windows, strict=True):
                assert budget.used(now) == window.used(now)
                assert budget.remaining(now) == max(0, window.capacity - window.used(now))
    for budget, window in zip(budgets, eager.windows, strict=True):
        assert budget.used(now) == window.used(now)
        # Nothing is held that the eager form has removed.
        assert len(budget._entries) == len(window.charges)


def test_a_window_never_refused_still_drops_what_has_left_it() -> None:
    # Memory stays bounded without a refusal: a sweep every _SWEEP charges.
    tpm = TokenBudget(10**12, 1.0)
    local = LocalBudgets((RequestBudget(10**12, 1.0), tpm))
    most = 0
    for i in range(10 * _SWEEP):
        assert local.try_charge(Slot(3), i * 0.01)  # about 100 charges per window
        most = max(most, len(tpm._entries))
    assert most <= 101 + _SWEEP
    used = tpm.used(10 * _SWEEP * 0.01)
    assert used == 3 * len(tpm._entries) <= 3 * 101


def test_a_refused_call_charges_nothing_even_when_an_earlier_budget_had_room() -> None:
    rpm, tpm = RequestBudget(10, 60.0), TokenBudget(100, 60.0)
    local = LocalBudgets((rpm, tpm))
    assert local.try_charge(Slot(90), 0.0)
    assert not local.try_charge(Slot(20), 1.0)
    assert (len(rpm._entries), len(tpm._entries)) == (1, 1)
    assert (rpm.used(1.0), tpm.used(1.0)) == (1, 90)


def test_the_same_budget_twice_is_checked_against_the_state_before_the_call() -> None:
    # As before: each budget is checked on its own, then every one is charged.
    tpm = TokenBudget(100, 60.0)
    local = LocalBudgets((tpm, tpm))
    assert local.try_charge(Slot(60), 0.0)
    assert tpm.used(0.0) == 120


def test_changing_a_budgets_capacity_keeps_its_usage() -> None:
    tpm = TokenBudget(100, 60.0)
    local = LocalBudgets((tpm,))
    assert local.try_charge(Slot(70), 0.0)
    tpm.capacity = 200
    assert tpm.max_tokens == 200
    assert (tpm.used(1.0), tpm.remaining(1.0)) == (70, 130)
    assert local.try_charge(Slot(130), 1.0)
    assert not local.try_charge(Slot(1), 1.0)
    tpm.window_seconds = 0.5
    assert tpm.used(1.0) == 130  # the first charge has now left the window


def test_the_budgets_keep_their_arguments() -> None:
    rpm = RequestBudget(5, 2.0)
    assert (rpm.capacity, rpm.max_requests, rpm.window_seconds) == (5, 5, 2.0)
    assert repr(rpm) == "RequestBudget(5, window_seconds=2)"


# -- the queue of slots ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
async def test_wake_ups_are_fifo_one_per_release_under_random_cancellations(seed: int) -> None:
    rng = random.Random(seed)
    with VirtualClock(start=0.0):
        limit = rng.randint(1, 6)
        t = Throttle(limit)
        started: list[int] = []
        running = [0]
        peak = [0]

        def work(i: int) -> Callable[[Slot], Awaitable[int]]:
            async def run(slot: Slot) -> int:
                started.append(i)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                try:
                    await asyncio.sleep(rng.choice([0.0, 0.0, 0.1, 0.5, 1.0]))
                finally:
                    running[0] -= 1
                return i

            return run

        n = 200
        tasks = [asyncio.create_task(t.execute(work(i))) for i in range(n)]
        await asyncio.sleep(0)
        cancelled: set[int] = set()
        for _ in range(60):
            await asyncio.sleep(rng.choice([0.0, 0.05, 0.2]))
            i = rng.randrange(n)
            if not tasks[i].done():
                tasks[i].cancel()
                cancelled.add(i)
            snap = t.snapshot()
            assert snap.in_flight <= limit
            assert snap.waiting <= n
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert peak[0] <= limit
        # Strict FIFO: the calls started in the order they were made.
        assert started == sorted(started)
        # Every call not cancelled before it started ran once, and returned.
        never_started = set(range(n)) - set(started)
        assert never_started <= cancelled
        for i, result in enumerate(results):
            if i not in cancelled:
                assert result == i
        snap = t.snapshot()
        assert (snap.in_flight, snap.waiting, len(t._queue)) == (0, 0, 0)
        assert all(task.done() for task in tasks)
        # The throttle serves the next call at once.
        assert await t.execute(work(n)) == n
