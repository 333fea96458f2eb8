"""Admission: one FIFO queue in front of the concurrency limit, pacing, pauses and budgets.

Nothing here awaits except a queued caller. A caller is admitted at once, without a
future or a task, when nobody is queued, ``in_flight < limit`` and (when pacing, a
pause or a budget applies) the gates allow it now. Otherwise it queues; whenever
something changes (a call finishes, a pause ends, a charge expires, the limit grows)
the head of the queue is admitted if everything allows it, and a single loop timer is
armed for the earliest time at which a blocked head could pass. Admission is strict
FIFO: the head blocks everyone behind it, so a large request is never overtaken by
small ones.

Every admission, of a caller or of a queued waiter, is :meth:`Admission._enter`; a
finished call gives its slot back with :meth:`Admission.release`, then
:meth:`Admission.dispatch` hands the freed capacity on. (``Throttle.execute`` inlines
the uncontended branch of both, its one measured fast path.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from typing import final

from headrace_core.lowlevel import LoopBinding, future_maker, within
from headrace_throttle._budget import LocalBudgets
from headrace_throttle._types import Events, Slot, event_logger

__all__ = ["Admission", "Pacing"]

NEVER = -math.inf
_log = logging.getLogger("headrace.throttle")


def _unbound() -> asyncio.Future[None]:
    raise RuntimeError("a throttle call was queued before the throttle was bound to its loop")


def _unbound_refusal() -> BaseException:
    return RuntimeError("the throttle is closed")  # close() sets the real one first


@final
class Pacing:
    """The time gates of a start: the gap since the previous start, and pauses.

    Consecutive starts are at least ``interval`` apart (times a jitter factor drawn
    from ``[1 - jitter, 1]`` per start); no call starts before ``paused_until``.

    Args:
        interval: the minimum gap between two starts (0: no pacing).
        jitter: the jitter fraction, in ``[0, 1]``.
        rng: the random source of the jitter (a user's: it may misbehave).
        owner: who paces, for log messages.
    """

    __slots__ = ("_gap", "_jitter", "_last_start", "_owner", "_rng", "interval", "paused_until")

    def __init__(
        self, interval: float, jitter: float, rng: random.Random | None, owner: str
    ) -> None:
        self.interval = interval
        self.paused_until = NEVER
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._gap = 1.0
        self._last_start = NEVER
        self._owner = owner

    @property
    def idle(self) -> bool:
        """Whether neither a gap nor a pause applies."""
        return self.interval <= 0.0 and self.paused_until == NEVER

    def next_start(self, now: float) -> float:
        """0.0 when the gap since the previous start has passed at ``now``, else when it will.

        Times computed from loop times meet their bounds through ``within``, so a call
        that arrives exactly one interval later passes at every clock magnitude.
        """
        if self.interval <= 0.0:
            return 0.0
        start = self._last_start + self.interval * self._gap
        return 0.0 if within(start, now) else start

    def start(self, now: float) -> None:
        """Note a start at ``now``; the next gap is drawn first (the rng may raise an interrupt)."""
        if self.interval <= 0.0:
            return
        gap = self._draw_gap() if self._jitter else 1.0
        self._last_start = now
        self._gap = gap

    def _draw_gap(self) -> float:
        """A jittered gap factor in ``[1 - jitter, 1]`` from ``rng`` (1.0 if the rng misbehaves)."""
        low = 1.0 - self._jitter
        try:
            gap: object = self._rng.uniform(low, 1.0)
        except (Exception, asyncio.CancelledError):
            _log.warning("rng of %s failed; the dispatch interval is not jittered", self._owner)
            return 1.0
        if isinstance(gap, bool) or not isinstance(gap, int | float) or not low <= gap <= 1.0:
            _log.warning(
                "rng of %s returned %s, not a number in [%g, 1]; the dispatch interval is "
                "not jittered",
                self._owner,
                type(gap).__name__,
                low,
            )
            return 1.0
        return float(gap)


@final
class Admission:
    """Admits calls in strict FIFO order under the concurrency limit, pacing and budgets.

    The public attributes are read by the throttle (its fast path and its snapshot).
    They change here only, through these methods, except in ``Throttle.execute``'s
    inlined fast path, which mirrors :meth:`admit`'s uncontended branch and
    :meth:`release` (``in_flight``, and the first start in :meth:`mark_start`).

    Args:
        limit: the starting concurrency limit.
        timed: whether every call's start time is needed (a latency-based limit).
        pacing: the time gates.
        budgets: the in-memory budgets, or None.
        events: where ``paused``, ``resumed`` and ``drained`` are told.
        owner: who admits, for the error of a second loop.
    """

    __slots__ = (
        "_binding",
        "_budgets",
        "_drain_waiters",
        "_drained",
        "_events",
        "_new_future",
        "_only_budgets",
        "_pacing",
        "_refusal",
        "_resumes",
        "_timed",
        "_timer",
        "_timer_when",
        "closed",
        "epoch",
        "first_admit",
        "in_flight",
        "limit",
        "loop",
        "queue",
        "simple",
        "stamp",
        "waiting",
    )

    def __init__(
        self,
        *,
        limit: int,
        timed: bool,
        pacing: Pacing,
        budgets: LocalBudgets | None,
        events: Events,
        owner: str,
    ) -> None:
        #: The concurrency limit: a call is admitted only while ``in_flight < limit``.
        self.limit = limit
        #: Decreases so far; each admitted call carries the epoch it was admitted in.
        self.epoch = 0
        #: Calls admitted and not yet released.
        self.in_flight = 0
        #: Callers queued (cancelled entries still in :attr:`queue` are not counted).
        self.waiting = 0
        #: The queued callers' slots, head first (each holds its turn, ``slot._turn``).
        self.queue: deque[Slot] = deque()
        #: Whether admission needs no clock: no pacing, no pause, no budget.
        self.simple = True
        #: Whether an admission must note its start time (the first one always does).
        self.stamp = True
        #: Loop time of the first admission, or None.
        self.first_admit: float | None = None
        #: Whether close() was called.
        self.closed = False
        #: The loop of the latest use.
        self.loop: asyncio.AbstractEventLoop | None = None
        # The loop's create_future, without its frame (bind() sets it with the loop).
        self._new_future: Callable[[], asyncio.Future[None]] = _unbound
        # Pauses ended so far (their ``resumed`` listeners ran): admit() and dispatch()
        # look again when one ends under them. ``_refusal``: close()'s error, for a call
        # a listener closed the throttle under.
        self._resumes = 0
        self._refusal: Callable[[], BaseException] = _unbound_refusal
        self._timed = timed
        self._pacing = pacing
        self._budgets = budgets
        self._events = events
        self._binding = LoopBinding(owner)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._drained = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._only_budgets: LocalBudgets | None = None
        self._refresh()

    # -- reading -----------------------------------------------------------------------
    @property
    def interval(self) -> float:
        """The current minimum gap between starts, in seconds."""
        return self._pacing.interval

    def paused_until(self, now: float) -> float | None:
        """The loop time until which dispatch is paused, or None when not paused at ``now``."""
        paused = self._pacing.paused_until
        return None if within(paused, now) else paused

    def now(self) -> float:
        """The time of the loop in use (or the running loop; 0.0 outside one)."""
        loop = self.loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return 0.0
        return loop.time()

    def bind(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Use ``loop``; return True when the state of a previous, dead loop was dropped.

        Raises:
            RuntimeError: when the previous loop still runs in another thread.
        """
        _, rebound = self._binding.check()
        dropped = rebound and self.loop is not None
        if dropped:
            # The previous loop is gone: its waiters and timers went with it.
            self.queue.clear()
            self.waiting = 0
            self.in_flight = 0
            self._timer = None
            self._timer_when = math.inf
            self._drain_waiters.clear()
        self.loop = loop
        self._new_future = future_maker(loop)
        return dropped

    # -- the way in --------------------------------------------------------------------
    def admit(self, slot: Slot) -> asyncio.Future[None] | None:
        """Admit ``slot``'s call now (None), or queue it and return the future of its turn.

        The caller has bound the running loop (:meth:`bind`) and awaits the future at
        once, in its own frame (a coroutine in between would cost every queued call a
        frame at each suspension); if it leaves by an exception (its cancellation,
        ``ThrottleClosed`` from :meth:`close`) it calls :meth:`abandon`, after which the
        call holds nothing. :meth:`wait` does both.

        Raises:
            BaseException: an interrupt a ``resumed`` listener or the rng raised while the
                call was being admitted (it holds nothing).
        """
        if self.waiting or self.in_flight >= self.limit:
            gated = False
        else:
            resumes = self._resumes
            if not self._enter(slot):
                return None
            if self._resumes != resumes:
                # A pause ended and its ``resumed`` listeners ran before anything was
                # admitted: they may have closed the throttle, changed its limit or paused
                # it again. Look again at the state they left.
                if self.closed:
                    raise self._refusal()
                return self.admit(slot)
            gated = True  # a free slot, but pacing, a pause or a budget holds it back
        slot._turn = turn = self._new_future()
        self.queue.append(slot)
        self.waiting += 1
        if gated:
            self.dispatch()  # it is the head, gated by time: arm the timer
        return turn

    async def wait(self, future: asyncio.Future[None], slot: Slot) -> None:
        """Await the turn :meth:`admit` returned, abandoning it on any exception."""
        try:
            await future
        except BaseException:
            self.abandon(future, slot)
            raise

    def abandon(self, future: asyncio.Future[None], slot: Slot) -> None:
        """A queued caller left its wait by an exception: it holds nothing afterwards."""
        if not future.done():
            # It left without its future being cancelled (its coroutine was closed, or an
            # exception was thrown into it): the future is cancelled, so it is skipped.
            future.cancel()
        if future.cancelled():
            # Cancelled while queued: it holds nothing; the entry is skipped later.
            self.waiting -= 1
            if self.queue and self.in_flight < self.limit:
                self.dispatch()
        elif future.exception() is None:
            # Admitted, then cancelled before it could run: give everything back.
            self.in_flight -= 1
            if self._budgets is not None:
                self._budgets.refund(slot)
            self.dispatch()

    def mark_start(self, slot: Slot, now: float) -> None:
        """Note ``slot``'s start time (and, the first time, the throttle's first admission)."""
        slot._start = now
        if self.first_admit is None:
            self.first_admit = now
            self.stamp = self._timed

    def _enter(self, slot: Slot) -> float:
        """Admit ``slot`` if every gate allows it now (0.0), else return when to look again.

        The one place a call is admitted, whether it arrives or waits at the head of the
        queue; the callers check the concurrency limit and the queue.
        """
        if self.simple:
            self.in_flight += 1
            slot._epoch = self.epoch
            if self.stamp:
                self.mark_start(slot, self.now())
            return 0.0
        loop = self.loop
        assert loop is not None  # bound by the caller (or when it queued)
        now = loop.time()
        budgets = self._only_budgets
        if budgets is not None:
            # Budgets only (the common case): check and charge in one pass each.
            if not budgets.try_charge(slot, now):
                return budgets.wake_time(slot.tokens, now)
        else:
            wake = self._gate(slot.tokens, now)
            if wake:
                return wake
            self._pacing.start(now)
            if self._budgets is not None:
                self._budgets.charge(slot, now)
        self.in_flight += 1
        slot._epoch = self.epoch
        slot._start = now
        if self.first_admit is None:
            self.mark_start(slot, now)
        return 0.0

    def _gate(self, tokens: int, now: float) -> float:
        """0.0 when a call of ``tokens`` may start now, else the earliest time to look again.

        Ending a pause emits ``resumed``: a listener's ``KeyboardInterrupt`` raised there
        reaches the caller being admitted (the state is already consistent). Then it
        returns ``inf``, admitting nothing: the listeners may have changed anything, and
        the callers (:meth:`admit`, :meth:`dispatch`) look again.
        """
        pacing = self._pacing
        paused = pacing.paused_until
        if paused != NEVER:
            if not within(paused, now):
                return paused
            self._resume(now)
            return math.inf  # admit nothing now: the caller looks again (see admit())
        wake = pacing.next_start(now)
        if self._budgets is not None:
            when = self._budgets.wake_time(tokens, now)
            if when > wake:
                wake = when
        return wake

    # -- the way out -------------------------------------------------------------------
    def release(self) -> None:
        """Give back the slot of a call that has finished (once per admitted call).

        The freed capacity goes on at :meth:`dispatch`, called after the call's outcome
        is accounted, so that a decrease the outcome causes is enforced first.
        """
        self.in_flight -= 1

    def dispatch(self) -> None:
        """Admit queued callers while the gates allow it; when closed and idle, drained."""
        queue = self.queue
        if not queue:
            if self.closed and not self.in_flight:
                self._set_drained()
            return
        while queue:
            slot = queue[0]
            future = slot._turn
            if future.done():  # cancelled while queued
                queue.popleft()
                continue
            if self.in_flight >= self.limit:
                return
            if self.simple and not self.stamp:  # _enter()'s first branch, inlined
                self.in_flight += 1
                slot._epoch = self.epoch
            else:
                resumes = self._resumes
                try:
                    wake = self._enter(slot)
                except BaseException as exc:
                    # A listener (``resumed``) or the rng raised an interrupt while this
                    # waiter was being admitted: it is delivered to that waiter, which holds
                    # nothing; the others go on.
                    queue.popleft()
                    self.waiting -= 1
                    future.set_exception(exc)
                    continue
                if self._resumes != resumes:
                    # ``resumed`` listeners ran (see admit()), before this waiter was
                    # admitted: a close() refused it, a new limit's dispatch may have
                    # admitted it. Look again from the top.
                    self.dispatch()
                    return
                if wake:
                    self._arm(wake)
                    return
            queue.popleft()
            self.waiting -= 1
            future.set_result(None)
            if self.in_flight >= self.limit:
                return  # (the common hand-off: one slot freed, one waiter admitted)

    def _arm(self, when: float) -> None:
        loop = self.loop
        if when == math.inf or loop is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_when <= when:
                return
            timer.cancel()
        self._timer_when = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = math.inf
        self.dispatch()

    # -- changes -----------------------------------------------------------------------
    def retune(self, limit: int, interval: float, *, congestion: bool) -> None:
        """Set the concurrency limit and the pacing interval (a grown limit admits at once).

        Args:
            limit: the new limit (running calls are never cancelled by a lower one).
            interval: the new minimum gap between starts.
            congestion: a decrease for congestion: calls admitted from now on carry a
                new epoch.
        """
        if congestion:
            self.epoch += 1
        old = self.limit
        self._pacing.interval = interval
        self.limit = limit
        self._refresh()
        if limit > old and self.queue:
            self.dispatch()

    def pause(self, seconds: float, reason: str) -> None:
        """Pause new admissions for ``seconds`` from now; never shortens a pause.

        Emits ``paused``. The pause ends when the head of the queue is next examined at
        or after its end (the timer is armed for it), or at the next arrival.
        """
        now = self.now()
        until = now + seconds
        pacing = self._pacing
        if until <= pacing.paused_until or within(until, now):
            return  # (a pause already over is none: a resumed listener cannot loop on it)
        pacing.paused_until = until
        self._refresh()
        if self.queue:
            self._arm(until)
        if event_logger.isEnabledFor(logging.INFO):
            self._events.log(
                logging.INFO,
                "paused",
                "admissions paused for %.3fs (reason: %s)",
                seconds,
                reason,
                delay=seconds,
                reason=reason,
                state="paused",
            )
        self._events.emit("paused", {"until": until, "reason": reason, "seconds": seconds}, now)

    def _resume(self, now: float) -> None:
        self._pacing.paused_until = NEVER
        self._refresh()
        self._resumes += 1
        if event_logger.isEnabledFor(logging.INFO):
            self._events.log(logging.INFO, "resumed", "admissions resumed", state="running")
        self._events.emit("resumed", {}, now)

    def _refresh(self) -> None:
        idle = self._pacing.idle
        self.simple = idle and self._budgets is None
        # The budgets when they are the only gate (no pacing, no pause), else None.
        self._only_budgets = self._budgets if idle else None

    # -- closing -----------------------------------------------------------------------
    def close(self, error: Callable[[], BaseException]) -> None:
        """Refuse the queued callers with ``error()`` and stop the timer (calls in flight go on).

        ``drained`` follows at the :meth:`dispatch` that finds nothing in flight.
        """
        self.closed = True
        self._refusal = error
        for slot in self.queue:
            future = slot._turn
            if not future.done():
                future.set_exception(error())
                self.waiting -= 1
        # (A caller cancelled but not yet resumed still counts: its abandon() uncounts it.)
        self.queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = math.inf

    async def wait_drained(self) -> None:
        """Wait until the throttle is closed and nothing is in flight (event-based)."""
        if self._drained or not self.in_flight:
            return
        loop = self.loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _set_drained(self) -> None:
        if self._drained:
            return
        self._drained = True
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self._events.emit("drained", {}, self.now())
