"""The state behind a circuit breaker: its interface, and the in-process state machine.

A :class:`~headrace_guards.CircuitBreaker` owns one :class:`BreakerState`: a
:class:`MemoryState` by default, or a ``StoreState`` (``_circuit_store.py``) when its
state is shared through a ``BreakerStore``. The backend gets what it needs at
construction (:class:`Settings`) and is the only code that changes its state.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, final

from headrace_core import CircuitOpenError, CircuitState
from headrace_core.backoff import Backoff, next_delay
from headrace_core.lowlevel import Clock, within
from headrace_core.stats import Listeners
from headrace_guards._common import (
    GuardEvent,
    NotAsyncError,
    delays_of,
    event_logger,
    events,
    now_of,
    raise_if_not_async,
)
from headrace_guards._policies import Consecutive, Policy, make_window

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

# Outcomes of one call.
NEUTRAL = 0
SUCCESS = 1
FAILURE = 2

#: Successes the fast path counts alone between two folds (see :class:`MemoryState`): at
#: most this many, so ``budget`` stays a small int the hot path never allocates.
FAST_BATCH = 128
#: Tickets of one generation (``MemoryState.tickets``): more than any process takes.
_TICKETS = sys.maxsize


@final
@dataclass(frozen=True, slots=True)
class Settings:
    """A breaker's validated arguments, and where its state reports.

    The arguments are as :class:`~headrace_guards.CircuitBreaker` takes them, with
    ``record`` and ``ignore`` compiled; ``source``, ``listeners`` and ``clock`` are the
    breaker's (its events' source, its listeners, its clock).
    """

    name: str | None
    source: str
    listeners: Listeners[GuardEvent]
    clock: Clock | None
    policy: Policy
    recovery_timeout: float
    half_open_max_calls: int
    half_open_timeout: float | None
    slow_call_duration: float | None
    slow_call_rate: float
    open_backoff: Backoff | None
    record: Callable[[BaseException], bool]
    ignore: Callable[[BaseException], bool]
    failure_on_result: Callable[[Any], bool] | None


class BreakerState(Protocol):
    """What a breaker asks of its state, wherever that state lives.

    The breaker reads the attributes (``state``, ``generation``, ``snapshot()``) and calls
    the methods; only the backend changes them. Admission is ``(generation, state,
    permit)``: ``permit`` says whether the call holds a half-open permit of this process.
    """

    #: The state as last decided (:meth:`refresh` makes the lazy transitions).
    state: CircuitState
    #: Incremented by every transition.
    gen: int
    failures: int
    ignored: int
    slow: int
    rejected: int
    forced: bool
    disabled: bool
    last_reason: str | None
    #: When OPEN ends, on the breaker's clock (``inf`` while forced open).
    open_until: float
    #: Half-open probes this process runs now (meaningful while HALF_OPEN).
    half_open_in_flight: int

    @property
    def successes(self) -> int:
        """Calls that counted as successes."""
        ...

    def refresh(self, now: float) -> CircuitState:
        """Make the lazy transition due at ``now``, if any; return the state."""
        ...

    def figures(self, now: float | None) -> tuple[int, int, float, float]:
        """Return ``(window_calls, failure_count, failure_rate, slow_rate)``."""
        ...

    async def call(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Admit one call, run ``fn(*args, **kwargs)`` and record how it ended."""
        ...

    async def enter(self, start: float) -> tuple[int, CircuitState, bool]:
        """Admit the body of an ``async with`` that starts at ``start``."""
        ...

    async def exit(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        exc: BaseException | None,
    ) -> None:
        """Record how a body admitted by :meth:`enter` ended (``exc`` None: it returned)."""
        ...

    async def reset(self) -> None:
        """Close, clear the counters and windows, and clear forced-open."""
        ...

    async def force_open(self) -> None:
        """Hold OPEN until :meth:`reset`."""
        ...

    def disable(self) -> None:
        """Admit every call and never transition; counters are kept."""
        ...

    def enable(self) -> None:
        """Undo :meth:`disable`."""
        ...


def now_or_none(clock: Clock | None) -> float | None:
    """Read ``clock``; None outside a running loop (when the default clock has no loop)."""
    try:
        return now_of(clock)
    except RuntimeError:
        return None


def manual_now(clock: Clock | None) -> float:
    """The time of a manual transition (``reset()`` and the like): 0.0 outside a loop."""
    now = now_or_none(clock)
    return 0.0 if now is None else now


_CHANGES: dict[CircuitState, str] = {
    CircuitState.OPEN: "opened",
    CircuitState.HALF_OPEN: "half-open",
    CircuitState.CLOSED: "closed",
}


def rejection(
    settings: Settings, now: float, retry_after: float, state: CircuitState
) -> CircuitOpenError:
    """Return the error of one rejected call, after emitting its ``rejected`` event."""
    error = CircuitOpenError(retry_after=retry_after, name=settings.name, state=state)
    if event_logger.isEnabledFor(logging.DEBUG):
        events.debug(
            "call rejected (%s, retry after %.3fs)",
            state.value,
            retry_after,
            kind="CircuitBreaker",
            component=settings.name,
            event="rejected",
            state=state.value,
            retry_after=retry_after,
        )
    listeners = settings.listeners
    if listeners:
        listeners.emit(
            GuardEvent(
                source=settings.source,
                kind="rejected",
                at=now,
                old_state=state,
                new_state=state,
                error=error,
            )
        )
    return error


def emit_change(
    settings: Settings, now: float, old: CircuitState, new: CircuitState, reason: str
) -> None:
    """Emit the ``state_change`` event of one transition (when it changed the state)."""
    if old is not new and event_logger.isEnabledFor(logging.INFO):
        events.log(
            logging.WARNING if new is CircuitState.OPEN else logging.INFO,
            "%s (was %s, reason: %s)",
            _CHANGES[new],
            old.value,
            reason,
            kind="CircuitBreaker",
            component=settings.name,
            event=_CHANGES[new],
            state=new.value,
            old_state=old.value,
            reason=reason,
        )
    listeners = settings.listeners
    if old is not new and listeners:
        listeners.emit(
            GuardEvent(
                source=settings.source,
                kind="state_change",
                at=now,
                old_state=old,
                new_state=new,
                reason=reason,
            )
        )


@final
class MemoryState:
    """A breaker's state machine in this process (the default: no ``store=``).

    Everything is synchronous: admission is atomic with the state check, and each
    transition is complete before its event is emitted. Every call that is not on the
    closed-state fast path goes through :meth:`call`, or :meth:`admit` and :meth:`leave`
    (``async with``).

    The closed-state fast path (``CircuitBreaker.call``, the breaker's decorator and a
    pipeline inline it while ``fast`` is true) is, for a call of ``fn``::

        gen = next(state.tickets)
        try:
            result = await fn(...)
        except BaseException as exc:
            state.fast_error(fn, gen, exc)
            raise
        state.budget -= 1
        if not state.budget:
            state.fast_success(gen)

    A fast call takes a ticket: ``tickets`` yields the current generation (a new iterator
    at each transition), and counts the tickets taken in C, so entering costs no int
    arithmetic. ``budget`` counts the successes down from ``_base``; :meth:`fast_success`,
    the slow exit taken when it reaches 0, folds them into ``successes``, so it stays a
    small int and a success allocates nothing. :meth:`fast_in_flight` is the tickets taken
    less the calls that left. ``budget`` is 1 whenever a success has more to do than be
    counted (a streak to end, a closed breaker to tell), so that the next success takes
    the slow exit. The result-predicate variant (``checked``) and the slow exits share
    :meth:`closed_raised`, :meth:`closed_result`, :meth:`closed_error` and
    :meth:`closed_failure`.
    """

    __slots__ = (
        "_base",
        "_clock",
        "_fast_ok",
        "_ho_max",
        "_ho_since",
        "_ho_timeout",
        "_ignore",
        "_issued",
        "_left",
        "_on_exit",
        "_open_backoff",
        "_open_delays",
        "_record",
        "_recovery",
        "_result_check",
        "_settings",
        "_slow_after",
        "_slow_rate",
        "_successes",
        "_threshold",
        "_window",
        "budget",
        "checked",
        "disabled",
        "failures",
        "fast",
        "forced",
        "gen",
        "half_open_in_flight",
        "half_open_ok",
        "ignored",
        "last_reason",
        "open_until",
        "rejected",
        "slow",
        "state",
        "streak",
        "tickets",
    )

    def __init__(self, settings: Settings) -> None:
        policy = settings.policy
        self._settings = settings
        self._clock = settings.clock
        self._threshold = policy.threshold if isinstance(policy, Consecutive) else 0
        self._window = make_window(policy)
        self._recovery = settings.recovery_timeout
        self._ho_max = settings.half_open_max_calls
        self._ho_timeout = settings.half_open_timeout
        self._slow_after = settings.slow_call_duration
        self._slow_rate = settings.slow_call_rate
        self._open_backoff = settings.open_backoff
        self._open_delays: Iterator[float] | None = None
        self._record = settings.record
        self._ignore = settings.ignore
        self._result_check = settings.failure_on_result
        # The fast path needs a consecutive policy and no slow-call timing (and an open
        # breaker: close_fast_path() turns it off for good).
        self._fast_ok = self._window is None and self._slow_after is None
        #: Whether the breaker's fast path applies now (CLOSED, not disabled, and no
        #: ``failure_on_result``).
        self.fast = False
        #: Whether the same path with a ``failure_on_result`` predicate applies now.
        self.checked = False
        #: Fast successes left before the slow exit (counted down from ``_base``).
        self.budget = self._base = FAST_BATCH
        # The tickets taken in the generations before, and the fast calls that left (that
        # raised, or whose success was folded).
        self._issued = self._left = 0
        # Called as each fast call in flight when the breaker was closed leaves.
        self._on_exit: Callable[[], object] | None = None
        self.state = CLOSED
        self.gen = 0
        #: A fast call's ticket in: each is the generation it runs in (see the class).
        self.tickets: Iterator[int] = itertools.repeat(0, _TICKETS)
        self.forced = False
        self.disabled = False
        self.open_until = 0.0
        self._ho_since = 0.0
        self.half_open_in_flight = 0
        #: Successful probes of the current half-open period.
        self.half_open_ok = 0
        #: The consecutive failures (and slow calls) of the current generation.
        self.streak = 0
        self._successes = 0
        self.failures = 0
        self.ignored = 0
        self.slow = 0
        self.rejected = 0
        self.last_reason: str | None = None
        self._lanes()

    @property
    def successes(self) -> int:
        """Calls that counted as successes (the fast path's, counted down, included)."""
        return self._successes + self._base - self.budget

    def close_fast_path(self, on_exit: Callable[[], object]) -> int:
        """Turn the fast path off for good (the breaker was closed: calls take the slow path).

        Returns:
            The fast calls still in flight; ``on_exit()`` is called as each of them leaves.
        """
        self._fast_ok = False
        self._on_exit = on_exit
        self._lanes()
        self._arm()  # every fast success now takes the slow exit
        return self.fast_in_flight()

    def fast_in_flight(self) -> int:
        """The fast calls in flight: the tickets taken, less the calls that left."""
        taken = self._issued + _TICKETS - operator.length_hint(self.tickets)
        return taken - self._left - (self._base - self.budget)

    def _lanes(self) -> None:
        """Set ``fast`` and ``checked`` from the state (after every change to their inputs)."""
        closed = self.state is CLOSED and self._fast_ok and not self.disabled
        self.fast = closed and self._result_check is None
        self.checked = closed and self._result_check is not None

    def _arm(self) -> None:
        """Fold the fast successes counted so far; set how many more the hot path may count.

        One at a time while a success has more to do (a streak to end, ``_on_exit``).
        """
        done = self._base - self.budget
        self._successes += done
        self._left += done
        self.budget = self._base = 1 if self.streak or self._on_exit is not None else FAST_BATCH

    def _set_streak(self, streak: int) -> None:
        was = self.streak
        self.streak = streak
        if (not was) != (not streak):
            self._arm()  # the hot path must (or need no longer) end the streak

    # -- the closed-state fast path's slow exits -----------------------------------------
    def fast_success(self, gen: int) -> None:
        """The success of a fast call of generation ``gen`` that used up ``budget``."""
        if self.streak and gen == self.gen:
            self._set_streak(0)
        self._arm()
        if self._on_exit is not None:
            self._on_exit()

    def fast_error(self, fn: object, gen: int, exc: BaseException) -> None:
        """Settle a fast call of ``fn`` (generation ``gen``) that raised ``exc``.

        The caller raises ``exc`` again; this raises instead when ``fn`` is not async
        (:class:`NotAsyncError`) or a ``record``/``ignore`` predicate raised.
        """
        try:
            self.closed_raised(fn, gen, exc)
        finally:
            self._left += 1
            if self._on_exit is not None:
                self._on_exit()

    def closed_raised(self, fn: object, gen: int, exc: BaseException) -> None:
        """Record a closed-state call of ``fn`` (generation ``gen``) that raised ``exc``.

        A cancel-like exception is neutral; an ``Exception`` goes to :meth:`closed_error`,
        after a misuse check (the caller raises ``exc`` again).
        """
        if isinstance(exc, Exception):
            if isinstance(exc, TypeError):
                raise_if_not_async(fn, exc)
            self.closed_error(gen, exc)

    def closed_result(self, gen: int, result: Any) -> None:
        """Record a closed-state call of generation ``gen`` that returned ``result``.

        ``failure_on_result`` decides; when it raises, the call is a failure and its error
        propagates.
        """
        check = self._result_check
        assert check is not None
        try:
            failed = bool(check(result))
        except BaseException:
            self.closed_failure(gen)
            raise
        if failed:
            self.closed_failure(gen)
            return
        self._successes += 1
        if self.streak and gen == self.gen:
            self._set_streak(0)

    def closed_error(self, gen: int, exc: Exception) -> None:
        """Record a fast-path call of generation ``gen`` that raised ``exc``."""
        try:
            if self._ignore(exc):
                self.ignored += 1
                return
            failed = self._record(exc)
        except BaseException:
            self.closed_failure(gen, exc)  # a raising predicate: a failure
            raise
        if failed:
            self.closed_failure(gen, exc)
        else:
            self._closed_success(gen)

    def _closed_success(self, gen: int) -> None:
        self._successes += 1
        if self.streak and gen == self.gen:
            self._set_streak(0)

    def closed_failure(self, gen: int, cause: BaseException | None = None) -> None:
        """Record a failed fast-path call of generation ``gen``; open at the threshold."""
        self.failures += 1
        if gen == self.gen:
            self._set_streak(self.streak + 1)
            if self.streak >= self._threshold:
                self._transition(OPEN, "failures", now_of(self._clock), cause=cause)

    # -- the general path ------------------------------------------------------------------
    async def call(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Admit one call, run ``fn(*args, **kwargs)`` and settle its outcome."""
        start = now_of(self._clock)
        gen, state, permit = self.admit(start)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._end_error(gen, state, permit, start, fn, exc)
            raise
        self._end_result(gen, state, permit, start, result)
        return result

    async def enter(self, start: float) -> tuple[int, CircuitState, bool]:
        """Admit the body of an ``async with`` (:meth:`admit`, as a coroutine)."""
        return self.admit(start)

    async def exit(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        exc: BaseException | None,
    ) -> None:
        """Settle the body of an ``async with`` (:meth:`leave`, as a coroutine)."""
        self.leave(gen, state, permit, start, exc)

    def leave(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        exc: BaseException | None,
    ) -> None:
        """Settle the body of an ``async with`` admitted by :meth:`admit`."""
        if exc is not None:
            self._end_error(gen, state, permit, start, None, exc)
            return
        try:  # _end(), inlined: the success of a body is the hot case
            end = now_of(self._clock)
        except BaseException:
            self._settle(gen, state, permit, SUCCESS, start, start)
            raise
        self._settle(gen, state, permit, SUCCESS, start, end)

    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return NEUTRAL
        if self._ignore(exc):
            self.ignored += 1
            return NEUTRAL
        return FAILURE if self._record(exc) else SUCCESS

    def _end_error(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        fn: object,
        exc: BaseException,
    ) -> None:
        """Settle a call that raised ``exc``; every path returns a held permit."""
        try:
            if fn is not None and isinstance(exc, TypeError):
                raise_if_not_async(fn, exc)
            outcome = self._classify(exc)
        except NotAsyncError:
            self._settle(gen, state, permit, NEUTRAL, start, start)
            raise
        except BaseException:
            self._end(gen, state, permit, start, FAILURE, exc)  # a raising predicate
            raise
        self._end(gen, state, permit, start, outcome, exc)

    def _end_result(
        self, gen: int, state: CircuitState, permit: bool, start: float, result: Any
    ) -> None:
        """Settle a call that returned ``result``; every path returns a held permit."""
        check = self._result_check
        try:
            outcome = FAILURE if check is not None and check(result) else SUCCESS
        except BaseException as exc:
            self._end(gen, state, permit, start, FAILURE, exc)  # a raising predicate
            raise
        self._end(gen, state, permit, start, outcome, None)

    def _end(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        outcome: int,
        cause: BaseException | None,
    ) -> None:
        try:
            end = now_of(self._clock)
        except BaseException:
            self._settle(gen, state, permit, outcome, start, start, cause)
            raise
        self._settle(gen, state, permit, outcome, start, end, cause)

    # -- admission and recording -----------------------------------------------------------
    def refresh(self, now: float) -> CircuitState:
        """Make the lazy transition due at ``now`` (OPEN -> HALF_OPEN, or back)."""
        state = self.state
        if state is OPEN:
            if not self.forced and within(self.open_until, now):
                self._transition(HALF_OPEN, "recovery_timeout", now)
        elif state is HALF_OPEN:
            timeout = self._ho_timeout
            if timeout is not None and within(self._ho_since + timeout, now):
                self._transition(OPEN, "half_open_timeout", now)
        return self.state

    def admit(self, now: float) -> tuple[int, CircuitState, bool]:
        """Admit one call at ``now``: ``(generation, state, permit)``.

        Raises:
            CircuitOpenError: when OPEN, or when the half-open probes are taken.
        """
        state = self.refresh(now)
        if self.disabled or state is CLOSED:
            return self.gen, state, False
        if state is OPEN:
            retry_after = math.inf if self.forced else self.open_until - now
            raise self._reject(now, retry_after, OPEN)
        if self.half_open_in_flight + self.half_open_ok < self._ho_max:
            self.half_open_in_flight += 1
            return self.gen, HALF_OPEN, True
        raise self._reject(now, 0.0, HALF_OPEN)

    def _reject(self, now: float, retry_after: float, state: CircuitState) -> CircuitOpenError:
        self.rejected += 1
        return rejection(self._settings, now, retry_after, state)

    def _settle(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        outcome: int,
        start: float,
        end: float,
        cause: BaseException | None = None,
    ) -> None:
        current = gen == self.gen
        if permit and current:
            self.half_open_in_flight -= 1
        if outcome == NEUTRAL:
            return
        failure = outcome == FAILURE
        slow_after = self._slow_after
        slow = slow_after is not None and within(slow_after, end - start)
        if failure:
            self.failures += 1
        else:
            self._successes += 1
        if slow:
            self.slow += 1
        if not current or self.disabled:
            return
        if state is HALF_OPEN:
            if failure:
                self._transition(OPEN, "half_open_failure", end, cause=cause)
            elif slow:
                self._transition(OPEN, "slow", end, cause=cause)
            else:
                self.half_open_ok += 1
                if self.half_open_ok >= self._ho_max:
                    self._transition(CLOSED, "probes_succeeded", end)
            return
        window = self._window
        if window is None:
            if failure or slow:
                self._set_streak(self.streak + 1)
                if self.streak >= self._threshold:
                    self._transition(OPEN, "failures" if failure else "slow", end)
            else:
                self._set_streak(0)
            return
        window.add(failure, slow, end)
        reason = window.verdict(self._slow_rate)
        if reason is not None:
            self._transition(OPEN, reason, end)

    def _open_duration(self, cause: BaseException | None) -> float:
        """The next delay of ``open_backoff``; raises (after a restart) when it fails."""
        backoff = self._open_backoff
        assert backoff is not None
        owner = "CircuitBreaker(open_backoff=...)"
        try:
            if self._open_delays is None:
                self._open_delays = delays_of(backoff.delays(), owner, cause)
            return next_delay(self._open_delays, owner=owner, cause=cause)
        except BaseException:
            self._open_delays = None  # the next re-open starts the schedule again
            raise

    def _transition(
        self,
        new: CircuitState,
        reason: str,
        now: float,
        *,
        forced: bool = False,
        cause: BaseException | None = None,
    ) -> None:
        duration = self._recovery
        failed: BaseException | None = None
        if new is OPEN and self.state is HALF_OPEN and self._open_backoff is not None:
            try:
                duration = self._open_duration(cause)
            except BaseException as exc:  # open for recovery_timeout, then raise it
                failed = exc
        old = self.state
        self.state = new
        self.gen += 1
        # The fast calls from now on take tickets of the new generation.
        self._issued += _TICKETS - operator.length_hint(self.tickets)
        self.tickets = itertools.repeat(self.gen, _TICKETS)
        self.last_reason = reason
        if new is OPEN:
            self.open_until = math.inf if forced else now + duration
            self.forced = forced
        elif new is HALF_OPEN:
            self._ho_since = now
            self.half_open_in_flight = 0
            self.half_open_ok = 0
        else:
            self._set_streak(0)
            if self._window is not None:
                self._window.clear()
            self._open_delays = None
            self.forced = False
        self._lanes()
        emit_change(self._settings, now, old, new, reason)
        if failed is not None:
            raise failed

    # -- reading and manual control ---------------------------------------------------------
    def figures(self, now: float | None) -> tuple[int, int, float, float]:
        """Return ``(window_calls, failure_count, failure_rate, slow_rate)``."""
        window = self._window
        if window is None:
            return 0, self.streak, 0.0, 0.0
        if now is not None:
            window.expire(now)
        failure_rate, slow_rate = window.rates()
        return window.calls, window.failures, failure_rate, slow_rate

    async def reset(self) -> None:
        """Close, clear the counters and the window, and clear forced-open."""
        self.forced = False
        self._arm()  # the fast successes counted so far are folded, then cleared
        self._successes = self.failures = self.ignored = self.slow = self.rejected = 0
        self._transition(CLOSED, "reset", manual_now(self._clock))

    async def force_open(self) -> None:
        """Hold OPEN until :meth:`reset` (rejections carry ``retry_after=inf``)."""
        self._transition(OPEN, "forced", manual_now(self._clock), forced=True)

    def disable(self) -> None:
        """Admit every call and never transition; counters are kept."""
        self.disabled = True
        self._transition(CLOSED, "disabled", manual_now(self._clock))

    def enable(self) -> None:
        """Undo :meth:`disable`."""
        self.disabled = False
        self._lanes()
