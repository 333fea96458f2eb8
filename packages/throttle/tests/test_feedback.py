"""Feedback on its own: outcomes and server hints into limit and pacing changes."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from headrace_core import CircuitOpenError, ConfigurationError
from headrace_core.testing import VirtualClock
from headrace_throttle import AIMD, Gradient, Limit, ServerBusy, Slot, ThrottleEvent
from headrace_throttle import _feedback as feedback_module
from headrace_throttle._admission import Admission, Pacing
from headrace_throttle._feedback import NOT_A_HINT, Feedback, retry_after_seconds
from headrace_throttle._limit import bind_limit
from headrace_throttle._types import Events


class Rig:
    """An admission and its feedback, with the events they emit."""

    def __init__(
        self,
        *,
        limit: Limit | None = None,
        initial: int = 8,
        low: int = 1,
        high: int = 8,
        min_interval: float = 0.0,
        max_interval: float = 30.0,
        is_failure: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception),
        retry_after: Callable[[BaseException], float | str | None] | None = None,
        accounting: bool = False,
    ) -> None:
        self.events: list[ThrottleEvent] = []
        events = Events("test")
        events.listeners.add(self.events.append)
        limiter = limit if limit is not None else AIMD(failure_threshold=2, cooling_period=10.0)
        start = bind_limit(limiter, initial, low, high)
        self.admission = Admission(
            limit=start,
            timed=not isinstance(limiter, AIMD),
            pacing=Pacing(min_interval, 0.0, None, "throttle 'test'"),
            budgets=None,
            events=events,
            owner="Throttle('test')",
        )
        self.admission.bind(asyncio.get_running_loop())
        self.feedback = Feedback(
            self.admission,
            events,
            limit=limiter,
            low=low,
            high=high,
            min_interval=min_interval,
            max_interval=max_interval,
            is_failure=is_failure,
            retry_after=retry_after,
            accounting=accounting,
        )

    def slot(self) -> Slot:
        """A finished call that started now, in the current epoch."""
        slot = Slot()
        slot._epoch = self.admission.epoch
        self.admission.mark_start(slot, self.admission.now())
        return slot

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]


class Flaky(Exception):
    pass


# -- the admission-epoch rule and AIMD ---------------------------------------------------------


async def test_one_burst_of_failures_decreases_once() -> None:
    with VirtualClock(start=0.0):
        rig = Rig()
        burst = [rig.slot() for _ in range(6)]  # all admitted in epoch 0
        for slot in burst:
            rig.feedback.failure(Flaky(), slot)
        assert rig.admission.limit == 4  # 2 failures -> 8 * 0.5; the other 4 are stale
        assert rig.admission.epoch == 1
        assert rig.kinds() == ["decreased"]
        later = [rig.slot() for _ in range(2)]  # admitted after the decrease
        for slot in later:
            rig.feedback.failure(Flaky(), slot)
        assert rig.admission.limit == 2
        assert rig.admission.epoch == 2


async def test_decrease_doubles_the_interval_and_recovery_halves_it() -> None:
    with VirtualClock(start=0.0) as clock:
        rig = Rig(
            limit=AIMD(failure_threshold=1, cooling_period=10.0),
            min_interval=0.5,
            max_interval=1.5,
        )
        rig.feedback.failure(Flaky(), rig.slot())
        assert (rig.admission.limit, rig.admission.interval) == (4, 1.0)
        rig.feedback.failure(Flaky(), rig.slot())
        assert (rig.admission.limit, rig.admission.interval) == (2, 1.5)  # capped
        decreased = rig.events[-1]
        assert decreased.data["concurrency"] == (4, 2)
        assert decreased.data["dispatch_interval"] == (1.0, 1.5)
        await clock.advance(10.0)
        rig.feedback.success(rig.slot())
        assert (rig.admission.limit, rig.admission.interval) == (3, 0.75)
        assert rig.events[-1].kind == "increased"
        assert rig.events[-1].data["reason"] == "recovered"


async def test_cooling_counts_from_the_first_admission() -> None:
    with VirtualClock(start=0.0) as clock:
        rig = Rig(initial=2, high=4)
        slot = rig.slot()  # the first admission, at t=0
        await clock.advance(10.0)
        rig.feedback.success(slot)
        assert rig.admission.limit == 3


async def test_errors_that_are_not_congestion_change_nothing() -> None:
    with VirtualClock(start=0.0):
        rig = Rig(
            limit=AIMD(failure_threshold=1),
            is_failure=lambda exc: not isinstance(exc, KeyError),
        )
        rig.feedback.failure(CircuitOpenError(retry_after=1.0), rig.slot())
        rig.feedback.failure(KeyError("ignored"), rig.slot())
        assert rig.admission.limit == 8
        assert rig.events == []
        rig.feedback.failure(Flaky(), rig.slot())
        assert rig.admission.limit == 4


async def test_a_failing_predicate_counts_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    with VirtualClock(start=0.0):
        rig = Rig(limit=AIMD(failure_threshold=1), is_failure=broken)
        rig.feedback.failure(Flaky(), rig.slot())
        assert rig.admission.limit == 4
        assert "predicate bug" in caplog.text
        assert rig.feedback.counts_quietly(Flaky()) is True


# -- a user's limit -----------------------------------------------------------------------------


class Scripted:
    """A user's Limit answering from a script (anything, also garbage)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.samples: list[tuple[float, int, bool]] = []

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        self.samples.append((rtt, in_flight, dropped))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[return-value]


async def test_a_latency_limit_gets_the_rtt_and_in_flight_of_each_call() -> None:
    with VirtualClock(start=0.0) as clock:
        limit = Scripted(6, 7)
        rig = Rig(limit=limit)
        slow = rig.slot()
        other = Slot()
        assert rig.admission.admit(other) is None  # still in flight
        await clock.advance(2.5)
        rig.feedback.success(slow)
        assert limit.samples == [(2.5, 2, False)]  # the other one plus itself
        assert rig.admission.limit == 6
        assert rig.admission.epoch == 1  # a latency decrease is congestion too
        rig.feedback.success(None)  # a call made outside the throttle: no latency
        assert limit.samples[-1] == (0.0, 1, False)
        assert rig.admission.limit == 7


@pytest.mark.parametrize("answer", [RuntimeError("limit bug"), math.nan, "3", None])
async def test_a_misbehaving_limit_leaves_the_limit_alone(answer: object) -> None:
    with VirtualClock(start=0.0):
        rig = Rig(limit=Scripted(answer), initial=5)
        rig.feedback.success(rig.slot())
        assert rig.admission.limit == 5
        assert rig.events == []


async def test_answers_out_of_bounds_are_clamped() -> None:
    with VirtualClock(start=0.0):
        rig = Rig(limit=Scripted(10**30, -5, math.inf), initial=4, low=2, high=8)
        rig.feedback.success(rig.slot())
        assert rig.admission.limit == 8
        rig.feedback.success(rig.slot())
        assert rig.admission.limit == 2
        rig.feedback.success(rig.slot())
        assert rig.admission.limit == 8


# -- server hints --------------------------------------------------------------------------------


async def test_a_server_hint_pauses_and_decreases_once_per_epoch() -> None:
    with VirtualClock(start=0.0):
        rig = Rig()
        first, second = rig.slot(), rig.slot()
        rig.feedback.failure(ServerBusy(retry_after=5.0), first)
        assert rig.admission.paused_until(0.0) == 5.0
        assert rig.admission.limit == 4
        rig.feedback.failure(ServerBusy(retry_after=8.0), second)  # same epoch
        assert rig.admission.paused_until(0.0) == 8.0  # the longest pause wins
        assert rig.admission.limit == 4  # but no second decrease
        assert rig.kinds() == ["paused", "decreased", "paused"]
        paused = rig.events[0]
        assert paused.data["reason"] == "ServerBusy"


async def test_a_hint_already_applied_while_the_call_ran_is_not_applied_again() -> None:
    with VirtualClock(start=0.0):
        rig = Rig()
        rig.feedback.failure(ServerBusy(retry_after=5.0), rig.slot(), hinted=True)
        assert rig.admission.paused_until(0.0) is None
        assert rig.admission.limit == 8


async def test_busy_without_a_time_decreases_without_pausing() -> None:
    with VirtualClock(start=0.0):
        rig = Rig()
        assert math.isnan(rig.feedback.hint(ServerBusy()))
        rig.feedback.failure(ServerBusy(), rig.slot())
        assert rig.admission.paused_until(0.0) is None
        assert rig.admission.limit == 4


async def test_an_extractor_reads_hints_and_a_bad_one_is_ignored_once_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def extractor(exc: BaseException) -> float | str | None:
        if isinstance(exc, KeyError):
            raise ValueError("no header")
        return "12" if isinstance(exc, Flaky) else None

    with VirtualClock(start=0.0):
        rig = Rig(retry_after=extractor)
        assert rig.feedback.hint(Flaky()) == 12.0
        assert rig.feedback.hint(RuntimeError()) == NOT_A_HINT
        with caplog.at_level(logging.DEBUG, "headrace.throttle"):
            assert rig.feedback.hint(KeyError()) == NOT_A_HINT
            assert rig.feedback.hint(KeyError()) == NOT_A_HINT
        levels = [r.levelno for r in caplog.records if "extractor raised" in r.getMessage()]
        assert levels == [logging.WARNING, logging.DEBUG]
        rig.feedback.failure(KeyError(), rig.slot())  # not a hint: an ordinary failure
        assert rig.admission.paused_until(0.0) is None


# -- manual changes and the quiet flag ---------------------------------------------------------


async def test_set_concurrency_is_bounded_and_keeps_the_epoch() -> None:
    with VirtualClock(start=0.0):
        rig = Rig(low=2, high=8)
        with pytest.raises(ConfigurationError, match="n"):
            rig.feedback.set_concurrency(1)
        with pytest.raises(ConfigurationError, match="n"):
            rig.feedback.set_concurrency(9)
        rig.feedback.set_concurrency(3)
        assert rig.admission.limit == 3
        assert rig.admission.epoch == 0
        assert rig.feedback.limit.on_sample(0.0, 0, False) == 3  # the limit itself moved
        assert rig.events[-1].data["reason"] == "manual"
        rig.feedback.set_concurrency(3)  # no change: no event
        assert len(rig.events) == 1


async def test_quiet_means_a_success_needs_nothing_but_counting() -> None:
    with VirtualClock(start=0.0):
        at_ceiling = Rig()
        assert at_ceiling.feedback.quiet
        assert not Rig(accounting=True).feedback.quiet  # budgets or progress need it
        assert not Rig(limit=Gradient()).feedback.quiet  # a latency limit learns from it
        rig = Rig(limit=AIMD(failure_threshold=1))
        rig.feedback.failure(Flaky(), rig.slot())
        assert not rig.feedback.quiet  # below the ceiling: a success may raise it
        rig.feedback.set_concurrency(8)
        assert rig.feedback.quiet


# -- reading Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (2, 2.0),
        (1.5, 1.5),
        (math.inf, None),  # a pause for ever is no hint
        (10**400, None),
        (1e300, 1e300),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        (-1, None),
        (math.nan, None),
        (True, None),
        ("soon", None),
        ("-3", None),
        ("inf", None),
        (b"12", None),
        (None, None),
    ],
)
def test_retry_after_seconds(
    monkeypatch: pytest.MonkeyPatch, value: object, seconds: float | None
) -> None:
    monkeypatch.setattr(
        feedback_module, "_wall_now", lambda: datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    )
    assert retry_after_seconds(value) == seconds
