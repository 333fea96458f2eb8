"""Feedback: how outcomes and server hints change the concurrency limit and the pacing.

A finished call is one sample for the limit algorithm (AIMD by default); a failure
counts only if the call was admitted in the current epoch (the admission-epoch rule), so
one burst of failures lowers the limit once. A decrease starts a new epoch and doubles
the pacing interval; an increase halves it back toward its minimum.

A server hint (a :class:`ServerBusy`, or what a ``retry_after=`` extractor finds in an
error) pauses new dispatch and makes one immediate decrease. A hint is accepted as
seconds (an int or a float, ``>= 0``; ``inf`` pauses until a longer hint or ``close()``),
as a numeric string (``"120"``, ``"1.5"``) or as an HTTP date (``"Wed, 21 Oct 2015
07:28:00 GMT"``, the other legal form of ``Retry-After``). An HTTP date is absolute, so
it is turned into a wait from the wall clock's now: the one place the throttle reads the
wall clock. Anything else is not a hint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import final

from headrace_core import CircuitOpenError
from headrace_core.lowlevel import check_int, safe_repr
from headrace_throttle._admission import Admission
from headrace_throttle._errors import ServerBusy
from headrace_throttle._limit import AIMD, Limit, set_limit
from headrace_throttle._types import Events, Slot, event_logger

__all__ = ["NOT_A_HINT", "Feedback", "retry_after_seconds"]

_log = logging.getLogger("headrace.throttle")

#: What :meth:`Feedback.hint` returns for an error that carries no hint.
NOT_A_HINT = -1.0


@final
class Feedback:
    """Turns a throttle's outcomes and server hints into changes of its limit and pacing.

    Args:
        admission: the admission whose limit, interval and pauses change.
        events: where ``decreased`` and ``increased`` are told.
        limit: the limit algorithm (already bound to the bounds).
        low: ``min_concurrency``.
        high: ``max_concurrency``.
        min_interval: the pacing interval an increase recovers to.
        max_interval: the cap of the interval a decrease doubles.
        is_failure: which errors are congestion (a user's predicate).
        retry_after: a user's extractor of a server's hint from an error, or None.
        accounting: successes need accounting whatever the limit does (the throttle
            reports progress).
    """

    __slots__ = (
        "_accounting",
        "_admission",
        "_aimd",
        "_bad_hints",
        "_events",
        "_high",
        "_is_failure",
        "_low",
        "_max_interval",
        "_min_interval",
        "_retry_after",
        "cooling",
        "limit",
        "quiet",
        "sample_ok",
        "shared",
    )

    def __init__(
        self,
        admission: Admission,
        events: Events,
        *,
        limit: Limit,
        low: int,
        high: int,
        min_interval: float,
        max_interval: float,
        is_failure: Callable[[BaseException], bool],
        retry_after: Callable[[BaseException], float | str | None] | None,
        accounting: bool,
    ) -> None:
        self._admission = admission
        self._accounting = accounting
        self._events = events
        #: The limit algorithm.
        self.limit = limit
        self._aimd = limit if isinstance(limit, AIMD) else None
        self._low = low
        self._high = high
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._is_failure = is_failure
        self._retry_after = retry_after
        self._bad_hints = 0
        #: Whether a congestion event left the limit at ``max_concurrency`` (the floor is
        #: also the ceiling): the throttle is COOLING until a success after
        #: ``cooling_period``, as gentlify's is (AIMD only).
        self.cooling = False
        #: Whether a success must reach the limit (it may grow, or it learns latency).
        self.sample_ok = True
        #: Whether a success needs nothing but counting: the limit has nothing to learn
        #: from it and there is no other ``accounting`` (the throttle's quick way out).
        self.quiet = False
        #: Whether the limit is shared through a store: the store adapts it, this process
        #: follows (:meth:`follow_shared`) and samples nothing itself.
        self.shared = False
        self._refresh()

    def _refresh(self) -> None:
        admission = self._admission
        self.sample_ok = not self.shared and (
            self._aimd is None
            or admission.limit < self._high
            or admission.interval > self._min_interval
            or self.cooling
        )
        self.quiet = not (self.sample_ok or self._accounting)

    def share(self) -> None:
        """Leave the limit to a store from now on (see :meth:`follow_shared`)."""
        self.shared = True
        self._refresh()

    # -- outcomes ----------------------------------------------------------------------
    def success(self, slot: Slot | None, rtt: float | None = None) -> None:
        """A call (``slot``, or one made outside the throttle: None) returned.

        ``rtt``: the call's duration when the caller knows it (a call made outside the
        throttle); a latency-based limit takes it as the sample.
        """
        if self.sample_ok:
            self._sample(slot, dropped=False, rtt=rtt)

    def failure(
        self, exc: BaseException, slot: Slot | None = None, *, hinted: bool = False
    ) -> bool:
        """A call (``slot``, or one made outside the throttle: None) raised ``exc``.

        A hint pauses and decreases (unless ``hinted``: already applied while the call
        ran); an error that ``is_failure`` counts, of a call admitted in the current
        epoch, is a congestion sample. A ``CircuitOpenError`` is neither.

        Returns:
            Whether ``exc`` is congestion (a hint, or an error ``is_failure`` counts).
        """
        admission = self._admission
        epoch = admission.epoch if slot is None else slot._epoch
        hint = self.hint(exc)
        if hint != NOT_A_HINT:
            if not hinted:
                self.apply_hint(hint, epoch, exc)
            return True
        if isinstance(exc, CircuitOpenError) or not self.counts(exc):
            return False
        if epoch == admission.epoch and not self.shared:
            self._sample(slot, dropped=True)
        return True

    def counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` is congestion, by ``is_failure`` (a failing predicate says yes)."""
        try:
            return bool(self._is_failure(exc))
        except (Exception, asyncio.CancelledError):
            _log.exception(
                "is_failure predicate of %s failed; counting a failure", self._events.owner
            )
            return True

    def counts_quietly(self, exc: BaseException) -> bool:
        """:meth:`counts` for the composed breaker (the throttle logs a failing predicate)."""
        try:
            return bool(self._is_failure(exc))
        except (Exception, asyncio.CancelledError):
            return True

    # -- hints -------------------------------------------------------------------------
    def hint(self, exc: BaseException) -> float:
        """The pause a server asked for: seconds, ``nan`` (busy, no time) or :data:`NOT_A_HINT`.

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

    def apply_hint(self, seconds: float, epoch: int, exc: BaseException) -> None:
        """Pause for ``seconds`` (if a time was given) and decrease once (epoch rule)."""
        if not math.isnan(seconds) and seconds > 0:
            self._admission.pause(seconds, type(exc).__name__)
        if epoch == self._admission.epoch and not self.shared:
            self._congestion("server_busy")

    def _bad_hint(self, what: str, error: BaseException | None) -> None:
        # One warning per throttle; later ones are logged at DEBUG.
        self._bad_hints += 1
        level = logging.WARNING if self._bad_hints == 1 else logging.DEBUG
        if _log.isEnabledFor(level):
            _log.log(
                level,
                "%s (%s); the hint is ignored",
                what,
                self._events.owner,
                exc_info=error,
                extra={"throttle": self._events.name},
            )

    # -- changes -----------------------------------------------------------------------
    def set_concurrency(self, n: int, *, reason: str = "manual") -> None:
        """Set the limit to ``n`` by hand (no new epoch; the interval stays).

        Raises:
            ConfigurationError: when ``n`` is outside ``[min_concurrency, max_concurrency]``.
        """
        check_int("n", n, ge=self._low, le=self._high)
        admission = self._admission
        old = admission.limit
        set_limit(self.limit, n)
        if self._aimd is not None:
            self._aimd.last_change = admission.now()
        if self.cooling:
            self.cooling = False  # set by hand: the limit is no longer cooling
            self._refresh()
        if n == old:
            return
        interval = admission.interval
        admission.retune(n, interval, congestion=False)
        self._refresh()
        if event_logger.isEnabledFor(logging.INFO):
            self._log_change(old, n, interval, interval, reason, logging.INFO)
        self._events.emit(
            "decreased" if n < old else "increased",
            {
                "concurrency": (old, n),
                "dispatch_interval": (interval, interval),
                "interval": (interval, interval),
                "reason": reason,
                "epoch": admission.epoch,
            },
            admission.now(),
        )

    def follow_shared(self, n: int) -> None:
        """Take the shared limit ``n`` as this process's (an event with reason ``shared``)."""
        self.set_concurrency(min(self._high, max(self._low, n)), reason="shared")

    def _sample(self, slot: Slot | None, dropped: bool, rtt: float | None = None) -> None:
        admission = self._admission
        now = admission.now()
        aimd = self._aimd
        if rtt is None:
            # AIMD ignores latency, so the fast path does not stamp its start time.
            rtt = now - slot._start if slot is not None and aimd is None else 0.0
        old = admission.limit
        decreases = 0
        if aimd is not None:
            decreases = aimd.decreases
            if aimd.last_change is None:
                # Cooling counts from the first admission.
                aimd.last_change = admission.first_admit
            if self.cooling and not dropped and aimd.cooled(now):
                # A success after cooling_period: the congestion event is over.
                self.cooling = False
                self._refresh()
        # In flight while the call ran: the others plus itself (its slot is released).
        in_flight = admission.in_flight + (1 if slot is not None else 0)
        limit = self.limit
        try:
            value = limit.on_sample(rtt, in_flight, dropped)
        except (Exception, asyncio.CancelledError):
            # A failing custom limit must not stall the queue: keep the current limit.
            _log.exception(
                "limit %s of %s failed; the limit is unchanged",
                type(limit).__name__,
                self._events.owner,
            )
            return
        if type(value) is int:
            new = value
        else:
            converted = _limit_value(value)
            if converted is None:
                _log.warning(
                    "limit %s of %s returned %s, not a number; the limit is unchanged",
                    type(limit).__name__,
                    self._events.owner,
                    type(value).__name__,
                )
                return
            new = converted
        if new < self._low:
            new = self._low
        elif new > self._high:
            new = self._high
        if aimd is not None:
            if aimd.decreases != decreases:
                self._decrease(old, new, reason="failures", now=now)
            elif new > old:
                self._change(old, new, decrease=False, reason="recovered", now=now)
            elif not dropped and admission.interval > self._min_interval and aimd.cooled(now):
                # At the ceiling but still paced slower than asked: keep recovering.
                aimd.last_change = now
                self._change(old, new, decrease=False, reason="recovered", now=now)
        elif new < old:
            self._change(old, new, decrease=True, reason="latency", now=now)
        elif new > old:
            self._change(old, new, decrease=False, reason="latency", now=now)

    def _congestion(self, reason: str) -> None:
        """One multiplicative decrease now (a server hint), whatever the failure count."""
        admission = self._admission
        now = admission.now()
        old = admission.limit
        if self._aimd is not None:
            new = self._aimd.decrease(now)
        else:
            new = max(self._low, math.floor(old * 0.5))
            set_limit(self.limit, new)
        self._decrease(old, max(self._low, new), reason=reason, now=now)

    def _decrease(self, old: int, new: int, *, reason: str, now: float) -> None:
        """A congestion event: lower the limit and slow the pacing, in a new epoch.

        When neither can move (the limit at its floor, the pacing off or at its maximum)
        nothing changes: no ``decreased`` event and no new epoch. A limit left at
        ``max_concurrency`` (the floor is the ceiling) is COOLING until a success after
        ``cooling_period``, as gentlify's is.
        """
        if self._aimd is not None and new >= self._high and not self.cooling:
            self.cooling = True
            self._refresh()
        interval = self._admission.interval
        if new == old and (interval <= 0.0 or interval >= self._max_interval):
            return
        self._change(old, new, decrease=True, reason=reason, now=now)

    def _change(self, old: int, new: int, *, decrease: bool, reason: str, now: float) -> None:
        admission = self._admission
        old_interval = interval = admission.interval
        if decrease:
            if old_interval > 0.0:
                interval = min(self._max_interval, old_interval * 2.0)
        elif old_interval > self._min_interval:
            interval = max(self._min_interval, old_interval / 2.0)
        admission.retune(new, interval, congestion=decrease)
        self._refresh()
        # A decrease, and the recovery to max_concurrency, at INFO; a step up at DEBUG.
        level = logging.INFO if decrease or new >= self._high else logging.DEBUG
        if event_logger.isEnabledFor(level):
            self._log_change(old, new, old_interval, interval, reason, level)
        self._events.emit(
            "decreased" if decrease else "increased",
            {
                "concurrency": (old, new),
                "dispatch_interval": (old_interval, interval),
                "interval": (old_interval, interval),
                "reason": reason,
                "epoch": admission.epoch,
            },
            now,
        )

    def _log_change(
        self, old: int, new: int, old_interval: float, interval: float, reason: str, level: int
    ) -> None:
        if new < old or (new == old and interval > old_interval):
            event, what = "decreased", "concurrency decreased"
        elif new >= self._high:
            event, what = "recovered", "concurrency recovered"
        else:
            event, what = "increased", "concurrency increased"
        self._events.log(
            level,
            event,
            "%s %d -> %d, dispatch interval %.3fs -> %.3fs (reason: %s)",
            what,
            old,
            new,
            old_interval,
            interval,
            reason,
            concurrency=new,
            old_concurrency=old,
            interval=interval,
            reason=reason,
        )


def _limit_value(value: object) -> int | None:
    """A limit's answer as an int (floored; infinities clamp later), or None if not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return int(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return 1 << 62 if value > 0 else -(1 << 62)
    return math.floor(value)


def _describe(value: object) -> str:
    """A short, safe description of a user's value (its ``repr`` may raise)."""
    return f"{type(value).__name__} {safe_repr(value, 80)}"


# -- reading a hint ---------------------------------------------------------------------
def _wall_now() -> datetime:
    """The wall clock's now, in UTC (a function, so tests can pin it)."""
    return datetime.now(UTC)


def retry_after_seconds(value: object) -> float | None:
    """Return the wait ``value`` asks for, in seconds from now, or None when it is not a hint.

    Args:
        value: seconds (``int``/``float``), a numeric string, or an HTTP date string.

    Returns:
        The seconds to wait (``>= 0``; a date in the past is 0.0), or None for a value
        that is not a usable hint (NaN, infinite, negative, another type, a string that is
        neither a number nor a date).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            seconds = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if not math.isfinite(seconds) or seconds < 0.0:  # inf would pause for ever
            return None
        return seconds
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0.0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no offset given
        when = when.replace(tzinfo=UTC)
    try:
        seconds = (when - _wall_now()).total_seconds()
    except (OverflowError, ValueError):
        return None
    return max(0.0, seconds)
