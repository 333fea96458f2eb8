"""One loop timer for many deadlines of one length, each enforced by its own ``asyncio.Timeout``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, final

__all__ = ["Deadlines", "Watched"]


class Watched:
    """One deadline that a :class:`Deadlines` watches: a call's ``asyncio.Timeout``.

    Subclass it to carry what ``on_expire`` needs (with ``__slots__``).

    Attributes:
        scope: the call's ``asyncio.Timeout``; ``None`` once :meth:`Deadlines.done` ran.
        when: the deadline in loop time (set by :meth:`Deadlines.add`).
    """

    __slots__ = ("scope", "when")

    def __init__(self, scope: asyncio.Timeout) -> None:
        self.scope: asyncio.Timeout | None = scope
        self.when = 0.0


W = TypeVar("W", bound=Watched)


@final
class Deadlines(Generic[W]):
    """The deadlines of one length on one loop, watched by one loop timer.

    Each deadline belongs to a call that enters an ``asyncio.Timeout(None)`` of its own
    (asyncio's ``Timeout``, what ``asyncio.timeout()`` returns) and registers it with
    :meth:`add` just before entering it (with no ``await`` in between). Every deadline
    lasts ``seconds`` from :meth:`add`, so they arrive in loop time order and a deque holds
    them; one ``loop.call_at`` timer is armed for the oldest live one. When a deadline is
    due, its call's ``Timeout`` is rescheduled to now, so asyncio itself cancels the call
    and keeps the ``cancelling()``/``uncancel()`` bookkeeping exactly as
    ``asyncio.timeout()`` does; then ``on_expire(watched)`` runs. A call that ends in time
    (:meth:`done`) costs no timer handle of its own.

    The timer stays armed while no deadline is live (a later deadline reuses it), until
    :meth:`close`. Use it from its loop only, as every ``asyncio.Timeout``.

    Args:
        loop: the loop whose clock the deadlines read (the running loop of every call).
        seconds: the length of every deadline, in loop seconds.
        on_expire: called with each :class:`Watched` whose deadline expired while its
            call was still in its ``Timeout``, right after that ``Timeout`` was
            rescheduled; it must not raise.

    Example::

        deadlines = Deadlines(loop, 2.0)
        watched = Watched(asyncio.Timeout(None))
        deadlines.add(watched)
        try:
            async with watched.scope:
                await work()
        finally:
            deadlines.done(watched)
    """

    __slots__ = ("entries", "handle", "loop", "on_expire", "seconds")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        seconds: float,
        on_expire: Callable[[W], object] | None = None,
    ) -> None:
        self.loop = loop
        self.seconds = seconds
        self.on_expire = on_expire
        self.entries: deque[W] = deque()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, watched: W) -> None:
        """Watch the deadline of ``watched``: ``seconds`` from now."""
        when = watched.when = self.loop.time() + self.seconds
        self.entries.append(watched)
        if self.handle is None:
            self.handle = self.loop.call_at(when, self.fire)

    def done(self, watched: W) -> None:
        """Stop watching ``watched`` (its call left its ``Timeout``)."""
        watched.scope = None
        entries = self.entries
        while entries and entries[0].scope is None:
            entries.popleft()

    def fire(self) -> None:
        """Expire every due deadline; arm the timer for the next live one (the timer's body)."""
        handle = self.handle
        self.handle = None
        loop = self.loop
        now = loop.time()
        # The loop ran this timer because its time had come (asyncio runs a timer up to
        # its clock resolution early): a deadline at that time is due too.
        due = now if handle is None else max(now, handle.when())
        entries = self.entries
        on_expire = self.on_expire
        while entries:
            watched = entries[0]
            scope = watched.scope
            if scope is not None and watched.when > due:
                self.handle = loop.call_at(watched.when, self.fire)
                return
            entries.popleft()
            if scope is None:
                continue
            try:
                scope.reschedule(now)  # asyncio's Timeout cancels the call
            except RuntimeError:
                continue  # the call already left its Timeout: nothing to cancel
            if on_expire is not None:
                on_expire(watched)

    def close(self) -> None:
        """Cancel the timer, unless a deadline is still live (when its owner is done with it)."""
        handle = self.handle
        if handle is not None and not self.entries:
            self.handle = None
            handle.cancel()
