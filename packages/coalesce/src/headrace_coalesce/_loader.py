"""``Loader``: a DataLoader whose cache never keeps a cancelled load or a failed batch."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Generic, TypeVar, final

from headrace_coalesce._lane import Lane, Options, filled, require_async
from headrace_coalesce._loading import Entry, LoadBatch, LoaderMachinery
from headrace_coalesce._routing import as_error, describe
from headrace_coalesce._stats import CoalesceEvent, CoalesceStats, _Recorder
from headrace_core import ConfigurationError
from headrace_core.lowlevel import Lifecycle, PerLoop, being_cancelled, check_callable
from headrace_core.stats import Listener

__all__ = ["Loader"]

_get_running_loop = asyncio.get_running_loop
K = TypeVar("K")
V = TypeVar("V")


@final
class Loader(LoaderMachinery, Generic[K, V]):
    """Batch and cache loads of keys: ``await loader.load(key)`` from anywhere.

    Loads made in the same window become one ``load_fn(keys)`` call, which returns one
    value per key (a ``Sequence`` in the order of ``keys``, or a ``Mapping`` keyed by
    ``key(k)``); an exception instance in the results is raised in the callers of that
    key. The loader binds to no event loop at construction; batches are per loop.

    Args:
        load_fn: ``async def load_fn(keys: list[K])`` returning the values.
        max_size: most keys per ``load_fn`` call (``>= 1``); reaching it dispatches at once.
        max_wait: seconds (``>= 0``, loop clock) the window stays open after its first key;
            ``0`` means the loads of the same loop iteration.
        max_concurrent: most ``load_fn`` calls in flight per loop (``>= 1``).
        cache: remember values by key. Cancelled loads and whole-batch failures are never
            kept. With ``cache=False`` identical keys of one batch are still loaded once.
        cache_errors: also keep exception values returned for single keys.
        key: the cache key of a key (default: the key itself). Cache keys must be
            hashable: ``load``, ``load_many``, ``prime`` and ``clear`` raise ``TypeError``
            at the call for a key whose cache key is not.

    Raises:
        ConfigurationError: when an option is invalid (the message names it).
        TypeError: when ``load_fn`` is not an async function.
    """

    __slots__ = ()

    def __init__(
        self,
        load_fn: Callable[[list[K]], Awaitable[Sequence[V | BaseException] | Mapping[Any, V]]],
        *,
        max_size: int | None = None,
        max_wait: float = 0.0,
        max_concurrent: int | None = None,
        cache: bool = True,
        cache_errors: bool = False,
        key: Callable[[K], Hashable] | None = None,
    ) -> None:
        require_async("load_fn", load_fn)
        options = Options(max_size, max_wait, max_concurrent)
        for name, flag in (("cache", cache), ("cache_errors", cache_errors)):
            if not isinstance(flag, bool):
                raise ConfigurationError.argument_error(name, flag, "must be a bool")
        check_callable("key", key)
        self._fn = load_fn
        self._name = f"Loader({getattr(load_fn, '__qualname__', None) or describe(load_fn)})"
        self._options = options
        self._limit = -1 if options.max_size is None else options.max_size
        self._caching = cache
        self._cache_errors = cache_errors
        self._keyfn = key
        self._cache: dict[Hashable, Entry] = {}
        self._per_loop: PerLoop[Lane] = PerLoop(lambda: Lane(options))
        self._rec = _Recorder(self._name, "Loader")
        self._runners: set[asyncio.Task[None]] = set()
        self._last: tuple[weakref.ReferenceType[asyncio.AbstractEventLoop], Lane] | None = None
        self._life = Lifecycle(self._name)
        self._plain = not cache and key is None and max_size is None
        self._open: LoadBatch | None = None
        self._unfolded: set[LoadBatch] = set()

    # -- loading --------------------------------------------------------------------
    async def load(self, key: K) -> V:
        """Load one key (from the cache when it holds the key, else in the next batch).

        Args:
            key: the key.

        Returns:
            The value ``load_fn`` returned for ``key``.

        Raises:
            TypeError: when ``key`` (or what ``key=`` returns for it) is unhashable.
            BatchRoutingError: when ``load_fn`` returned a mis-shaped result.
            MissingResult: when a ``Mapping`` result lacks this key.
            Closed: when the loader is closed.
            Exception: what ``load_fn`` raised, or the exception value for this key.
        """
        if self._plain:  # the join of _enqueue, inlined (the hot path; see _plain)
            loop = _get_running_loop()
            batch = self._open
            if batch is not None and batch.loop is loop:
                keys = batch.keys
                pos = len(keys)
                try:
                    same = batch.index.setdefault(key, pos)  # type: ignore[union-attr]
                except BaseException as exc:
                    self._rec.calls.value += 1  # it joined nothing: it counts itself
                    if isinstance(exc, TypeError):
                        raise self._unhashable(key, key, exc) from exc
                    raise
                fut: asyncio.Future[Any] = batch.new_future()
                if same == pos:
                    keys.append(key)
                    batch.futs.append(fut)
                else:
                    self._rec.deduplicated.value += 1
                    batch.add_waiter(same, fut)
                try:
                    return await fut  # type: ignore[no-any-return]
                except asyncio.CancelledError:
                    self._waiter_cancelled(batch, fut)
                    raise
            self._rec.calls.value += 1
            ck: Any = key
        else:
            if self._life.closed:
                raise self._life.refuse()
            rec = self._rec
            rec.calls.value += 1
            keyfn = self._keyfn
            ck = key if keyfn is None else keyfn(key)
            if self._caching:
                try:
                    hit = self._cache.get(ck)
                except TypeError as exc:
                    raise self._unhashable(key, ck, exc) from exc
                if hit is not None:
                    if hit.batch is None:  # resolved: no future, no task, no suspension
                        rec.cache_hits.value += 1
                        error = hit.error
                        if error is not None:
                            raise error.with_traceback(None)
                        return hit.value  # type: ignore[no-any-return]
                    loop = _get_running_loop()
                    if hit.loop is not loop:
                        hit = self._hit(ck, loop)
                    if hit is not None and hit.batch is not None:
                        rec.cache_hits.value += 1
                        pending = hit.batch
                        shared: asyncio.Future[Any] = loop.create_future()
                        pending.add_waiter(hit.pos, shared)
                        try:
                            return await shared  # type: ignore[no-any-return]
                        except asyncio.CancelledError:
                            self._waiter_cancelled(pending, shared)
                            raise
            loop = _get_running_loop()
        batch, fut, created = self._enqueue(key, ck, loop)
        if created:
            self._start_runner(batch, loop)
        try:
            return await fut  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self._waiter_cancelled(batch, fut)
            raise

    async def load_many(self, keys: Iterable[K]) -> list[V]:
        """Load several keys at once (in as few batches as ``max_size`` allows).

        The keys are all registered, or none: when ``keys`` raises while it is read, or
        one key fails at the call (``key=`` raises, an unhashable key), nothing is loaded
        for this call and the error propagates.

        Args:
            keys: the keys; duplicates are loaded once.

        Returns:
            The values, in the order of ``keys``.

        Raises:
            TypeError: when a key (or what ``key=`` returns for it) is unhashable.
            Closed: when the loader is closed.
            Exception: the error of the first failed key (in the order of ``keys``), once
                every key has been answered; a ``KeyboardInterrupt`` or ``SystemExit`` of
                any key comes first.
        """
        if self._life.closed:
            raise self._life.refuse()
        keys = list(keys)
        rec = self._rec
        loop = asyncio.get_running_loop()
        keyfn = self._keyfn
        caching = self._caching
        out: list[Any] = [None] * len(keys)
        errors: dict[int, BaseException] = {}
        waiting: list[tuple[int, LoadBatch, asyncio.Future[Any]]] = []
        led: list[LoadBatch] = []
        try:
            for i, key in enumerate(keys):
                rec.calls.value += 1
                ck = key if keyfn is None else keyfn(key)
                if caching:
                    try:
                        hit = self._hit(ck, loop)
                    except TypeError as exc:
                        raise self._unhashable(key, ck, exc) from exc
                    if hit is not None:
                        rec.cache_hits.value += 1
                        pending = hit.batch
                        if pending is None:
                            if hit.error is not None:
                                errors[i] = hit.error.with_traceback(None)
                            else:
                                out[i] = hit.value
                            continue
                        fut: asyncio.Future[Any] = loop.create_future()
                        pending.add_waiter(hit.pos, fut)
                        waiting.append((i, pending, fut))
                        continue
                batch, fut, created = self._enqueue(key, ck, loop)
                waiting.append((i, batch, fut))
                if created:
                    led.append(batch)
        except BaseException:
            self._withdraw(waiting, led)
            raise
        for batch in led:
            self._start_runner(batch, loop)
        for n, (i, _, fut) in enumerate(waiting):
            try:
                out[i] = fut.result() if fut.done() else await fut
            except asyncio.CancelledError:
                # the caller's own cancellation (its future cancelled with it, or already
                # answered); otherwise a dropped load, or a CancelledError value: that key's
                if being_cancelled():
                    rec.cancelled.value += 1
                    self._abandon(waiting[n:])
                    raise
                errors[i] = asyncio.CancelledError()
            except BaseException as exc:
                errors[i] = exc
        if errors:
            order = sorted(errors)
            for i in order:  # an interrupt is never hidden behind another key's error
                if isinstance(errors[i], (KeyboardInterrupt, SystemExit)):
                    raise errors[i]
            raise errors[order[0]]
        return out

    # -- the cache ------------------------------------------------------------------
    def prime(self, key: K, value: V | BaseException, *, force: bool = False) -> None:
        """Put a value (or an exception to raise) in the cache for ``key``.

        Does nothing when ``key`` is already cached (pending or resolved) unless
        ``force=True``, which replaces the entry. Does nothing with ``cache=False``.

        Args:
            key: the key.
            value: its value, or an exception instance that ``load(key)`` will raise.
            force: replace an existing entry.

        Raises:
            TypeError: when ``key`` (or what ``key=`` returns for it) is unhashable.
        """
        ck = key if self._keyfn is None else self._keyfn(key)
        try:
            existing = self._cache.get(ck)
        except TypeError as exc:
            raise self._unhashable(key, ck, exc) from exc
        if not self._caching or (existing is not None and not force):
            return
        entry = Entry(ck, None, None, 0)
        if isinstance(value, BaseException):
            entry.error = as_error(value)
        else:
            entry.value = value
        entry.cached = True
        if existing is not None:
            existing.cached = False
        self._cache[ck] = entry

    def clear(self, key: K) -> None:
        """Forget ``key``; the next load calls ``load_fn`` again (pending waiters keep waiting).

        Args:
            key: the key.

        Raises:
            TypeError: when ``key`` (or what ``key=`` returns for it) is unhashable.
        """
        ck = key if self._keyfn is None else self._keyfn(key)
        try:
            hash(ck)  # an empty dict's pop() would not check it
            entry = self._cache.pop(ck, None)
        except TypeError as exc:
            raise self._unhashable(key, ck, exc) from exc
        if entry is not None:
            entry.cached = False

    def clear_all(self) -> None:
        """Forget every cached key."""
        for entry in self._cache.values():
            entry.cached = False
        self._cache.clear()

    # -- observability --------------------------------------------------------------
    def stats(self) -> CoalesceStats:
        """Return a frozen snapshot of the counters.

        Returns:
            The current :class:`CoalesceStats`.
        """
        snapshot = self._rec.snapshot()
        if self._unfolded:
            snapshot = replace(snapshot, calls=snapshot.calls + self._joined())
        return snapshot

    snapshot = stats

    def add_listener(self, callback: Listener[CoalesceEvent]) -> Callable[[], None]:
        """Call ``callback(event)`` after each batch transition (sync or async; isolated).

        Args:
            callback: receives a :class:`CoalesceEvent`.

        Returns:
            A callable that removes the listener.

        Raises:
            TypeError: when ``callback`` is not callable.
        """
        return self._rec.add_listener(callback)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: the loader refuses new loads."""
        return self._life.closed

    async def aclose(self) -> None:
        """Close the loader for good (the family's one ``aclose()``; idempotent).

        New ``load()`` and ``load_many()`` calls raise :class:`~headrace_core.Closed`.
        Keys already waiting in a window are not dropped: the window ends now and their
        batch is loaded. Returns once every ``load_fn`` call in flight has ended and its
        callers have their values, then once pending async listeners have ended (under a
        deadline, ``asyncio.timeout``, those still running are cancelled); the cache is
        cleared last. ``stats()`` and ``add_listener()`` keep working.
        """
        loop = asyncio.get_running_loop()
        self._plain = False  # the general path refuses new loads
        if self._life.close():
            for owner, lane in self._per_loop.items():
                if owner is loop and lane.open is not None:
                    filled(lane.open)
        while running := [
            task for task in self._runners if task.get_loop() is loop and not task.done()
        ]:
            await asyncio.wait(running)
        self._runners.difference_update([task for task in self._runners if task.done()])
        await self._rec.aclose()
        self._cache.clear()

    async def __aenter__(self) -> Loader[K, V]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{self._name} cached={len(self._cache)}>"
