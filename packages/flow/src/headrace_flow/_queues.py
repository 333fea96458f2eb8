"""Queue factories for stage input queues, and the bounded channel the engine runs on."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["QueueFactory", "QueueLike", "fifo_queue", "lifo_queue", "priority_queue"]


@runtime_checkable
class QueueLike(Protocol):
    """The part of a queue the engine uses: non-blocking put/get and its size.

    ``asyncio.Queue`` and its subclasses qualify. The engine does the waiting, the
    bounding and the closing itself, so any container with these three methods works.
    """

    def put_nowait(self, item: Any) -> None:
        """Store ``item``."""
        ...

    def get_nowait(self) -> Any:
        """Remove and return the next item."""
        ...

    def qsize(self) -> int:
        """Return the number of stored items."""
        ...


class QueueFactory(Protocol):
    """Builds a stage's input queue: ``factory(maxsize=n)`` (``0`` = unbounded)."""

    def __call__(self, maxsize: int = 1) -> QueueLike:
        """Return a new, empty queue."""
        ...


def fifo_queue(maxsize: int = 1) -> asyncio.Queue[Any]:
    """First in, first out (the default).

    Args:
        maxsize: the bound (``0`` = unbounded).

    Returns:
        An ``asyncio.Queue``; inside a flow, the engine uses an equivalent faster store.
    """
    return asyncio.Queue(maxsize)


def lifo_queue(maxsize: int = 1) -> asyncio.LifoQueue[Any]:
    """Last in, first out.

    Args:
        maxsize: the bound (``0`` = unbounded).

    Returns:
        An ``asyncio.LifoQueue``; inside a flow, the engine uses an equivalent store.
    """
    return asyncio.LifoQueue(maxsize)


def priority_queue(maxsize: int = 1) -> asyncio.PriorityQueue[Any]:
    """Smallest item first (items must be comparable, e.g. ``(priority, payload)``).

    Args:
        maxsize: the bound (``0`` = unbounded).

    Returns:
        An ``asyncio.PriorityQueue``; inside a flow, the engine uses an equivalent store.
    """
    return asyncio.PriorityQueue(maxsize)


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Final:
    """Items that must reach the stage after every other item (from ``Last``).

    A channel hands out its finals, all at once to one worker, only once it is closed
    and empty, so whatever its producers emitted before comes first; the worker passes
    the results on as finals of its own output.
    """

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values


EMPTY: Any = _Signal("EMPTY")
EOF: Any = _Signal("EOF")
RETIRE: Any = _Signal("RETIRE")


def _storage(
    factory: QueueFactory, maxsize: int
) -> tuple[Callable[[Any], None], Callable[[], Any], Callable[[Any], None] | None]:
    """Return (push, pop, push_front) for the queue kind ``factory`` builds."""
    if factory is fifo_queue:
        items: deque[Any] = deque()
        return items.append, items.popleft, items.appendleft
    if factory is lifo_queue:
        stack: list[Any] = []
        return stack.append, stack.pop, stack.append
    if factory is priority_queue:
        heap: list[Any] = []

        def push(item: Any) -> None:
            heapq.heappush(heap, item)

        def pop() -> Any:
            return heapq.heappop(heap)

        return push, pop, push
    queue = factory(maxsize=maxsize)
    if not isinstance(queue, QueueLike):
        raise TypeError(
            f"queue factory {factory!r} returned {queue!r}, which lacks put_nowait/get_nowait/qsize"
        )
    return queue.put_nowait, queue.get_nowait, None


class Channel:
    """A bounded multi-producer queue with direct hand-off, closing and worker retirement.

    ``size`` counts stored items. Waiting getters receive items directly from ``put``
    (the store is bypassed), ``EOF`` once every producer closed it, or ``RETIRE``.
    """

    __slots__ = (
        "_pop",
        "_push",
        "_push_front",
        "closed",
        "fifo",
        "finals",
        "getters",
        "last_get",
        "last_put",
        "lifo",
        "loop",
        "maxsize",
        "producers",
        "putters",
        "seq",
        "sequenced",
        "size",
        "times",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: QueueFactory,
        maxsize: int,
        producers: int,
    ) -> None:
        self.loop = loop
        self._push, self._pop, self._push_front = _storage(factory, maxsize)
        self.fifo = factory is fifo_queue
        self.lifo = factory is lifo_queue
        # ordered stages number items as they enter: items are stored as (seq, item)
        self.sequenced = False
        self.seq = 0
        self.maxsize = maxsize
        self.size = 0
        self.getters: deque[asyncio.Future[Any]] = deque()
        self.putters: deque[tuple[asyncio.Future[None], Any]] = deque()
        self.producers = producers
        self.closed = producers <= 0
        # values that go out after every stored item, once the channel is closed (Last)
        self.finals: deque[Any] = deque()
        # enqueue times of stored items in arrival order (a LIFO pops the newest; for other
        # orders the oldest arrival time is an approximation of the oldest waiting item)
        self.times: deque[float] = deque()
        self.last_put: float | None = None
        self.last_get: float | None = None

    # -- putting ---------------------------------------------------------------------
    def try_put(self, item: Any) -> bool:
        """Store or hand off ``item`` if that needs no wait; return whether it did."""
        if self.sequenced:
            seq = self.seq
            self.seq = seq + 1
            if self._try((seq, item)):
                return True
            self.seq = seq  # numbers stay contiguous
            return False
        return self._try(item)

    def _try(self, item: Any) -> bool:
        now = self.loop.time()
        self.last_put = now
        getters = self.getters
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

    async def put(self, item: Any) -> None:
        """Store ``item``, waiting for room."""
        if self.try_put(item):
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        # (an ordered stage numbers the item when it enters the store, in take(): a
        # putter cancelled while it waits leaves no gap in the numbers)
        entry = (fut, item)
        self.putters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.done() or fut.cancelled():
                with contextlib.suppress(ValueError):
                    self.putters.remove(entry)
            raise

    # -- getting ---------------------------------------------------------------------
    def take(self) -> Any:
        """Remove and return a stored item (``size`` must be > 0); admit one waiting putter."""
        item = self._pop()
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
                if self.sequenced:
                    waiting = (self.seq, waiting)
                    self.seq += 1
                self._push(waiting)
                self.size += 1
                times.append(now)
                fut.set_result(None)
                break
        return item

    async def wait(self) -> Any:
        """Wait for an item (the store is empty): return it, a ``Final``, ``EOF`` or ``RETIRE``."""
        if self.size:
            return self.take()
        if self.closed:
            if self.finals:
                return self._take_finals()
            return EOF
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.getters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if not fut.done():
                with contextlib.suppress(ValueError):
                    self.getters.remove(fut)
            elif not fut.cancelled():
                # handed an item, then cancelled before resuming: give the item back
                got = fut.result()
                if got.__class__ is Final:
                    self.finals.extendleft(reversed(got.values))
                elif not isinstance(got, _Signal):
                    self._give_back(got)
            raise

    def _give_back(self, item: Any) -> None:
        getters = self.getters
        while getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(item)
                return
        (self._push_front or self._push)(item)
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
        """No more items will come: waiting getters receive the finals, then ``EOF``."""
        self.closed = True
        getters = self.getters
        while getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(self._take_finals() if self.finals else EOF)

    def _take_finals(self) -> Final:
        final = Final(list(self.finals))
        self.finals.clear()
        return final

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

    def drain_items(self) -> list[Any]:
        """Remove and return every stored item (finals included, last), unnumbered."""
        out = []
        while self.size:
            out.append(self._pop())
            self.size -= 1
        if self.sequenced:
            out = [item for _, item in out]
        self.times.clear()
        if self.finals:
            out.extend(self.finals)
            self.finals.clear()
        return out

    def add_final(self, value: Any) -> None:
        """Queue ``value`` to go out after every stored item, once the channel is closed.

        Its producer is still running, so the channel is not closed yet.
        """
        self.finals.append(value)

    def oldest_time(self) -> float | None:
        """The enqueue time of the oldest stored item."""
        return self.times[0] if self.times else None
