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
import logging
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
from headrace_coalesce._routing import as_error, is_sequence, lookup, unhashable
from headrace_coalesce._stats import EventKind, _Recorder, logging_events
from headrace_core.lowlevel import Lifecycle, PerLoop, being_cancelled

__all__ = ["Entry", "LoadBatch", "LoaderMachinery"]

_logger = logging.getLogger("headrace.coalesce")


class Entry:
    """One key: pending (``waiters`` is a list) or resolved (``waiters`` is None)."""

    __slots__ = ("batch", "cached", "ck", "error", "key", "loop", "value", "waiters")

    def __init__(
        self,
        key: Any,
        ck: Any,
        loop: asyncio.AbstractEventLoop | None,
        batch: LoadBatch | None,
        waiters: list[asyncio.Future[Any]] | None,
    ) -> None:
        self.key = key
        self.ck = ck
        self.loop = loop
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters = waiters
        self.batch = batch
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
        "_life",
        "_limit",
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
    _limit: int  # max_size (keys per batch), or -1
    _life: Lifecycle
    _name: str
    _options: Options
    _per_loop: PerLoop[Lane]
    _rec: _Recorder
    _runners: set[asyncio.Task[None]]

    def _unhashable(self, key: Any, ck: Any, cause: TypeError) -> TypeError:
        """The error for a key whose cache key cannot be hashed (raised at the call)."""
        if self._keyfn is None:
            message = (
                f"{self._name}: a key of type {type(key).__qualname__} is unhashable, so it "
                "can be neither cached nor de-duplicated; pass key= to Loader to map each "
                "key to a hashable cache key (for example key=tuple)"
            )
        else:
            message = (
                f"{self._name}: key= returned a value of type {type(ck).__qualname__} for a "
                f"key of type {type(key).__qualname__}; key= must return a hashable cache key"
            )
        return unhashable(message, cause)

    def _hit(self, ck: Any, loop: asyncio.AbstractEventLoop) -> Entry | None:
        """The cache entry of ``ck`` usable in ``loop`` (raises TypeError if unhashable)."""
        entry = self._cache.get(ck)
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
        """Add a missed key to the open batch; return its entry, a future, a new batch.

        Raises:
            TypeError: when ``ck`` is unhashable; nothing is registered then.
        """
        last = self._last  # one read: another thread may replace it meanwhile
        if last is not None and last[0]() is loop:
            lane = last[1]
        else:
            lane = self._per_loop.get(loop)
            self._last = (weakref.ref(loop), lane)
        batch: LoadBatch | None = lane.open
        fut: asyncio.Future[Any] = loop.create_future()
        created = None
        # Everything that hashes ck (and may raise) comes before the first state change.
        try:
            if batch is None:
                batch = created = LoadBatch(lane, not self._caching)  # not started yet
            elif batch.index is not None:  # cache=False: identical keys of a batch load once
                same = batch.index.get(ck)
                if same is not None:
                    self._rec.deduplicated.value += 1
                    same.waiters.append(fut)  # type: ignore[union-attr]
                    return same, fut, None
            entry = Entry(key, ck, loop, batch, [fut])
            if batch.index is None:  # caching
                self._cache[ck] = entry
                entry.cached = True
            else:
                batch.index[ck] = entry
        except TypeError as exc:
            raise self._unhashable(key, ck, exc) from exc
        if created is not None:
            start_window(batch, loop)
        entries = batch.entries
        entries.append(entry)
        if len(entries) == self._limit:
            filled(batch)
        return entry, fut, created

    def _withdraw(
        self,
        waiting: Iterable[tuple[int, Entry, asyncio.Future[Any]]],
        led: Iterable[LoadBatch],
    ) -> None:
        """Undo the keys a ``load_many`` registered before one of its keys failed."""
        for _, _, fut in waiting:
            fut.cancel()  # a batch led by another call skips a key nobody waits for
        for batch in led:  # not started yet: only this call's keys are in it
            for entry in batch.entries:
                self._forget(entry)
            finish(batch)

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
        """Call ``load_fn`` for the live keys of ``batch`` and resolve them.

        Whatever ``load_fn`` raises (``KeyboardInterrupt`` and ``SystemExit`` included)
        or returns reaches the callers waiting for the batch; nothing escapes this task.
        """
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
        if rec.listening or logging_events():
            try:
                rec.emit("dispatched", size)
            except BaseException as exc:
                # a listener's KeyboardInterrupt/SystemExit: the load is not made, and the
                # callers waiting for it get the interrupt (this task has no caller)
                rec.undispatched(size)
                self._reject(batch, exc)
                self._emit("dropped", size)
                return
        try:
            result = await self._fn([entry.key for entry in live])
        except asyncio.CancelledError as exc:
            rec.settled += 1
            if being_cancelled():
                raise
            self._fail(batch, exc)
            return
        except BaseException as exc:
            rec.settled += 1
            self._fail(batch, exc)
            return
        rec.settled += 1
        resolve = self._resolve
        try:
            if type(result) is list and len(result) == size:
                sequence = True
            else:
                sequence = is_sequence(result, size, self._name)
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
                mapping: Any = result  # a Mapping when not a sequence (lookup() checks)
                for entry in live:
                    resolve(entry, lookup(mapping, entry.ck))
        except BaseException as exc:
            # a mis-shaped result (BatchRoutingError), or a result whose __len__,
            # __getitem__ or __iter__ failed: every key not yet answered gets the error
            self._fail(batch, exc)
            return
        finish(batch)
        if rec.listening or logging_events():
            self._emit("completed", size)

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
        """The load failed: every caller still waiting gets ``error``; nothing is cached."""
        self._rec.failed.value += 1
        self._reject(batch, error)
        if self._rec.listening or logging_events():
            self._emit("failed", len(batch.entries), error)

    def _reject(self, batch: LoadBatch, error: BaseException) -> None:
        cancel = isinstance(error, asyncio.CancelledError)
        carried = as_error(error)
        delivered = False
        for entry in batch.entries:
            waiters = entry.waiters or ()
            self._forget(entry)
            for w in waiters:
                if not w.done():
                    delivered = True
                    if cancel:
                        w.cancel()
                    else:
                        w.set_exception(carried)
        finish(batch)
        if not delivered and not isinstance(error, (Exception, asyncio.CancelledError)):
            _logger.error(
                "%s: %s with no caller left to reach",
                self._name,
                type(error).__name__,
                exc_info=error,
            )

    def _drop(self, batch: LoadBatch) -> None:
        for entry in batch.entries:
            for w in entry.waiters or ():
                w.cancel()
            self._forget(entry)
        finish(batch)
        if self._rec.listening or logging_events():
            self._emit("dropped", len(batch.entries))

    def _emit(self, kind: EventKind, size: int, error: BaseException | None = None) -> None:
        """Fire an event from a batch's own task, which has no caller to reach."""
        try:
            self._rec.emit(kind, size, error)
        except BaseException as exc:  # a sync listener's KeyboardInterrupt/SystemExit
            _logger.error(
                "a listener of %s raised %s on a %r event; every caller of the batch was "
                "already answered, so it is logged here",
                self._name,
                type(exc).__name__,
                kind,
                exc_info=exc,
            )

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
