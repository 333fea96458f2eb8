"""Calls on its own: a call's way in (checks, admission) and out (accounting, release)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker, Retry
from headrace_throttle import (
    AIMD,
    CircuitOpenError,
    RequestBudget,
    ServerBusy,
    Slot,
    ThrottleClosed,
    ThrottleEvent,
    TokenBudget,
    TokenBudgetExceeded,
)
from headrace_throttle._admission import Admission, Pacing
from headrace_throttle._budget import Budget, LocalBudgets
from headrace_throttle._calls import Calls
from headrace_throttle._feedback import Feedback
from headrace_throttle._limit import bind_limit
from headrace_throttle._progress import Progress
from headrace_throttle._types import Events, ThrottleSnapshot


class Flaky(Exception):
    pass


class Rig:
    def __init__(
        self,
        limit: int = 2,
        *,
        budgets: Sequence[Budget] = (),
        breaker: CircuitBreaker | None = None,
        retry: Retry | None = None,
    ) -> None:
        events = Events("test")
        self.events: list[ThrottleEvent] = []
        events.listeners.add(self.events.append)
        self.local = LocalBudgets(tuple(budgets)) if budgets else None
        self.admission = Admission(
            limit=limit,
            timed=False,
            pacing=Pacing(0.0, 0.0, None, "throttle 'test'"),
            budgets=self.local,
            events=events,
            owner="Throttle('test')",
        )
        aimd = AIMD(failure_threshold=1)
        bind_limit(aimd, limit, 1, limit)
        self.progress = Progress(None, 10.0, None)
        self.feedback = Feedback(
            self.admission,
            events,
            limit=aimd,
            low=1,
            high=limit,
            min_interval=0.0,
            max_interval=30.0,
            is_failure=lambda exc: isinstance(exc, Exception),
            retry_after=None,
            accounting=self.local is not None,
        )
        self.calls = Calls(
            admission=self.admission,
            budgets=tuple(budgets),
            local=self.local,
            shared=None,
            feedback=self.feedback,
            progress=self.progress,
            breaker=breaker,
            retry=retry,
            snapshot=self.no_snapshot,
            name="test",
        )

    @staticmethod
    def no_snapshot() -> ThrottleSnapshot:
        raise AssertionError("no progress is reported here")

    async def enter(self, tokens: int = 0) -> Slot:
        slot = Slot(tokens)
        waiter = self.calls.enter(slot)
        if waiter is not None:
            await waiter
        return slot


async def test_a_callers_cancellation_is_no_failure_and_keeps_the_estimate_charged() -> None:
    with VirtualClock(start=0.0) as clock:
        tpm = TokenBudget(100, 60.0)
        rig = Rig(budgets=[tpm])
        slot = await rig.enter(tokens=50)
        slot.record_tokens(10)

        async def cancelled_caller() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError as exc:  # the caller's own cancellation
                rig.calls.finish_error(slot, exc)
                raise

        task = asyncio.create_task(cancelled_caller())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert rig.admission.in_flight == 0
        assert rig.progress.failed == 0
        assert rig.admission.limit == 2  # not congestion
        assert tpm.used(clock.now()) == 50  # max(recorded, estimate)


async def test_a_cancelled_error_the_callee_raised_itself_is_its_failure() -> None:
    rig = Rig()
    slot = await rig.enter()
    rig.calls.finish_error(slot, asyncio.CancelledError("raised by the callee"))
    assert rig.progress.failed == 1  # counted: nobody cancelled the caller
    assert rig.admission.limit == 2  # but it is not the service's congestion
    assert rig.admission.in_flight == 0
    other = await rig.enter()
    rig.calls.finish_error(other, Flaky())
    assert rig.admission.limit == 1  # (failure_threshold=1: a real failure decreases)


async def test_a_finished_call_releases_once_and_hands_its_slot_on() -> None:
    rig = Rig(limit=1)
    first = await rig.enter()
    queued = asyncio.create_task(rig.enter())
    await asyncio.sleep(0)
    assert rig.admission.waiting == 1
    rig.calls.finish_ok(first)
    assert rig.admission.in_flight == 1  # the waiter holds the slot now, nobody else
    second = await queued
    rig.calls.finish_ok(second)
    assert rig.admission.in_flight == 0
    assert rig.progress.completed == 2


async def test_an_error_refunds_nothing_of_a_call_that_ran_but_reconciles_it() -> None:
    with VirtualClock(start=0.0) as clock:
        rpm, tpm = RequestBudget(10, 60.0), TokenBudget(100, 60.0)
        rig = Rig(budgets=[rpm, tpm])
        slot = await rig.enter(tokens=40)
        slot.record_tokens(25)
        rig.calls.finish_error(slot, Flaky())
        assert (rpm.used(clock.now()), tpm.used(clock.now())) == (1, 25)
        assert rig.progress.failed == 1
        assert rig.admission.in_flight == 0


async def test_refusals_at_the_way_in_hold_nothing() -> None:
    with VirtualClock(start=0.0):
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=30.0)
        rig = Rig(budgets=[TokenBudget(100, 60.0)], breaker=breaker)
        with pytest.raises(TokenBudgetExceeded):
            await rig.enter(tokens=101)
        with pytest.raises(ValueError, match="tokens"):
            await rig.enter(tokens=-1)
        with pytest.raises(Flaky):
            async with breaker:
                raise Flaky
        with pytest.raises(CircuitOpenError):
            await rig.enter()
        rig.admission.close(lambda: ThrottleClosed(name="test"))
        with pytest.raises(ThrottleClosed):
            await rig.enter()
        assert rig.admission.in_flight == rig.admission.waiting == 0


async def test_a_hint_pauses_before_the_retry_waits_and_attempts_are_numbered() -> None:
    with VirtualClock(start=0.0) as clock:
        rig = Rig(retry=Retry(3, backoff=fixed(0.0)))
        attempts: list[tuple[int, float]] = []

        async def busy_twice(slot: Slot) -> str:
            attempts.append((slot.attempt, clock.now()))
            if slot.attempt < 2:
                raise ServerBusy(retry_after=4.0)
            return "ok"

        slot = await rig.enter()
        assert await rig.calls.run(busy_twice, slot) == "ok"
        # The retry waits out each hint; the pause was in place before it waited.
        assert attempts == [(0, 0.0), (1, 4.0), (2, 8.0)]
        pauses = [(e.at, e.data["until"]) for e in rig.events if e.kind == "paused"]
        assert pauses == [(0.0, 4.0), (4.0, 8.0)]
        assert rig.admission.limit == 1  # two hints of one epoch: one decrease
        rig.calls.finish_ok(slot)
