"""The batching window shared by ``@batch`` and ``Loader``: time, size and concurrency.

A *lane* is where calls that may share a bulk call meet (one per loop, per instance and
per group). It holds the batch that is still accepting items, the number of bulk calls
holding a concurrency slot, and the batches waiting for one. A batch's leader awaits
:func:`admit`, which returns once the window is over and a slot is held; if the leader
is cancelled meanwhile, the next leader calls :func:`admit` again and resumes where the
batch stands (window already over, slot already granted).
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Callable, Generator, Hashable
from typing import Any, Final

from headrace_core.lowlevel import check_int, check_number, is_async_callable, safe_repr

OPEN: Final = 0  # accepting items
RUNNING: Final = 1  # dispatched: no more items
DONE: Final = 2  # routed, failed or dropped


class Options:
    """Validated window options (shared by every lane of one batcher)."""

    __slots__ = ("max_concurrent", "max_size", "max_wait")

    def __init__(self, max_size: object, max_wait: object, max_concurrent: object) -> None:
        self.max_size = None if max_size is None else check_int("max_size", max_size, ge=1)
        self.max_wait = check_number("max_wait", max_wait, ge=0)
        self.max_concurrent = (
            None if max_concurrent is None else check_int("max_concurrent", max_concurrent, ge=1)
        )


def require_async(argument: str, fn: object) -> None:
    """Raise ``TypeError`` unless ``fn`` is an async callable.

    Raises:
        TypeError: when ``fn`` is not callable, or calling it does not return a coroutine.
    """
    if not is_async_callable(fn):
        raise TypeError(f"{argument} must be an async function (async def), got {safe_repr(fn)}")


class BatchBase:
    """What the window needs to know about a batch."""

    __slots__ = ("expired", "granted", "lane", "queued", "state", "timer", "wake")

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.state = OPEN
        self.expired = False
        self.granted = False
        self.queued = False
        self.wake: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


class Lane:
    """Where calls meet; see the module docstring."""

    __slots__ = ("in_flight", "key", "new_future", "open", "options", "owner", "queue", "registry")

    def __init__(
        self,
        options: Options,
        registry: dict[Hashable, Lane] | None = None,
        key: Hashable = None,
        owner: object = None,
    ) -> None:
        self.options = options
        self.open: Any = None  # the batch accepting items (a BatchBase subclass), if any
        self.in_flight = 0  # batches holding a concurrency slot
        self.queue: deque[BatchBase] = deque()
        self.registry = registry  # None for a loop's default lane (never discarded)
        self.key = key
        self.owner = owner  # keeps a bound instance alive while its lane exists
        # its loop's create_future (see future_maker), once a batch of the lane asked for it
        self.new_future: Callable[[], asyncio.Future[Any]] | None = None


@types.coroutine
def sleep0() -> Generator[None, None, None]:
    """One hop through the event loop (what ``asyncio.sleep(0)`` does, one frame less)."""
    yield


def start(batch: BatchBase, loop: asyncio.AbstractEventLoop) -> None:
    """Make ``batch`` the lane's open batch and arm its ``max_wait`` timer."""
    lane = batch.lane
    lane.open = batch
    wait = lane.options.max_wait
    if wait:
        batch.timer = loop.call_at(loop.time() + wait, _expire, batch)


def _expire(batch: BatchBase) -> None:
    batch.timer = None
    if not batch.expired:
        batch.expired = True
        wake = batch.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


def filled(batch: BatchBase) -> None:
    """``batch`` reached ``max_size``: close it to new items and end its window now."""
    lane = batch.lane
    if lane.open is batch:
        lane.open = None
    if not batch.expired:
        batch.expired = True
        timer = batch.timer
        if timer is not None:
            timer.cancel()
            batch.timer = None
        wake = batch.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


async def admit(batch: BatchBase, loop: asyncio.AbstractEventLoop) -> None:
    """Wait until the window of ``batch`` is over and it holds a concurrency slot.

    Raises:
        asyncio.CancelledError: when the waiting leader is cancelled; the batch keeps its
            place, so the next leader can call ``admit`` again.
    """
    lane = batch.lane
    options = lane.options
    if not batch.expired:
        if options.max_wait:
            wake = batch.wake = loop.create_future()
            await wake
        else:
            await sleep0()
            batch.expired = True
    limit = options.max_concurrent
    if limit is not None and not batch.granted:
        if lane.in_flight < limit and not lane.queue:
            grant(batch)
        else:
            if not batch.queued:
                batch.queued = True
                lane.queue.append(batch)
            wake = batch.wake = loop.create_future()
            await wake
    running(batch)


def running(batch: BatchBase) -> None:
    """The window of ``batch`` is over and it holds a slot (if any): it runs now."""
    lane = batch.lane
    if lane.open is batch:
        lane.open = None
    batch.state = RUNNING
    discard_if_idle(lane)


def grant(batch: BatchBase) -> None:
    """Give ``batch`` a concurrency slot and wake its leader."""
    batch.granted = True
    batch.lane.in_flight += 1
    wake = batch.wake
    if wake is not None and not wake.done():
        wake.set_result(None)


def finish(batch: BatchBase) -> None:
    """``batch`` is done (routed, failed or dropped): free its slot and its lane."""
    batch.state = DONE
    lane = batch.lane
    if batch.timer is None and not batch.queued and not batch.granted:  # the common case
        if lane.open is batch:
            lane.open = None
        if lane.registry is not None:
            discard_if_idle(lane)
        return
    if batch.queued:
        batch.queued = False
        lane.queue.remove(batch)
    if lane.open is batch:
        lane.open = None
    timer = batch.timer
    if timer is not None:
        timer.cancel()
        batch.timer = None
    if batch.granted:
        batch.granted = False
        lane.in_flight -= 1
        limit = lane.options.max_concurrent
        queue = lane.queue
        while queue and (limit is None or lane.in_flight < limit):
            waiting = queue.popleft()
            waiting.queued = False
            if waiting.state != DONE:
                grant(waiting)
    discard_if_idle(lane)


def discard_if_idle(lane: Lane) -> None:
    """Forget a per-instance or per-group lane once nothing uses it."""
    registry = lane.registry
    if (
        registry is not None
        and lane.open is None
        and not lane.in_flight
        and not lane.queue
        and registry.get(lane.key) is lane
    ):
        del registry[lane.key]
