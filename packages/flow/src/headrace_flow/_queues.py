"""Queue factories for stage input queues (the engine's own channel is ``_channel``)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from headrace_core.lowlevel import check_int

__all__ = [
    "AsyncQueueInterface",
    "QueueFactory",
    "QueueLike",
    "fifo_queue",
    "lifo_queue",
    "priority_queue",
]


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


@runtime_checkable
class AsyncQueueInterface(Protocol):
    """flowrhythm's queue protocol, under its name: awaitable put/get and ``shutdown()``.

    What flowrhythm's queue factories return, and what its users check with
    ``isinstance(q, AsyncQueueInterface)``. The factories below return asyncio queues,
    which match it on Python 3.13+ (``asyncio.Queue.shutdown`` is new in 3.13, as
    flowrhythm itself requires). The engine needs only :class:`QueueLike`.
    """

    async def put(self, item: Any) -> None:
        """Store ``item``, waiting while the queue is full."""
        ...

    async def get(self) -> Any:
        """Remove and return the next item, waiting while the queue is empty."""
        ...

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse further puts (and with ``immediate``, drop what is stored)."""
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

    Raises:
        ConfigurationError: when ``maxsize`` is not an int >= 0.
    """
    return asyncio.Queue(check_int("maxsize", maxsize, ge=0))


def lifo_queue(maxsize: int = 1) -> asyncio.LifoQueue[Any]:
    """Last in, first out.

    Args:
        maxsize: the bound (``0`` = unbounded).

    Returns:
        An ``asyncio.LifoQueue``; inside a flow, the engine uses an equivalent store.

    Raises:
        ConfigurationError: when ``maxsize`` is not an int >= 0.
    """
    return asyncio.LifoQueue(check_int("maxsize", maxsize, ge=0))


def priority_queue(maxsize: int = 1) -> asyncio.PriorityQueue[Any]:
    """Smallest item first (items must be comparable, e.g. ``(priority, payload)``).

    Args:
        maxsize: the bound (``0`` = unbounded).

    Returns:
        An ``asyncio.PriorityQueue``; inside a flow, the engine uses an equivalent store.

    Raises:
        ConfigurationError: when ``maxsize`` is not an int >= 0.
    """
    return asyncio.PriorityQueue(check_int("maxsize", maxsize, ge=0))
