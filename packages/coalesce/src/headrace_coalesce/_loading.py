"""The machinery behind ``Loader``: batches, cache entries, the batch tasks, resolution.

A batch holds the keys of one window side by side with the private futures of the callers
waiting for them (a caller's cancellation cancels only its own future, so a shared load is
never cancelled by one of its waiters: the effect of awaiting it through ``shield``,
without a shield per waiter). With a cache, each key also has an *entry*: pending while
its batch loads it, then resolved, and a cache hit on a resolved entry returns at once,
without a task or a future. Each batch is run by a task of its own, started by the first
load of the window (the task's first step is one loop hop later: the window), so no
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
    running,
)
from headrace_coalesce._lane import start as start_window
from headrace_coalesce._routing import as_error, is_sequence, lookup, unhashable
from headrace_coalesce._stats import EventKind, _Recorder, logging_events
from headrace_core.lowlevel import (
    Lifecycle,
    PerLoop,
    being_cancelled,
    first_step,
    future_maker,
    safe_repr,
    start_task,
)

__all__ = ["Entry", "LoadBatch", "LoaderMachinery"]

_logger = logging.getLogger("headrace.coalesce")


class Entry:
    """A cache record of one key: pending while ``batch`` is set, then resolved."""

    __slots__ = ("batch", "cached", "ck", "error", "loop", "pos", "value")

    def __init__(
        self,
        ck: Any,
        loop: asyncio.AbstractEventLoop | None,
        batch: LoadBatch | None,
        pos: int,
    ) -> None:
        self.ck = ck
        self.loop = loop
        self.batch = batch  # the batch loading it (None once resolved)
        self.pos = pos  # its position in that batch
        self.value: Any = None
        self.error: BaseException | None = None
        self.cached = False


class LoadBatch(BatchBase):
    """The keys of one window, kept side by side: one position per unique key.

    ``keys``, ``futs`` (the first waiter of each key) and, when caching, ``entries`` run
    in parallel; a key's further waiters (a duplicate load, a cache hit on the pending
    entry) are in ``more``, ``extra`` of them. ``gone`` counts the waiters whose
    cancellation was seen: when it reaches the number of waiters while the load runs,
    nobody wants the load any more. The loads that joined inline (``load()``'s hot path)
    do not count themselves: the batch adds them to the calls when its window ends.
    """

    __slots__ = (
        "cks",
        "entries",
        "extra",
        "futs",
        "gone",
        "index",
        "keys",
        "loop",
        "more",
        "new_future",
        "runner",
        "slow",
    )

    def __init__(
        self, lane: Lane, loop: asyncio.AbstractEventLoop, caching: bool, keyed: bool
    ) -> None:
        self.lane = lane
        self.loop = loop
        make = lane.new_future
        if make is None:
            make = lane.new_future = future_maker(loop)
        self.new_future = make
        self.state = OPEN
        self.expired = False
        self.granted = False
        self.queued = False
        self.wake: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.keys: list[Any] = []
        self.cks: list[Hashable] | None = [] if keyed else None  # key(k) when key= is set
        self.futs: list[asyncio.Future[Any]] = []
        self.more: dict[int, list[asyncio.Future[Any]]] | None = None
        self.entries: list[Entry] | None = [] if caching else None
        self.index: dict[Hashable, int] | None = None if caching else {}  # cache=False de-dup
        self.extra = 0
        self.slow = 0  # waiters whose call counted itself (every way in but load()'s inline join)
        self.gone = 0
        self.runner: asyncio.Task[None] | None = None

    def add_waiter(self, pos: int, fut: asyncio.Future[Any]) -> None:
        """One more caller waits for the key at ``pos``."""
        more = self.more
        if more is None:
            more = self.more = {}
        extra = more.get(pos)
        if extra is None:
            more[pos] = [fut]
        else:
            extra.append(fut)
        self.extra += 1

    def waiters(self, pos: int) -> list[asyncio.Future[Any]]:
        """Every caller's future for the key at ``pos``."""
        more = self.more
        extra = None if more is None else more.get(pos)
        return [self.futs[pos]] if extra is None else [self.futs[pos], *extra]

    def prune(self) -> list[Entry]:
        """Keep only the keys some caller still waits for; return the dropped cache entries.

        A cancelled caller's future is done at once, before its task runs again, so the
        futures are read here. Each dropped waiter was cancelled, and is counted in ``gone``
        once (by its task, now or later): ``gone`` gives that count back.
        """
        futs = self.futs
        more = self.more
        keep: list[int] = []
        for pos, fut in enumerate(futs):
            if not fut.done():
                keep.append(pos)
                continue
            extra = None if more is None else more.get(pos)
            if extra is not None and any(not w.done() for w in extra):
                keep.append(pos)
        if len(keep) == len(futs):
            return []
        alive = set(keep)
        dropped = len(futs) - len(keep)
        if more is not None:
            lost = sum(len(extra) for pos, extra in more.items() if pos not in alive)
            self.extra -= lost
            dropped += lost
            self.more = {new: more[old] for new, old in enumerate(keep) if old in more} or None
        self.gone -= dropped
        keys = self.keys
        self.keys = [keys[pos] for pos in keep]
        self.futs = [futs[pos] for pos in keep]
        cks = self.cks
        if cks is not None:
            self.cks = [cks[pos] for pos in keep]
        entries = self.entries
        if entries is None:
            return []
        self.entries = [entries[pos] for pos in keep]
        for new, entry in enumerate(self.entries):
            entry.pos = new
        return [entry for pos, entry in enumerate(entries) if pos not in alive]


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
        "_open",
        "_options",
        "_per_loop",
        "_plain",
        "_rec",
        "_runners",
        "_unfolded",
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
    _open: LoadBatch | None  # with _plain: the batch load() joins while it is OPEN
    _options: Options
    _per_loop: PerLoop[Lane]
    _plain: bool  # cache=False, no key=, no max_size, not closed: load() joins inline
    _rec: _Recorder
    _runners: set[asyncio.Task[None]]
    _unfolded: set[LoadBatch]  # batches whose inline joins are not counted yet

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
        if entry is None or entry.batch is None or entry.loop is loop:
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
    ) -> tuple[LoadBatch, asyncio.Future[Any], bool]:
        """Add a missed key to the open batch: its batch, a future, and whether it is new.

        A new batch's runner is not started yet (the caller starts it).

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
        created = batch is None
        if batch is None:
            batch = LoadBatch(lane, loop, self._caching, self._keyfn is not None)  # not started
        fut: asyncio.Future[Any] = batch.new_future()
        keys = batch.keys
        pos = len(keys)
        # Everything that hashes ck (and may raise) comes before the first state change.
        index = batch.index
        try:
            if index is not None:  # cache=False: identical keys of a batch load once
                same = index.setdefault(ck, pos)
                if same != pos:
                    self._rec.deduplicated.value += 1
                    batch.add_waiter(same, fut)
                    batch.slow += 1
                    return batch, fut, False
            else:
                entry = Entry(ck, loop, batch, pos)
                self._cache[ck] = entry
                entry.cached = True
                batch.entries.append(entry)  # type: ignore[union-attr]
        except TypeError as exc:
            raise self._unhashable(key, ck, exc) from exc
        keys.append(key)
        batch.futs.append(fut)
        batch.slow += 1
        if batch.cks is not None:
            batch.cks.append(ck)
        if created:
            start_window(batch, loop)
            if self._plain:
                self._open = batch  # where load() joins inline, while it is OPEN
                self._unfolded.add(batch)  # its inline joins count when its window ends
        if pos + 1 == self._limit:
            filled(batch)
        return batch, fut, created

    def _withdraw(
        self,
        waiting: Iterable[tuple[int, LoadBatch, asyncio.Future[Any]]],
        led: Iterable[LoadBatch],
    ) -> None:
        """Undo the keys a ``load_many`` registered before one of its keys failed."""
        for _, batch, fut in waiting:
            fut.cancel()  # a batch led by another call skips a key nobody waits for
            batch.gone += 1
        for batch in led:  # not started yet: only this call's keys are in it
            self._fold(batch)
            for entry in batch.entries or ():
                self._forget(entry)
            finish(batch)
            if self._open is batch:
                self._open = None

    def _waiter_cancelled(self, batch: LoadBatch, fut: asyncio.Future[Any]) -> None:
        self._rec.cancelled.value += 1
        if fut.cancelled():
            self._gone(batch)
        elif fut.done():
            fut.exception()  # retrieved: the caller is gone

    def _gone(self, batch: LoadBatch) -> None:
        """One waiter of ``batch`` was cancelled: stop the load once nobody waits."""
        batch.gone += 1
        runner = batch.runner
        if (
            runner is not None
            and batch.state == RUNNING
            and batch.gone >= len(batch.futs) + batch.extra
        ):
            runner.cancel()  # nobody waits for this load any more
            for entry in batch.entries or ():
                self._evict(entry)  # a later load of its keys starts a new batch

    def _abandon(self, waiting: Iterable[tuple[int, LoadBatch, asyncio.Future[Any]]]) -> None:
        """Callers stopped waiting: cancel their futures, stop a task nobody needs."""
        for _, batch, fut in waiting:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: the caller is gone
                continue
            # cancelled now, or with the caller's task (the future it awaited); a future a
            # dropped batch cancelled counts too, harmlessly: that batch is done
            self._gone(batch)

    def _start_runner(self, batch: LoadBatch, loop: asyncio.AbstractEventLoop) -> None:
        """Run ``batch`` in its own task, so no waiter's cancellation cancels the load.

        ``start_task``: a task cancelled from outside before its first step (a sweep over
        ``asyncio.all_tasks()``, say) still ends its batch and answers its callers.
        """
        task = start_task(loop, self._runner(batch, loop))
        batch.runner = task
        self._runners.add(task)  # the task leaves the set when it ends (see _runner)

    async def _runner(self, batch: LoadBatch, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the window, call ``load_fn`` for the live keys, resolve them.

        Whatever ``load_fn`` raises (``KeyboardInterrupt`` and ``SystemExit`` included)
        or returns reaches the callers waiting for the batch; nothing escapes this task
        but its own cancellation (nobody waits any more, or the loop is shutting down).
        """
        try:
            await first_step()  # where start_task leaves it: inside the try
            if batch.state == OPEN:
                options = self._options
                if not options.max_wait:
                    # this task's first step is one hop after the first load: the window
                    batch.expired = True
                if batch.expired and options.max_concurrent is None:
                    running(batch)  # what admit() does when nothing is left to wait for
                else:
                    await admit(batch, loop)
            if self._open is batch:
                self._open = None  # no more joins
            keys = self._dispatch(batch)
            if keys is None:
                return
            rec = self._rec
            try:
                result = await self._fn(keys)
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
            self._route(batch, result)
        except asyncio.CancelledError:
            if batch.state != DONE:
                self._drop(batch)
            raise
        finally:
            self._runners.discard(batch.runner)
            batch.runner = None
            if self._open is batch:
                self._open = None

    def _dispatch(self, batch: LoadBatch) -> list[Any] | None:
        """The keys to load (a copy), or None when the batch ends here.

        It ends here when nobody waits any more, or when a listener of the dispatch
        raised ``KeyboardInterrupt``/``SystemExit`` (the callers get it).
        """
        self._fold(batch)
        for fut in batch.futs:
            if fut.done():  # a caller was cancelled: load only what somebody waits for
                for entry in batch.prune():
                    self._forget(entry)
                break
        keys = batch.keys
        if not keys:
            self._drop(batch)
            return None
        rec = self._rec
        size = len(keys)
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
                return None
        return keys[:]

    def _route(self, batch: LoadBatch, result: Any) -> None:
        """Give every caller its value from ``result``, or the error it makes."""
        keys = batch.keys
        size = len(keys)
        try:
            exact = (type(result) is list or type(result) is tuple) and len(result) == size
            sequence = exact or is_sequence(result, size, self._name)
            # zip only a list or a tuple: another sequence may iterate otherwise than it indexes
            plain = exact and batch.more is None and batch.entries is None
            if plain:  # the common case: one caller per key, no cache, no check per caller
                try:
                    for fut, value in zip(batch.futs, result):  # noqa: B905 - length checked
                        if isinstance(value, BaseException):
                            fut.set_exception(as_error(value))
                        else:
                            fut.set_result(value)
                except asyncio.InvalidStateError:  # a caller was cancelled meanwhile:
                    plain = False  # _resolve skips the callers already answered or gone
            if not plain:
                resolve = self._resolve
                if sequence:
                    for pos in range(size):
                        resolve(batch, pos, result[pos])
                else:
                    mapping: Any = result  # a Mapping when not a sequence (lookup() checks)
                    cks = keys if batch.cks is None else batch.cks
                    for pos in range(size):
                        resolve(batch, pos, lookup(mapping, cks[pos]))
        except BaseException as exc:
            # a mis-shaped result (BatchRoutingError), or a result whose __len__,
            # __getitem__ or __iter__ failed: every key not yet answered gets the error
            self._fail(batch, exc)
            return
        finish(batch)
        if self._rec.listening or logging_events():
            self._emit("completed", size)

    def _resolve(self, batch: LoadBatch, pos: int, value: Any) -> None:
        """Answer the callers of the key at ``pos`` with ``value`` (and cache it)."""
        entries = batch.entries
        entry = None if entries is None else entries[pos]
        if isinstance(value, BaseException):
            value = as_error(value)
            if entry is not None:
                entry.batch = None
                entry.error = value
                if not self._cache_errors:
                    self._evict(entry)
            for w in batch.waiters(pos):
                if not w.done():
                    w.set_exception(value)
        else:
            if entry is not None:
                entry.batch = None
                entry.value = value
            for w in batch.waiters(pos):
                if not w.done():
                    w.set_result(value)

    def _fail(self, batch: LoadBatch, error: BaseException) -> None:
        """The load failed: every caller still waiting gets ``error``; nothing is cached."""
        self._rec.failed.value += 1
        self._reject(batch, error)
        if self._rec.listening or logging_events():
            self._emit("failed", len(batch.keys), error)

    def _reject(self, batch: LoadBatch, error: BaseException) -> None:
        cancel = isinstance(error, asyncio.CancelledError)
        carried = as_error(error)
        delivered = False
        for entry in batch.entries or ():
            self._forget(entry)
        for pos in range(len(batch.futs)):
            for w in batch.waiters(pos):
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

    def _fold(self, batch: LoadBatch) -> None:
        """Count the loads that joined ``batch`` inline (its window is over)."""
        unfolded = self._unfolded
        if batch in unfolded:
            unfolded.remove(batch)
            self._rec.calls.value += len(batch.futs) + batch.extra - batch.slow

    def _joined(self) -> int:
        """The loads that joined inline the batches whose window is not over yet."""
        return sum(len(b.futs) + b.extra - b.slow for b in list(self._unfolded))

    def _drop(self, batch: LoadBatch) -> None:
        self._fold(batch)
        for entry in batch.entries or ():
            self._forget(entry)
        for pos in range(len(batch.futs)):
            for w in batch.waiters(pos):
                w.cancel()
        finish(batch)
        if self._rec.listening or logging_events():
            self._emit("dropped", len(batch.keys))

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
        entry.batch = None

    def _evict(self, entry: Entry) -> None:
        if entry.cached:
            entry.cached = False
            try:
                if self._cache.get(entry.ck) is entry:
                    del self._cache[entry.ck]
            except Exception as exc:
                # The key's __hash__ or __eq__ fails since it was cached: it can be neither
                # removed nor found again. A hit on it, if any, raises this.
                entry.batch = None
                entry.error = TypeError(
                    f"the cache key {safe_repr(entry.ck)} can no longer be hashed or "
                    f"compared ({type(exc).__name__}); it was dropped"
                )
