"""How a finished call moves the throttle: counters, budgets, limit, hints, progress, drain."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from headrace_core import CircuitOpenError, CircuitState
from headrace_core.lowlevel import within
from headrace_core.stats import Listeners
from headrace_guards import CircuitBreaker, GuardEvent
from headrace_throttle._engine import _Engine
from headrace_throttle._errors import ServerBusy
from headrace_throttle._hints import retry_after_seconds
from headrace_throttle._shared import SharedBudgets
from headrace_throttle._types import Slot, ThrottleSnapshot, ThrottleState

__all__: list[str] = []

_log = logging.getLogger("headrace.throttle")
NOT_A_HINT = -1.0


class _Outcomes(_Engine):
    """The completion half of a throttle (the public class is ``Throttle``)."""

    __slots__ = (
        "_bad_hints",
        "_breaker",
        "_closed",
        "_drain_waiters",
        "_drained",
        "_is_failure",
        "_milestone",
        "_on_progress",
        "_progress",
        "_progress_step",
        "_retry_after",
        "_runner",
        "_shared",
        "_total",
    )

    _bad_hints: int
    _shared: SharedBudgets | None

    _breaker: CircuitBreaker | None
    _closed: bool
    _drain_waiters: list[asyncio.Future[None]]
    _drained: bool
    _is_failure: Callable[[BaseException], bool]
    _milestone: int
    _on_progress: Listeners[ThrottleSnapshot]
    _progress: bool
    _progress_step: float
    _retry_after: Callable[[BaseException], float | str | None] | None
    _runner: Any
    _total: int | None

    def snapshot(self) -> ThrottleSnapshot:
        """Return a frozen view of the throttle's state, counters and progress (no await).

        Returns:
            A :class:`ThrottleSnapshot`.
        """
        now = self._now()
        paused = self._paused_until if not within(self._paused_until, now) else None
        if self._closed:
            state = ThrottleState.DRAINING if self._in_flight else ThrottleState.CLOSED
        elif self._breaker is not None and self._breaker.state is CircuitState.OPEN:
            state = ThrottleState.CIRCUIT_OPEN
        elif paused is not None:
            state = ThrottleState.PAUSED
        elif self._limit < self._max:
            state = ThrottleState.COOLING
        else:
            state = ThrottleState.RUNNING
        budget = self._token_budget
        used = budget.used(now) if budget is not None else None
        remaining = budget.remaining(now) if budget is not None else None
        finished = self._completed + self._failed
        first = self._first_admit
        rate = finished / (now - first) if first is not None and now > first else 0.0
        total = self._total
        if total is None:
            percentage = eta = None
        else:
            percentage = min(100.0, 100.0 * finished / total) if total else 100.0
            eta = 0.0 if finished >= total else (total - finished) / rate if rate > 0 else None
        return ThrottleSnapshot(
            concurrency=self._limit,
            max_concurrency=self._max,
            in_flight=self._in_flight,
            waiting=self._waiting + (self._shared.waiting if self._shared is not None else 0),
            dispatch_interval=self._interval,
            state=state,
            tokens_used=used,
            tokens_remaining=remaining,
            completed=self._completed,
            failed=self._failed,
            total=total,
            percentage=percentage,
            rate=rate,
            eta_seconds=eta,
            paused_until=paused,
            epoch=self._epoch,
            name=self.name,
        )

    # -- finishing ----------------------------------------------------------------------
    def _finish_ok(self, slot: Slot) -> None:
        self._in_flight -= 1
        self._completed += 1
        self._finish_rest(slot)

    def _finish_rest(self, slot: Slot) -> None:
        # User code runs here (the limit, listeners, on_progress): whatever it raises, the
        # freed slot still goes to the next waiter.
        try:
            charges = slot._charges
            recorded = slot._recorded
            if charges is not None and recorded is not None:
                # Reconcile (inlined): the recorded total replaces each token estimate.
                budgets = self._budgets
                for i in self._token_index:
                    entry = charges[i]
                    budget = budgets[i]
                    if entry[2]:
                        delta = recorded - entry[1]
                        if delta:
                            entry[1] = recorded
                            budget._used += delta
                            budget._cache = None
            if self._sample_ok:
                self._sample(slot, dropped=False)
            if self._progress:
                self._tick()
        finally:
            if self._queue:
                self._hand_off()
            elif self._closed and not self._in_flight:
                self._set_drained()

    def _finish_error(self, slot: Slot, exc: BaseException, hinted: bool = False) -> None:
        """Account a call that raised ``exc``; ``hinted``: its server hint is already applied."""
        self._in_flight -= 1
        try:
            if not isinstance(exc, Exception) and not _callee_cancel(exc):
                # A cancel (or an interpreter exit) is the caller's, never the service's
                # fault. (A CancelledError the callee raised by itself, while its task was
                # not being cancelled, is the callee's failure: counted below.)
                if slot._charges is not None and slot._recorded is not None:
                    self._reconcile(slot, cancelled=True)
                return
            self._failed += 1
            if slot._charges is not None and slot._recorded is not None:
                self._reconcile(slot, cancelled=False)
            hint = self._hint(exc)
            if hint != NOT_A_HINT:
                if not hinted:
                    self._apply_hint(hint, slot._epoch, exc)
            elif (
                slot._epoch == self._epoch
                and not isinstance(exc, CircuitOpenError)
                and self._counts(exc)
            ):
                self._sample(slot, dropped=True)
            if self._progress:
                self._tick()
        finally:
            self._released()

    def _counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` is congestion, by ``is_failure`` (a failing predicate says yes)."""
        try:
            return bool(self._is_failure(exc))
        except (Exception, asyncio.CancelledError):
            _log.exception("is_failure predicate of %r failed; counting a failure", self)
            return True

    def _counts_quietly(self, exc: BaseException) -> bool:
        """:meth:`_counts` for the composed breaker (the throttle logs a failing predicate)."""
        try:
            return bool(self._is_failure(exc))
        except (Exception, asyncio.CancelledError):
            return True

    def _released(self) -> None:
        if self._queue:
            self._hand_off()
        elif self._closed and not self._in_flight:
            self._set_drained()

    def _reconcile(self, slot: Slot, *, cancelled: bool) -> None:
        recorded = slot._recorded or 0
        amount = max(recorded, slot.tokens) if cancelled else recorded
        loop = self._loop
        now = loop.time() if loop is not None else self._now()
        charges = slot._charges
        assert charges is not None
        budgets = self._budgets
        for i in self._token_index:
            budgets[i]._adjust(charges[i], amount, now)

    # -- hints -------------------------------------------------------------------------
    def _hint(self, exc: BaseException) -> float:
        """The pause a server asked for: seconds, ``nan`` (busy, no time) or not a hint.

        Never raises for a bad hint: an extractor that fails, or returns something that is
        neither seconds, a numeric string nor an HTTP date, is ignored with a warning (a
        ``KeyboardInterrupt`` or ``SystemExit`` it raises does propagate).
        """
        if isinstance(exc, ServerBusy):
            try:
                after: object = exc.retry_after  # a subclass may compute it
            except (Exception, asyncio.CancelledError) as error:
                self._bad_hint(
                    f"reading ServerBusy.retry_after raised {type(error).__name__}", error
                )
                return math.nan
            if after is None:
                return math.nan
            seconds = retry_after_seconds(after)
            if seconds is None:
                self._bad_hint(f"ServerBusy.retry_after is {_describe(after)}", None)
                return math.nan
            return seconds
        extractor = self._retry_after
        if extractor is None:
            return NOT_A_HINT
        try:
            value: object = extractor(exc)
        except (Exception, asyncio.CancelledError) as error:
            self._bad_hint(f"the retry_after extractor raised {type(error).__name__}", error)
            return NOT_A_HINT
        if value is None:
            return NOT_A_HINT
        seconds = retry_after_seconds(value)
        if seconds is None:
            self._bad_hint(
                f"the retry_after extractor returned {_describe(value)}, "
                "not seconds or an HTTP date",
                None,
            )
            return NOT_A_HINT
        return seconds

    def _bad_hint(self, what: str, error: BaseException | None) -> None:
        # One warning per throttle; later ones are logged at DEBUG.
        self._bad_hints += 1
        level = logging.WARNING if self._bad_hints == 1 else logging.DEBUG
        if _log.isEnabledFor(level):
            _log.log(
                level,
                "%s (throttle %r); the hint is ignored",
                what,
                self,
                exc_info=error,
                extra={"throttle": self.name},
            )

    def _apply_hint(self, seconds: float, epoch: int, exc: BaseException) -> None:
        reason = type(exc).__name__
        if not math.isnan(seconds) and seconds > 0:
            self._pause(seconds, reason)
        if epoch == self._epoch:
            self._congestion("server_busy")

    # -- progress ----------------------------------------------------------------------
    def _tick(self) -> None:
        total = self._total
        assert total is not None
        finished = self._completed + self._failed
        step = self._progress_step
        crossed = math.floor(100.0 * finished / total / step + 1e-9) if total else 0
        if crossed > self._milestone:
            self._milestone = crossed
            self._on_progress.emit(self.snapshot())

    def _set_drained(self) -> None:
        if self._drained:
            return
        self._drained = True
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self._emit("drained", {})

    def _forward_retry(self, event: GuardEvent) -> None:
        if event.kind == "retry":
            self._emit(
                "retry",
                {"attempt": event.attempt, "delay": event.delay, "error": event.error},
                event.at,
            )

    def _forget_loop(self) -> None:
        self._drain_waiters.clear()
        if self._shared is not None:
            self._shared.forget()

    def _has_progress(self) -> bool:
        return getattr(self, "_progress", False)


def _callee_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a CancelledError raised by the callee while nobody cancelled the task."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0


def _describe(value: object) -> str:
    """A short, safe description of a user's value (its ``repr`` may raise)."""
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"
