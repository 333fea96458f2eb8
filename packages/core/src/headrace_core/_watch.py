"""One loop timer for many deadlines of one length, each enforced by its own ``asyncio.Timeout``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar, final

__all__ = ["Deadlines"]

T = TypeVar("T")


@final
class Deadlines(Generic[T]):
    """The deadlines of one length on one loop, watched by one loop timer.

    Each deadline belongs to a call running in an ``asyncio.Timeout`` (asyncio's
    ``Timeout``, what ``asyncio.timeout()`` returns), created with no deadline
    (``asyncio.Timeout(None)``) and entered by the time the call starts: a call's own,
    entered right after :meth:`add`, or one that several calls of one task share, one
    after another (each call leaves it once its deadline came, since asyncio settles an
    expired ``Timeout`` only when it is left). Every deadline lasts ``seconds`` from
    :meth:`add`, so they arrive in loop time order and a deque holds them; one
    ``loop.call_at`` timer is armed for the oldest live one. When a deadline is due, its
    call's ``Timeout`` is rescheduled to now, so asyncio itself cancels the call (at the
    loop's next turn) and keeps the ``cancelling()``/``uncancel()`` bookkeeping exactly as
    ``asyncio.timeout()`` does; then ``on_expire(entry)`` runs. A call that ends in time
    (:meth:`done`) costs no timer handle of its own.

    The scope may also be a task whose whole body is the call: at the deadline the task is
    cancelled at the loop's next turn, as a ``Timeout`` would cancel it. Such a task ends
    with its call, so it owes no ``uncancel()``; its owner tells a deadline's cancel from
    another by the entry (expired or not) and ``task.cancelling()`` (one cancel: the
    deadline's alone).

    A deadline is an *entry*, the list ``[when, scope, owner]`` (a list: the cheapest
    record to make, and hot paths make one per call):

    - ``entry[0]``: the deadline in loop time; ``None`` once it expired, that is once its
      scope was rescheduled to expire (``scope.when()`` then tells when) or its task was
      cancelled. Only then can the scope have expired, so a call asks ``scope.expired()``
      only then.
    - ``entry[1]``: the call's ``asyncio.Timeout`` (or task); ``None`` once :meth:`done` ran.
    - ``entry[2]``: the owner given to :meth:`add`, for ``on_expire``.

    A hot path that writes :meth:`add` out may append items of its own after the owner.

    The timer stays armed while no deadline is live (a later deadline reuses it), until
    :meth:`close`. Use it from its loop only, as every ``asyncio.Timeout``.

    A hot path may write :meth:`add` and :meth:`done` out in place, on the public
    ``entries``, ``handle`` and ``fire``, exactly as they are::

        entry = [loop.time() + deadlines.seconds, scope, owner]  # add
        entries = deadlines.entries
        entries.append(entry)
        if deadlines.handle is None:
            deadlines.handle = loop.call_at(entry[0], deadlines.fire)
        ...
        entry[1] = None  # done
        while entries and entries[0][1] is None:
            entries.popleft()

    Args:
        loop: the loop whose clock the deadlines read (the running loop of every call).
        seconds: the length of every deadline, in loop seconds.
        on_expire: called with each entry whose deadline expired while its call was still
            in its ``Timeout`` (or its task still running), right after that ``Timeout``
            was rescheduled (or the task's cancel scheduled); it must not raise.

    Attributes:
        loop: the loop of the deadlines.
        seconds: the length of every deadline.
        on_expire: the ``on_expire`` argument.
        entries: the entries, oldest first, from the oldest live one on (the entries of
            calls that are done leave it once no older entry is live).
        handle: the timer, or ``None`` while none is armed.

    Example::

        deadlines = Deadlines(loop, 2.0)
        scope = asyncio.Timeout(None)
        entry = deadlines.add(scope, None)
        try:
            async with scope:
                await work()
        finally:
            deadlines.done(entry)
    """

    __slots__ = ("entries", "handle", "loop", "on_expire", "seconds")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        seconds: float,
        on_expire: Callable[[list[Any]], object] | None = None,
    ) -> None:
        self.loop = loop
        self.seconds = seconds
        self.on_expire = on_expire
        self.entries: deque[list[Any]] = deque()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, scope: asyncio.Timeout | asyncio.Task[Any], owner: T) -> list[Any]:
        """Watch the deadline of the call in ``scope``: ``seconds`` from now.

        Args:
            scope: the call's ``asyncio.Timeout``, with no deadline of its own and entered
                by the time the call starts; or a task whose whole body is the call.
            owner: what the entry carries for ``on_expire`` (its ``entry[2]``).

        Returns:
            The entry ``[when, scope, owner]``, for :meth:`done`.
        """
        when = self.loop.time() + self.seconds
        entry = [when, scope, owner]
        self.entries.append(entry)
        if self.handle is None:
            self.handle = self.loop.call_at(when, self.fire)
        return entry

    def done(self, entry: list[Any]) -> None:
        """Stop watching ``entry`` (its call left its ``Timeout``)."""
        entry[1] = None
        entries = self.entries
        while entries and entries[0][1] is None:
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
            entry = entries[0]
            when, scope = entry[0], entry[1]
            if scope is not None and when > due:
                self.handle = loop.call_at(when, self.fire)
                return
            entries.popleft()
            if scope is None:
                continue
            if type(scope) is asyncio.Timeout:
                try:
                    scope.reschedule(now)  # asyncio's Timeout cancels the call
                except RuntimeError:
                    continue  # the call already left its Timeout: nothing to cancel
            elif scope.done():
                continue  # a task that is its call's scope, and ended already
            else:
                # Cancelled at the loop's next turn, as an asyncio.Timeout rescheduled to
                # now cancels its task: every call due at one instant is told alike.
                loop.call_soon(scope.cancel)
            entry[0] = None
            if on_expire is not None:
                on_expire(entry)

    def close(self) -> None:
        """Cancel the timer, unless a deadline is still live (when its owner is done with it)."""
        handle = self.handle
        if handle is not None and not self.entries:
            self.handle = None
            handle.cancel()
