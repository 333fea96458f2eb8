"""The bounded channel a stage's workers take items from."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Final, TypeAlias, cast

from headrace_core.lowlevel import safe_repr
from headrace_flow._queues import QueueFactory, QueueLike, fifo_queue, lifo_queue, priority_queue

#: What an ordered stage's channel stores: the item's number in the stage, and the item.
Numbered: TypeAlias = tuple[int, object]

#: The gate of a channel that holds nothing back (see ``Channel.gate``).
OPEN: Final = sys.maxsize


class Signal(enum.Enum):
    """What a waiting worker receives instead of an item."""

    EOF = "EOF"
    """Every producer closed the channel and nothing is left (finals included)."""

    RETIRE = "RETIRE"
    """The stage scaled down: this worker leaves."""


EOF: Final = Signal.EOF
RETIRE: Final = Signal.RETIRE


class Finals:
    """Items that must reach the stage after every other item (from ``Last``).

    A channel hands out its finals, all at once to one worker, only once it is closed
    and empty, so whatever its producers emitted before comes first; the worker passes
    the results on as finals of its own output.
    """

    __slots__ = ("values",)

    def __init__(self, values: list[object]) -> None:
        self.values = values


Storage: TypeAlias = tuple[
    Callable[[object], None], Callable[[], object], Callable[[object], None] | None
]


def _storage(factory: QueueFactory, maxsize: int) -> Storage:
    """Return (push, pop, push_front) for the queue kind ``factory`` builds."""
    if factory is fifo_queue:
        items: deque[object] = deque()
        return items.append, items.popleft, items.appendleft
    if factory is lifo_queue:
        stack: list[object] = []
        return stack.append, stack.pop, stack.append
    if factory is priority_queue:
        heap: list[Any] = []  # the user's items: comparable, or the run fails with their error

        def push(item: object) -> None:
            heapq.heappush(heap, item)

        def pop() -> object:
            item: object = heapq.heappop(heap)
            return item

        return push, pop, push
    queue = factory(maxsize=maxsize)
    if not isinstance(queue, QueueLike):
        raise TypeError(
            f"queue factory {safe_repr(factory)} returned {safe_repr(queue)}, which lacks "
            "put_nowait/get_nowait/qsize"
        )
    return queue.put_nowait, queue.get_nowait, None


class Channel:
    """A bounded multi-producer queue with direct hand-off, closing and worker retirement.

    ``size`` counts stored entries. Waiting getters receive entries directly from ``put``
    (the store is bypassed), ``EOF`` once every producer closed it, or ``RETIRE``. The
    channel of an ordered stage (``numbered``) numbers each item as it enters: its
    entries are ``(number, item)`` (one class for both, so the engine's call sites see
    one type).

    A numbered FIFO channel also has a ``gate``: it hands out no item numbered ``gate``
    or more (the ordered stage's window, see ``Reorder``). Such items stay stored, in
    order, and getters wait meanwhile, even with entries stored; :meth:`hand_out` gives
    them what a raised gate lets through. Every other channel's gate is ``OPEN``.
    """

    __slots__ = (
        "_pop",
        "_push",
        "_push_front",
        "closed",
        "fifo",
        "finals",
        "gate",
        "getters",
        "last_get",
        "last_put",
        "lifo",
        "loop",
        "maxsize",
        "numbered",
        "producers",
        "putters",
        "seq",
        "size",
        "times",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: QueueFactory,
        maxsize: int,
        *,
        numbered: bool = False,
    ) -> None:
        self.loop = loop
        self._push, self._pop, self._push_front = _storage(factory, maxsize)
        self.fifo = factory is fifo_queue
        self.lifo = factory is lifo_queue
        self.numbered = numbered
        self.seq = 0  # the number of the next item to enter (numbered channels)
        self.gate = OPEN  # the number of the first item not to hand out (see the class)
        self.maxsize = maxsize
        self.size = 0
        self.getters: deque[asyncio.Future[object]] = deque()
        self.putters: deque[tuple[asyncio.Future[None], object]] = deque()
        self.producers = 0
        self.closed = True
        # values that go out after every stored item, once the channel is closed (Last)
        self.finals: deque[object] = deque()
        # enqueue times of stored items in arrival order (a LIFO pops the newest; for other
        # orders the oldest arrival time is an approximation of the oldest waiting item)
        self.times: deque[float] = deque()
        self.last_put: float | None = None
        self.last_get: float | None = None

    def set_producers(self, producers: int) -> None:
        """Set how many producers must close the channel (``0``: closed already)."""
        self.producers = producers
        self.closed = producers <= 0

    # -- putting ---------------------------------------------------------------------
    def try_put(self, item: object) -> bool:
        """Store or hand off ``item`` if that needs no wait; return whether it did."""
        now = self.loop.time()
        self.last_put = now
        getters = self.getters
        if self.numbered:
            seq = self.seq
            entry = (seq, item)
            # a getter is handed the entry unless it is past the gate, or stored entries
            # wait for the gate to open (nothing passes them)
            if not self.size and seq < self.gate:
                while getters:
                    fut = getters.popleft()
                    if not fut.done():
                        self.last_get = now
                        fut.set_result(entry)
                        self.seq = seq + 1
                        return True
            if self.maxsize and self.size >= self.maxsize:
                return False  # (numbers stay contiguous: an item is numbered when it enters)
            self._push(entry)
            self.size += 1
            self.times.append(now)
            self.seq = seq + 1
            return True
        # (the same steps, without numbers or gate, written out: the hot path, measured)
        while getters:
            fut = getters.popleft()
            if not fut.done():
                self.last_get = now
                fut.set_result(item)
                return True
        if self.maxsize and self.size >= self.maxsize:
            return False
        self._push(item)
        self.size += 1
        self.times.append(now)
        return True

    async def put(self, item: object) -> None:
        """Store ``item``, waiting for room."""
        if not self.try_put(item):
            await self.park(item)

    async def park(self, item: object) -> None:
        """Wait until ``item`` is stored: ``try_put`` just refused it (no room)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        # (an ordered stage numbers the item when it enters the store, in take(): a
        # putter cancelled while it waits leaves no gap in the numbers)
        waiting = (fut, item)
        self.putters.append(waiting)
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.done() or fut.cancelled():
                with contextlib.suppress(ValueError):
                    self.putters.remove(waiting)
            raise

    # -- getting ---------------------------------------------------------------------
    def take(self) -> object:
        """Remove and return a stored entry (``size`` must be > 0); admit one waiting putter."""
        entry = self._pop()
        self.size -= 1
        times = self.times
        now = self.loop.time()
        self.last_get = now
        if times:
            if self.lifo:
                times.pop()
            else:
                times.popleft()
        putters = self.putters
        while putters:
            fut, waiting = putters.popleft()
            if not fut.done():
                if self.numbered:
                    waiting = (self.seq, waiting)
                    self.seq += 1
                self._push(waiting)
                self.size += 1
                times.append(now)
                fut.set_result(None)
                break
        return entry

    def ready(self) -> bool:
        """Whether a stored entry may be taken now (one is, and the gate lets it through)."""
        # (a gated channel is FIFO: its oldest stored entry is numbered seq - size; any
        # other channel's gate is OPEN, past every number)
        return bool(self.size) and self.seq - self.size < self.gate

    async def wait(self) -> object:
        """Wait for an entry: return it, ``Finals``, ``EOF`` or ``RETIRE``."""
        if self.ready():
            return self.take()
        if self.closed and not self.size:
            return self.ended()
        fut = self.getter()
        try:
            return await fut
        except asyncio.CancelledError:
            self.abandon(fut)
            raise

    def ended(self) -> object:
        """What a getter of the closed, empty channel receives: its finals, else ``EOF``."""
        if self.finals:
            return self._take_finals()
        return EOF

    def getter(self) -> asyncio.Future[object]:
        """Queue a getter (nothing may be taken now): the future ``wait`` awaits.

        Whoever awaits it instead calls :meth:`abandon` when cancelled meanwhile.
        """
        fut: asyncio.Future[object] = self.loop.create_future()
        self.getters.append(fut)
        return fut

    def abandon(self, fut: asyncio.Future[object]) -> None:
        """Its getter was cancelled: drop ``fut``, or give back the entry it was handed."""
        if not fut.done():
            with contextlib.suppress(ValueError):
                self.getters.remove(fut)
        elif not fut.cancelled():
            # handed an entry, then cancelled before resuming: give the entry back
            got = fut.result()
            if isinstance(got, Finals):
                self.finals.extendleft(reversed(got.values))
            elif not isinstance(got, Signal):
                self._give_back(got)

    def _give_back(self, entry: object) -> None:
        getters = self.getters
        while getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(entry)
                return
        (self._push_front or self._push)(entry)
        self.size += 1
        if self.lifo:
            self.times.append(self.loop.time())
        else:
            self.times.appendleft(self.loop.time())

    # -- control ---------------------------------------------------------------------
    def close_one(self) -> bool:
        """One producer is done; return True when that closed the channel."""
        if self.closed:
            return False
        self.producers -= 1
        if self.producers > 0:
            return False
        self.close()
        return True

    def close(self) -> None:
        """No more items will come: waiting getters receive the finals, then ``EOF``.

        (Entries still stored wait for the gate to open; :meth:`hand_out` ends the getters
        left once the store is empty.)
        """
        self.closed = True
        if self.size:
            return
        getters = self.getters
        while getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(self._take_finals() if self.finals else EOF)

    def hand_out(self) -> None:
        """Give waiting getters the stored entries the gate lets through (it was raised).

        Once the channel is closed and its store empty, the getters left receive the
        finals, then ``EOF``.
        """
        getters = self.getters
        while getters and self.ready():
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(self.take())
        if self.closed:
            self.close()

    def _take_finals(self) -> Finals:
        finals = Finals(list(self.finals))
        self.finals.clear()
        return finals

    def fail_putters(self, error: BaseException) -> None:
        """Fail every waiting putter with ``error`` (their items are not stored)."""
        putters = self.putters
        while putters:
            fut, _ = putters.popleft()
            if not fut.done():
                fut.set_exception(error)

    def retire_one(self) -> bool:
        """Wake one waiting getter with ``RETIRE``; return whether there was one."""
        getters = self.getters
        while getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(RETIRE)
                return True
        return False

    def drain_items(self) -> list[object]:
        """Remove and return every stored item (finals included, last), unnumbered."""
        out: list[object] = []
        while self.size:
            entry = self._pop()
            if self.numbered:
                entry = cast("Numbered", entry)[1]
            out.append(entry)
            self.size -= 1
        self.times.clear()
        if self.finals:
            out.extend(self.finals)
            self.finals.clear()
        return out

    def add_final(self, value: object) -> None:
        """Queue ``value`` to go out after every stored item, once the channel is closed.

        Its producer is still running, so the channel is not closed yet.
        """
        self.finals.append(value)

    def pending(self) -> bool:
        """Whether items (stored or final) wait to be taken."""
        return bool(self.size or self.finals)

    def oldest_time(self) -> float | None:
        """The enqueue time of the oldest stored item."""
        return self.times[0] if self.times else None
