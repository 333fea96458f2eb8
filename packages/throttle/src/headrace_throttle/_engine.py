"""The admission engine: one FIFO queue in front of the concurrency limit, pacing and budgets.

Nothing here awaits except a queued caller. A caller is admitted at once, without a
future or a task, when nobody is queued, ``in_flight < limit`` and (when pacing, a
pause or a budget applies) the gates allow it now. Otherwise it queues; whenever
something changes (a call finishes, a pause ends, a charge expires) the head of the
queue is admitted if everything allows it, and a single loop timer is armed for the
earliest time at which a blocked head could pass. Admission is strict FIFO: the head
blocks everyone behind it, so a large request is never overtaken by small ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from typing import Any

from headrace_core.lowlevel import TIME_TOLERANCE, LoopBinding, within
from headrace_core.stats import Listeners
from headrace_throttle._budget import Charge, RequestBudget, TokenBudget
from headrace_throttle._limit import AIMD, Limit
from headrace_throttle._types import Slot, ThrottleEvent

_NEVER = -math.inf
_log = logging.getLogger("headrace.throttle")


class _Engine:
    """State and admission logic of a throttle (the public class is ``Throttle``)."""

    __slots__ = (
        "_aimd",
        "_binding",
        "_budget_kinds",
        "_budgets",
        "_completed",
        "_epoch",
        "_failed",
        "_first_admit",
        "_gap",
        "_in_flight",
        "_interval",
        "_jitter",
        "_last_start",
        "_limit",
        "_limiter",
        "_listeners",
        "_loop",
        "_max",
        "_max_interval",
        "_min",
        "_min_interval",
        "_paused_until",
        "_queue",
        "_resume_timer",
        "_rng",
        "_sample_ok",
        "_simple",
        "_slow_finish",
        "_stamp",
        "_timer",
        "_timer_when",
        "_token_budget",
        "_token_index",
        "_waiting",
        "name",
    )

    def _init_engine(
        self,
        *,
        name: str | None,
        limit_value: int,
        low: int,
        high: int,
        limiter: Limit,
        min_interval: float,
        max_interval: float,
        jitter: float,
        rng: random.Random | None,
        budgets: tuple[RequestBudget | TokenBudget, ...],
    ) -> None:
        self.name = name
        self._limit = limit_value
        self._min = low
        self._max = high
        self._limiter = limiter
        self._aimd = limiter if isinstance(limiter, AIMD) else None
        self._epoch = 0
        self._in_flight = 0
        self._waiting = 0
        self._queue: deque[tuple[asyncio.Future[None], Slot]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._binding = LoopBinding(f"Throttle({name!r})" if name else "Throttle")
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._resume_timer: asyncio.TimerHandle | None = None
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._interval = min_interval
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._gap = 1.0
        self._last_start = _NEVER
        self._paused_until = _NEVER
        self._budgets = budgets
        self._budget_kinds = tuple((b, isinstance(b, TokenBudget)) for b in budgets)
        self._stamp = True
        self._token_index = tuple(i for i, b in enumerate(budgets) if isinstance(b, TokenBudget))
        tokens = [b for b in budgets if isinstance(b, TokenBudget)]
        self._token_budget = tokens[0] if tokens else None
        self._completed = 0
        self._failed = 0
        self._first_admit: float | None = None
        self._listeners: Listeners[ThrottleEvent] = Listeners(
            "headrace.throttle", f"throttle {name!r}" if name else "throttle"
        )
        self._refresh()

    # -- flags ------------------------------------------------------------------------
    def _refresh(self) -> None:
        # ``_simple``: admission needs no clock (no pacing, no pause, no budget).
        self._simple = not self._budgets and self._interval <= 0.0 and self._paused_until == _NEVER
        # ``_sample_ok``: a success must reach the limit (it may grow, or it learns).
        aimd = self._aimd
        self._sample_ok = aimd is None or (
            self._limit < self._max or self._interval > self._min_interval
        )
        self._slow_finish = self._sample_ok or bool(self._budgets) or self._has_progress()

    def _has_progress(self) -> bool:
        """Hook for the public class: whether finishing a call reports progress."""
        return False

    def _bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        _, rebound = self._binding.check()
        if rebound and self._loop is not None:
            # The previous loop is gone: its waiters and timers went with it.
            self._queue.clear()
            self._waiting = 0
            self._in_flight = 0
            self._timer = self._resume_timer = None
            self._timer_when = math.inf
            self._forget_loop()
        self._loop = loop

    def _forget_loop(self) -> None:
        """Hook for the public class: drop per-loop state of a dead loop."""

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return 0.0
        return loop.time()

    # -- gates ------------------------------------------------------------------------
    def _blocked(self, tokens: int, now: float) -> float:
        """0.0 when a call of ``tokens`` may start now, else the earliest time to look again.

        Times computed from loop times meet their bounds through ``within``, so a call
        that arrives exactly one interval (or one window) later passes at every clock
        magnitude. Ending a pause emits ``resumed``: a listener's ``KeyboardInterrupt``
        raised there reaches the caller being admitted (the state is already consistent).
        """
        wake = 0.0
        paused = self._paused_until
        if paused != _NEVER:
            if not within(paused, now):
                return paused
            self._resume(now)
        if self._interval > 0.0:
            start = self._last_start + self._interval * self._gap
            if not within(start, now):
                wake = start
        for budget, is_tokens in self._budget_kinds:
            amount = tokens if is_tokens else 1
            entries = budget._entries
            if entries and within(entries[0][0] + budget.window_seconds, now):
                budget._expire(now)
            if budget._used + amount > budget.capacity:
                when = budget._wake_time(amount, now)
                if when > wake:
                    wake = when
        return wake

    def _admit(self, slot: Slot, now: float) -> None:
        # The gap is drawn first: a user ``rng`` that raises an interrupt leaves nothing
        # half admitted.
        gap = self._draw_gap() if self._jitter and self._interval > 0.0 else 1.0
        self._in_flight += 1
        slot._epoch = self._epoch
        slot._start = now
        if self._first_admit is None:
            self._first(now)
        if self._simple:
            return
        if self._interval > 0.0:
            self._last_start = now
            self._gap = gap
        if self._budget_kinds:
            tokens = slot.tokens
            charges = []
            for budget, is_tokens in self._budget_kinds:
                amount = tokens if is_tokens else 1
                entry = [now, amount, True]
                budget._entries.append(entry)
                budget._used += amount
                charges.append(entry)
            slot._charges = charges

    def _draw_gap(self) -> float:
        """A jittered gap factor in ``[1 - jitter, 1]`` from ``rng`` (1.0 if the rng misbehaves)."""
        low = 1.0 - self._jitter
        try:
            gap: object = self._rng.uniform(low, 1.0)
        except (Exception, asyncio.CancelledError):
            _log.warning("rng of %r failed; the dispatch interval is not jittered", self)
            return 1.0
        if isinstance(gap, bool) or not isinstance(gap, int | float) or not low <= gap <= 1.0:
            _log.warning(
                "rng of %r returned %s, not a number in [%g, 1]; the dispatch interval is "
                "not jittered",
                self,
                type(gap).__name__,
                low,
            )
            return 1.0
        return float(gap)

    def _try_admit(self, slot: Slot, now: float) -> float:
        """Admit now if every gate allows it (0.0), else return when to look again."""
        if self._paused_until != _NEVER or self._interval > 0.0:
            wake = self._blocked(slot.tokens, now)
            if not wake:
                self._admit(slot, now)
            return wake
        # Budgets only (the common case): check and charge in one pass each.
        tokens = slot.tokens
        kinds = self._budget_kinds
        horizon = now + TIME_TOLERANCE  # ``within(start + window, now)``, inlined
        for budget, is_tokens in kinds:
            amount = tokens if is_tokens else 1
            entries = budget._entries
            if entries and entries[0][0] + budget.window_seconds <= horizon:
                budget._expire(now)
            if budget._used + amount > budget.capacity:
                return self._blocked(tokens, now)
        self._in_flight += 1
        slot._epoch = self._epoch
        slot._start = now
        if self._first_admit is None:
            self._first(now)
        charges: list[Charge] = [[now, tokens if is_tokens else 1, True] for _, is_tokens in kinds]
        for (budget, _), entry in zip(kinds, charges, strict=False):
            budget._entries.append(entry)
            budget._used += entry[1]
        slot._charges = charges
        return 0.0

    def _first(self, now: float) -> None:
        self._first_admit = now
        self._stamp = not isinstance(self._limiter, AIMD)
        if self._aimd is not None and self._aimd.last_change is None:
            self._aimd.last_change = now

    # -- the queue --------------------------------------------------------------------
    async def _enqueue(self, slot: Slot, loop: asyncio.AbstractEventLoop) -> None:
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((future, slot))
        self._waiting += 1
        if self._waiting == 1 and self._in_flight < self._limit:
            self._dispatch()  # the head is gated by time: arm the timer
        try:
            await future
        except BaseException:
            self._abandon(future, slot)
            raise

    def _abandon(self, future: asyncio.Future[None], slot: Slot) -> None:
        """A queued caller left by an exception (a cancel, or ``ThrottleClosed``)."""
        if not future.done():
            # It left without its future being cancelled (its coroutine was closed, or an
            # exception was thrown into it): the future is cancelled, so it is skipped.
            future.cancel()
        if future.cancelled():
            # Cancelled while queued: it holds nothing; the entry is skipped later.
            self._waiting -= 1
            if self._queue and self._in_flight < self._limit:
                self._dispatch()
        elif future.exception() is None:
            # Admitted, then cancelled before it could run: give everything back.
            self._unadmit(slot)

    def _unadmit(self, slot: Slot) -> None:
        self._in_flight -= 1
        charges = slot._charges
        if charges is not None:
            now = self._now()
            for budget, entry in zip(self._budgets, charges, strict=True):
                budget._adjust(entry, 0, now)
            slot._charges = None
        self._released()

    def _released(self) -> None:
        """Hook for the public class: a slot was given back (dispatch, drain)."""
        raise NotImplementedError

    def _dispatch(self) -> None:
        queue = self._queue
        loop = self._loop
        if loop is None:
            return
        while queue:
            future, slot = queue[0]
            if future.done():
                queue.popleft()
                continue
            if self._in_flight >= self._limit:
                return
            if self._simple:
                # The saturated hot path: hand the slot to the head waiter directly.
                queue.popleft()
                self._waiting -= 1
                self._in_flight += 1
                slot._epoch = self._epoch
                if self._stamp:
                    now = loop.time()
                    slot._start = now
                    if self._first_admit is None:
                        self._first(now)
            else:
                now = loop.time()
                try:
                    wake = self._blocked(slot.tokens, now)
                    if not wake:
                        self._admit(slot, now)
                except BaseException as exc:
                    # A listener (``resumed``) or the rng raised an interrupt while this
                    # waiter was being admitted: it is delivered to that waiter, which
                    # holds nothing; the others go on.
                    queue.popleft()
                    self._waiting -= 1
                    future.set_exception(exc)
                    continue
                if wake:
                    self._arm(wake)
                    return
                queue.popleft()
                self._waiting -= 1
            future.set_result(None)

    def _hand_off(self) -> None:
        """One slot came free: give it to the head waiter (the saturated hot path)."""
        if not self._simple or self._in_flight >= self._limit:
            self._dispatch()
            return
        queue = self._queue
        while queue:
            future, slot = queue.popleft()
            if future.done():
                continue
            self._waiting -= 1
            self._in_flight += 1
            slot._epoch = self._epoch
            if self._stamp:
                loop = self._loop
                assert loop is not None
                now = loop.time()
                slot._start = now
                if self._first_admit is None:
                    self._first(now)
            future.set_result(None)
            return

    def _arm(self, when: float) -> None:
        if when == math.inf or self._loop is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_when <= when:
                return
            timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = math.inf
        self._dispatch()

    # -- pauses -----------------------------------------------------------------------
    def _pause(self, seconds: float, reason: str) -> None:
        now = self._now()
        until = now + seconds
        if until <= self._paused_until or until <= now:
            return  # never shortens a pause
        self._paused_until = until
        self._simple = False
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if self._loop is not None and until != math.inf:
            self._resume_timer = self._loop.call_at(until, self._on_resume)
        self._emit("paused", {"until": until, "reason": reason, "seconds": seconds})

    def _on_resume(self) -> None:
        # The pause has ended. With calls queued, the dispatch ends it (emitting
        # ``resumed`` while admitting the head, whose caller gets a listener's interrupt);
        # with none, the next admission does, in its caller's task.
        self._resume_timer = None
        if self._queue:
            self._dispatch()

    def _resume(self, now: float) -> None:
        self._paused_until = _NEVER
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._refresh()
        self._emit("resumed", {})

    # -- adaptation -------------------------------------------------------------------
    def _sample(self, slot: Slot | None, dropped: bool) -> None:
        now = self._now()
        # AIMD ignores latency, so its fast path does not stamp the start time.
        rtt = now - slot._start if slot is not None and self._aimd is None else 0.0
        old = self._limit
        aimd = self._aimd
        decreases = aimd.decreases if aimd is not None else 0
        # in flight while the call ran: the others plus itself
        in_flight = self._in_flight + (1 if slot is not None else 0)
        try:
            value = self._limiter.on_sample(rtt, in_flight, dropped)
        except (Exception, asyncio.CancelledError):
            # A failing custom limit must not stall the queue: keep the current limit.
            _log.exception(
                "limit %s of %r failed; the limit is unchanged", type(self._limiter).__name__, self
            )
            return
        if type(value) is int:
            new = value
        else:
            converted = _limit_value(value)
            if converted is None:
                _log.warning(
                    "limit %s of %r returned %s, not a number; the limit is unchanged",
                    type(self._limiter).__name__,
                    self,
                    type(value).__name__,
                )
                return
            new = converted
        if new < self._min:
            new = self._min
        elif new > self._max:
            new = self._max
        if aimd is not None:
            if aimd.decreases != decreases:
                self._change(old, new, decrease=True, reason="failures", now=now)
            elif new > old:
                self._change(old, new, decrease=False, reason="recovered", now=now)
            elif not dropped and self._interval > self._min_interval and aimd.cooled(now):
                # At the ceiling but still paced slower than asked: keep recovering.
                aimd.last_change = now
                self._change(old, new, decrease=False, reason="recovered", now=now)
        elif new < old:
            self._change(old, new, decrease=True, reason="latency", now=now)
        elif new > old:
            self._change(old, new, decrease=False, reason="latency", now=now)

    def _congestion(self, reason: str) -> None:
        """One multiplicative decrease now (a server hint), whatever the failure count."""
        now = self._now()
        old = self._limit
        aimd = self._aimd
        if aimd is not None:
            new = aimd.decrease(now)
        else:
            factor = 0.5
            new = max(self._min, math.floor(old * factor))
            setter = getattr(self._limiter, "_set", None)
            if setter is not None:
                setter(new)
        self._change(old, max(self._min, new), decrease=True, reason=reason, now=now)

    def _change(self, old: int, new: int, *, decrease: bool, reason: str, now: float) -> None:
        old_interval = self._interval
        if decrease:
            self._epoch += 1
            if old_interval > 0.0:
                self._interval = min(self._max_interval, old_interval * 2.0)
        elif old_interval > self._min_interval:
            self._interval = max(self._min_interval, old_interval / 2.0)
        self._limit = new
        self._refresh()
        if new > old and self._queue:
            self._dispatch()
        kind = "decreased" if decrease else "increased"
        self._emit(
            kind,
            {
                "concurrency": (old, new),
                "dispatch_interval": (old_interval, self._interval),
                "interval": (old_interval, self._interval),
                "reason": reason,
                "epoch": self._epoch,
            },
            now,
        )

    # -- events -----------------------------------------------------------------------
    def _emit(self, kind: str, data: dict[str, Any], now: float | None = None) -> None:
        if self._listeners:
            at = self._now() if now is None else now
            self._listeners.emit(ThrottleEvent(kind, at, data, self.name))


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
