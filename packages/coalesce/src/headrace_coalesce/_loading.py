"""The machinery behind ``Loader``: entries, batches, their runner tasks and resolution.

Every key has an *entry*. A pending entry holds the private futures of the callers waiting
for it (a caller's cancellation cancels only its own future, so a shared load is never
cancelled by one of its waiters: the effect of awaiting it through ``shield``, without a
shield per waiter); a resolved entry holds the value, and a cache hit on it returns at
once, without a task or a future. Each batch is run by a task of its own, started by the
first load of the window (the task's first step is one loop hop later: the window), so no
waiter's cancellation cancels a load that others wait for; when every waiter is gone, the
task is cancelled and nothing of the batch is cached.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

from headrace_coalesce._lane import (
    DONE,
    OPEN,
    RUNNING,
    BatchBase,
    Lane,
    Options,
    admit,
    filled,
    finish,
)
from headrace_coalesce._lane import start as start_window
from headrace_coalesce._routing import BatchRoutingError, as_error, is_sequence, lookup
from headrace_coalesce._stats import _Recorder
from headrace_core import PerLoop

__all__ = ["Entry", "LoadBatch", "LoaderMachinery", "cancelling"]


class Entry:
    """One key: pending (``waiters`` is a list) or resolved (``waiters`` is None)."""

    __slots__ = ("batch", "cached", "ck", "error", "key", "loop", "value", "waiters")

    def __init__(self, key: Any, ck: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.key = key
        self.ck = ck
        self.loop = loop
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters: list[asyncio.Future[Any]] | None = []
        self.batch: LoadBatch | None = None
        self.cached = False


def _alive(entry: Entry) -> bool:
    waiters = entry.waiters
    return waiters is not None and any(not w.done() for w in waiters)


class LoadBatch(BatchBase):
    __slots__ = ("dead", "entries", "index", "runner")

    def __init__(self, lane: Lane, dedupe: bool) -> None:
        self.lane = lane
        self.state = OPEN
        self.expired = False
        self.granted = False
        self.queued = False
        self.wake: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.entries: list[Entry] = []
        self.index: dict[Hashable, Entry] | None = {} if dedupe else None
        self.dead = 0
        self.runner: asyncio.Task[None] | None = None


class LoaderMachinery:
    """Everything of ``Loader`` except its public methods (state set by ``Loader``)."""

    __slots__ = (
        "_cache",
        "_cache_errors",
        "_caching",
        "_fn",
        "_keyfn",
        "_last",
        "_name",
        "_options",
        "_per_loop",
        "_rec",
        "_runners",
    )

    _cache: dict[Hashable, Entry]
    _cache_errors: bool
    _caching: bool
    _fn: Callable[[list[Any]], Awaitable[Any]]
    _keyfn: Callable[[Any], Hashable] | None
    _last: tuple[weakref.ReferenceType[asyncio.AbstractEventLoop], Lane] | None
    _name: str
    _options: Options
    _per_loop: PerLoop[Lane]
    _rec: _Recorder
    _runners: set[asyncio.Task[None]]

    def _hit(self, ck: Any, loop: asyncio.AbstractEventLoop) -> Entry | None:
        try:
            entry = self._cache.get(ck)
        except TypeError:  # unhashable key: never cached
            return None
        if entry is None or entry.waiters is None or entry.loop is loop:
            return entry
        other = entry.loop
        if other is not None and other.is_running() and not other.is_closed():
            raise RuntimeError(
                f"{self._name} has a load pending in an event loop running in another "
                "thread; use one Loader per loop (or per thread)"
            )
        self._evict(entry)  # left behind by a loop that is gone
        return None

    def _enqueue(
        self, key: Any, ck: Any, loop: asyncio.AbstractEventLoop
    ) -> tuple[Entry, asyncio.Future[Any], LoadBatch | None]:
        """Add a missed key to the open batch; return its entry, a future, a new batch."""
        last = self._last  # one read: another thread may replace it meanwhile
        if last is not None and last[0]() is loop:
            lane = last[1]
        else:
            lane = self._per_loop.get(loop)
            self._last = (weakref.ref(loop), lane)
        batch: LoadBatch | None = lane.open
        fut: asyncio.Future[Any] = loop.create_future()
        if batch is not None and batch.index is not None:  # cache=False: dedupe per batch
            try:
                same = batch.index.get(ck)
            except TypeError:
                same = None
            if same is not None:
                self._rec.deduplicated.value += 1
                same.waiters.append(fut)  # type: ignore[union-attr]
                return same, fut, None
        entry = Entry(key, ck, loop)
        entry.waiters.append(fut)  # type: ignore[union-attr]
        if self._caching:
            try:
                self._cache[ck] = entry
                entry.cached = True
            except TypeError:
                pass
        created = None
        if batch is None:
            batch = created = LoadBatch(lane, not self._caching)
            start_window(batch, loop)
        entry.batch = batch
        batch.entries.append(entry)
        if batch.index is not None:
            try:  # noqa: SIM105 - the hot path of cache=False; suppress() costs more
                batch.index[ck] = entry
            except TypeError:
                pass
        if len(batch.entries) == self._options.max_size:
            filled(batch)
        return entry, fut, created

    def _waiter_cancelled(self, entry: Entry, fut: asyncio.Future[Any]) -> None:
        self._rec.cancelled.value += 1
        if fut.cancelled():
            batch = entry.batch
            if batch is not None:
                batch.dead += 1
                runner = batch.runner
                if (
                    runner is not None
                    and batch.state == RUNNING
                    and not any(_alive(e) for e in batch.entries)
                ):
                    runner.cancel()  # nobody waits for this load any more
        elif fut.done():
            fut.exception()  # retrieved: the caller is gone

    def _abandon(self, waiting: Iterable[tuple[int, Entry, asyncio.Future[Any]]]) -> None:
        """Callers stopped waiting: cancel their futures, stop a task nobody needs."""
        for _, entry, fut in waiting:
            if fut.done():
                if not fut.cancelled():
                    fut.exception()  # retrieved: the caller is gone
                continue
            fut.cancel()
            batch = entry.batch
            if batch is not None:
                batch.dead += 1
                runner = batch.runner
                if (
                    runner is not None
                    and batch.state == RUNNING
                    and not any(_alive(e) for e in batch.entries)
                ):
                    runner.cancel()  # nobody waits for this load any more

    def _start_runner(self, batch: LoadBatch, loop: asyncio.AbstractEventLoop) -> None:
        """Run ``batch`` in its own task, so no waiter's cancellation cancels the load."""
        task = loop.create_task(self._runner(batch, loop))
        batch.runner = task
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    async def _runner(self, batch: LoadBatch, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if batch.state == OPEN:
                if not self._options.max_wait:
                    # this task's first step is one hop after the first load: the window
                    batch.expired = True
                await admit(batch, loop)
            await self._run(batch)
        except asyncio.CancelledError:
            if batch.state != DONE:
                self._drop(batch)
            raise
        finally:
            batch.runner = None

    async def _run(self, batch: LoadBatch) -> None:
        """Call ``load_fn`` for the live keys of ``batch`` and resolve them."""
        # a cancelled waiter's future is done at once (its task may not have run yet)
        live = []
        for entry in batch.entries:
            waiters = entry.waiters
            if waiters is not None:
                for w in waiters:
                    if not w.done():
                        live.append(entry)
                        break
                else:
                    self._forget(entry)
        batch.entries = live
        if not live:
            self._drop(batch)
            return
        rec = self._rec
        size = len(live)
        rec.dispatched(size)
        try:
            result = await self._fn([entry.key for entry in live])
        except asyncio.CancelledError as exc:
            rec.in_flight.dec()
            if cancelling():
                raise
            self._fail(batch, exc)
            return
        except BaseException as exc:
            rec.in_flight.dec()
            self._fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        rec.in_flight.dec()
        try:
            sequence = is_sequence(result, size, self._name)
        except BatchRoutingError as error:
            self._fail(batch, error)
            return
        resolve = self._resolve
        if sequence:
            for entry, value in zip(live, result):  # noqa: B905 - length checked
                if isinstance(value, BaseException):
                    resolve(entry, value)
                    continue
                waiters = entry.waiters
                entry.waiters = None
                entry.batch = None
                entry.value = value
                for w in waiters:  # type: ignore[union-attr]
                    if not w.done():
                        w.set_result(value)
        else:
            for entry in live:
                resolve(entry, lookup(result, entry.ck))
        finish(batch)
        if rec.listening:
            rec.emit("completed", size)

    def _resolve(self, entry: Entry, value: Any) -> None:
        waiters = entry.waiters or ()
        entry.waiters = None
        entry.batch = None
        if isinstance(value, BaseException):
            error = entry.error = as_error(value)
            if not self._cache_errors:
                self._evict(entry)
            for w in waiters:
                if not w.done():
                    w.set_exception(error)
        else:
            entry.value = value
            for w in waiters:
                if not w.done():
                    w.set_result(value)

    def _fail(self, batch: LoadBatch, error: BaseException) -> None:
        self._rec.failed.value += 1
        cancel = isinstance(error, asyncio.CancelledError)
        carried = as_error(error)
        for entry in batch.entries:
            waiters = entry.waiters or ()
            self._forget(entry)
            for w in waiters:
                if not w.done():
                    if cancel:
                        w.cancel()
                    else:
                        w.set_exception(carried)
        finish(batch)
        if self._rec.listening:
            self._rec.emit("failed", len(batch.entries), error)

    def _drop(self, batch: LoadBatch) -> None:
        for entry in batch.entries:
            for w in entry.waiters or ():
                w.cancel()
            self._forget(entry)
        finish(batch)
        if self._rec.listening:
            self._rec.emit("dropped", len(batch.entries))

    def _forget(self, entry: Entry) -> None:
        """An entry that will never get a value: out of the cache, nobody waits."""
        self._evict(entry)
        entry.waiters = None
        entry.batch = None

    def _evict(self, entry: Entry) -> None:
        if entry.cached:
            entry.cached = False
            if self._cache.get(entry.ck) is entry:
                del self._cache[entry.ck]


def cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
