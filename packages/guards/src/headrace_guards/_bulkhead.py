"""The bulkhead: a FIFO concurrency limit, optionally shared by name, with per-loop slots."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast, final

from headrace_core import BulkheadFull, ConfigurationError
from headrace_core.lowlevel import Clock, PerLoop, check_int, safe_repr, within
from headrace_core.lowlevel import check_optional_number as _check_optional_number
from headrace_core.store import BulkheadStore
from headrace_guards._common import (
    Background,
    GuardBase,
    GuardEvent,
    check_clock,
    check_store,
    event_logger,
    log_rejection,
    now_of,
    raise_if_not_async,
)

P = ParamSpec("P")
T = TypeVar("T")

# Lease time-to-live of a store-backed slot, and the polling schedule while waiting for one.
_LEASE_TTL = 30.0
_POLL_FIRST = 0.005
_POLL_MAX = 0.25


@final
@dataclass(frozen=True, slots=True)
class BulkheadSnapshot:
    """The state and counters of a :class:`Bulkhead` (on the running loop).

    With a store, ``in_flight`` and ``waiting`` count this process's callers on this
    loop (the store's ``in_flight(name)`` counts every process's leases).

    Attributes:
        name: the bulkhead's name.
        limit: the current limit.
        in_flight: slots held now.
        waiting: callers queued now.
        available: free slots (``limit - in_flight``, never below 0).
        rejected: callers refused (full queue, ``max_wait`` passed).
        completed: calls that held a slot and gave it back.
    """

    name: str | None
    limit: int
    in_flight: int
    waiting: int
    available: int
    rejected: int
    completed: int


class _Slots:
    """The slot state of one declaration on one event loop."""

    __slots__ = (
        "completed",
        "in_flight",
        "log_mark",
        "pollers",
        "rejected",
        "releasing",
        "returned",
        "waiters",
        "waiting",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting = 0
        self.rejected = 0
        self.completed = 0
        self.log_mark = -1  # completed + in_flight at the last logged rejection
        self.waiters: deque[asyncio.Future[bool]] = deque()
        # Store-backed, with a store whose acquire carries releases: leases given back
        # that the next acquire of this loop carries (by id, with their store), and
        # leases whose release was sent on its own and has no reply yet.
        self.returned: dict[str, BulkheadStore] = {}
        self.releasing: dict[str, BulkheadStore] = {}
        # Store-backed: the callers of this loop polling the store for a slot, each waiting
        # for its next try (woken early when a slot of this loop is given back).
        self.pollers: deque[asyncio.Future[None]] = deque()


class _Declaration:
    """What instances of one name share: the limits (process-wide) and the slots (per loop)."""

    __slots__ = (
        "__weakref__",
        "declared_limit",
        "limit",
        "max_wait",
        "max_waiters",
        "name",
        "slots",
    )

    def __init__(
        self, name: str | None, limit: int, max_wait: float | None, max_waiters: int | None
    ) -> None:
        self.name = name
        self.limit = limit
        self.declared_limit = limit
        self.max_wait = max_wait
        self.max_waiters = max_waiters
        self.slots: PerLoop[_Slots] = PerLoop(_Slots)

    def hand_off(self, slots: _Slots) -> None:
        """Give free slots to the head waiters (after a release or a resize)."""
        waiters = slots.waiters
        # A waiter cancelled a moment ago is still in the deque (and still counted in
        # ``waiting`` until its task runs): skip it, and stop when the deque is empty.
        while waiters and slots.in_flight < self.limit:
            fut = waiters.popleft()
            if not fut.done():
                slots.in_flight += 1
                slots.waiting -= 1
                fut.set_result(True)
        if not slots.waiting:
            waiters.clear()

    def release(self, slots: _Slots) -> None:
        """Give one slot back: straight to the head waiter when the limit allows."""
        if slots.waiting and slots.in_flight <= self.limit:
            waiters = slots.waiters
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    slots.waiting -= 1
                    fut.set_result(True)  # the slot passes on; in_flight is unchanged
                    return
        slots.in_flight -= 1


_NAMED: weakref.WeakValueDictionary[str, _Declaration] = weakref.WeakValueDictionary()
_NAMED_LOCK = threading.Lock()


def _declare(
    name: str | None, limit: int, max_wait: float | None, max_waiters: int | None
) -> _Declaration:
    if name is None:
        return _Declaration(None, limit, max_wait, max_waiters)
    with _NAMED_LOCK:
        existing = _NAMED.get(name)
        if existing is None:
            declaration = _NAMED[name] = _Declaration(name, limit, max_wait, max_waiters)
            return declaration
        for argument, value, declared in (
            ("limit", limit, existing.declared_limit),
            ("max_wait", max_wait, existing.max_wait),
            ("max_waiters", max_waiters, existing.max_waiters),
        ):
            if argument == "limit" and value == existing.limit:
                continue  # the declared limit, or the one a resize() set since
            if value != declared:
                raise ConfigurationError.argument_error(
                    argument,
                    value,
                    f"conflicts with the declaration {argument}={safe_repr(declared)}",
                    component=f"bulkhead {name!r}",
                )
        return existing


def _expire(slots: _Slots, fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        slots.waiting -= 1
        fut.set_result(False)


class _CarryingStore(Protocol):
    """A bulkhead store whose ``acquire`` gives back the lease ids of ``release`` first."""

    async def acquire(
        self, name: str, limit: int, lease_id: str, ttl: float, *, release: Sequence[str]
    ) -> bool: ...


def _carries_releases(store: BulkheadStore) -> bool:
    """Whether ``store.acquire`` takes ``release=`` (found once, from its signature)."""
    try:
        parameter = inspect.signature(store.acquire).parameters.get("release")
    except (TypeError, ValueError):  # no signature to read: the plain protocol
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake_poller(slots: _Slots) -> None:
    """Wake the longest-waiting caller polling the store: a slot of this loop came back."""
    pollers = slots.pollers
    while pollers:
        fut = pollers.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _take_returned(slots: _Slots, store: BulkheadStore) -> list[str]:
    """Take the leases of ``store`` given back on this loop, for an acquire to carry."""
    returned = slots.returned
    if all(owner is store for owner in returned.values()):
        taken = list(returned)
        returned.clear()
        return taken
    taken = [lease for lease, owner in returned.items() if owner is store]
    for lease in taken:
        del returned[lease]
    return taken


@final
class Bulkhead(GuardBase):
    """Limit how many calls run at once; queue the rest in strict FIFO order.

    A released slot is handed to the head waiter directly, so a newcomer never overtakes
    a queued caller. Instances with the same ``name`` share one limit: the declaration is
    process-wide and the slots are kept per event loop, so a named bulkhead works across
    successive ``asyncio.run()`` calls.

    Args:
        limit: the most calls running at once, ``>= 1``.
        name: share the limit with every live instance of this name.
        max_wait: ``None`` waits without bound, ``0`` fails fast, ``x > 0`` waits at most
            x seconds before :class:`BulkheadFull`.
        max_waiters: the most callers queued (``0``: no queue); one more gets
            :class:`BulkheadFull` at once. With a store, the callers of this process
            polling for a slot.
        store: shared slots across processes (e.g. ``headrace_guards.redis.RedisStore``);
            default in memory. The store's optional ``check_name(name)`` is called here.
            When its ``acquire`` takes ``release=`` (see
            :class:`~headrace_core.store.BulkheadStore`), a call costs one round trip: a
            slot given back is released by the next acquire of this bulkhead's name on
            the loop (which carries it), or, when none starts before the loop's next
            turn, by a release sent in the background; no caller waits for a release.
            Otherwise the caller waits for the store's release. An acquire whose outcome
            is unknown (the store raised, timed out, returned garbage, or the caller was
            cancelled meanwhile) has its lease released in the background. Every
            background release is bounded by the lease's time-to-live; a
            ``KeyboardInterrupt`` or ``SystemExit`` it raises is raised in the next
            caller (before it takes anything), or by :meth:`aclose`.
        clock: a zero-argument callable returning seconds, for event times.

    Raises:
        ConfigurationError: when an argument is invalid, or ``name`` is already declared
            with another ``limit``, ``max_wait`` or ``max_waiters``.
    """

    __slots__ = ("_background", "_carries", "_clock", "_decl", "_leases", "_queued", "_store")

    def __init__(
        self,
        limit: int,
        *,
        name: str | None = None,
        max_wait: float | None = None,
        max_waiters: int | None = None,
        store: BulkheadStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._init_base(name)
        limit = check_int("limit", limit, ge=1)
        max_wait = _check_optional_number("max_wait", max_wait, ge=0)
        if max_waiters is not None:
            max_waiters = check_int("max_waiters", max_waiters, ge=0)
        self._store: BulkheadStore | None = check_store(store, self.name, ("acquire", "release"))
        self._carries = self._store is not None and _carries_releases(self._store)
        self._decl = _declare(self.name, limit, max_wait, max_waiters)
        self._background = Background(self._describe(), keep_interrupts=True)
        self._clock = check_clock(clock)
        self._leases: dict[asyncio.Task[Any], list[str]] = {}
        # This instance's callers waiting for a slot (refused when it is closed).
        self._queued: dict[asyncio.Future[bool], _Slots] = {}

    def __repr__(self) -> str:
        return f"Bulkhead(limit={self._decl.limit}, name={self.name!r})"

    @property
    def limit(self) -> int:
        """The current limit (shared by every instance of the name)."""
        return self._decl.limit

    @property
    def max_wait(self) -> float | None:
        """The longest a caller waits for a slot (None: no bound)."""
        return self._decl.max_wait

    @property
    def max_waiters(self) -> int | None:
        """The most callers queued (None: no bound)."""
        return self._decl.max_waiters

    # -- in-memory slots -------------------------------------------------------------
    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` holding one slot.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            What ``fn`` returned.

        Raises:
            BulkheadFull: when no slot came within ``max_wait`` or the queue was full.
        """
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        try:
            if self._store is not None:
                return await self._call_store(fn, args, kwargs)  # type: ignore[no-any-return]
            decl = self._decl
            slots = decl.slots.get()
            if slots.in_flight < decl.limit and not slots.waiting:
                slots.in_flight += 1
            else:
                await self._wait(slots)
            try:
                return await fn(*args, **kwargs)
            except TypeError as exc:
                raise_if_not_async(fn, exc)
                raise
            finally:
                slots.completed += 1
                decl.release(slots)
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

    async def acquire(self) -> None:
        """Take one slot, waiting in FIFO order; pair every success with :meth:`release`.

        A slot taken with ``acquire()`` counts as a running call of this instance until
        :meth:`release` (on the same instance) gives it back.

        Raises:
            BulkheadFull: when no slot came within ``max_wait`` or the queue was full.
            Closed: when the bulkhead is closed.
        """
        await self._enter()

    async def _enter(self) -> None:
        life = self._life
        life.enter()
        try:
            if self._store is not None:
                self._push_lease(await self._store_acquire())
                return
            decl = self._decl
            slots = decl.slots.get()
            if slots.in_flight < decl.limit and not slots.waiting:
                slots.in_flight += 1
                return
            await self._wait(slots)
        except BaseException:
            life.leave()
            raise

    def release(self) -> None:
        """Give back a slot taken with :meth:`acquire` (it goes to the head waiter).

        Raises:
            RuntimeError: when no slot is held on this loop.
        """
        if self._store is not None:
            self._store_release_now()
        else:
            slots = self._decl.slots.get()
            if slots.in_flight <= 0:
                raise RuntimeError("Bulkhead.release() called more times than acquire()")
            slots.completed += 1
            self._decl.release(slots)
        if self._life.running > 0:
            self._life.leave()

    async def _wait(self, slots: _Slots) -> None:
        decl = self._decl
        if decl.max_wait == 0 or (
            decl.max_waiters is not None and slots.waiting >= decl.max_waiters
        ):
            raise self._reject(slots)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        slots.waiters.append(fut)
        slots.waiting += 1
        handle = (
            None if decl.max_wait is None else loop.call_later(decl.max_wait, _expire, slots, fut)
        )
        queued = self._queued
        queued[fut] = slots
        try:
            got = await fut
        except BaseException:
            if handle is not None:
                handle.cancel()
            if fut.cancelled():
                slots.waiting -= 1
                if not slots.waiting:
                    slots.waiters.clear()
            elif fut.result():
                decl.release(slots)  # handed a slot, then cancelled: pass it on
            raise
        finally:
            del queued[fut]
        if handle is not None:
            handle.cancel()
        if not got:
            if self._life.closed:
                raise self._life.refuse()
            raise self._reject(slots)

    def _reject(self, slots: _Slots | None) -> BulkheadFull:
        if slots is not None:
            slots.rejected += 1
        error = BulkheadFull(name=self.name)
        if event_logger.isEnabledFor(logging.INFO):
            run_start = True
            if slots is not None:
                admitted = slots.completed + slots.in_flight
                run_start = slots.log_mark != admitted
                slots.log_mark = admitted
            log_rejection("Bulkhead", self.name, run_start, limit=self._decl.limit)
        if self._listeners:
            self._listeners.emit(
                GuardEvent(
                    source=self._source, kind="rejected", at=now_of(self._clock), error=error
                )
            )
        return error

    def resize(self, limit: int) -> None:
        """Change the limit at runtime, for every instance of the name.

        Growing hands the new slots to the head waiters at once; shrinking never cancels
        running work and takes effect as calls finish.

        Args:
            limit: the new limit, ``>= 1``.

        Raises:
            ConfigurationError: when ``limit`` is invalid.
        """
        decl = self._decl
        decl.limit = check_int("limit", limit, ge=1)
        for loop, slots in decl.slots.items():
            if not loop.is_closed():
                decl.hand_off(slots)

    # -- store-backed slots ----------------------------------------------------------
    async def _store_acquire(self) -> str:
        store, name, decl = self._store, self.name, self._decl
        assert store is not None
        assert name is not None
        if self._background.interrupt is not None:
            self._background.raise_interrupt()  # from a release nobody awaited
        slots = decl.slots.get()
        lease = uuid.uuid4().hex
        if await self._store_try(store, name, lease, slots):
            return lease
        if decl.max_wait == 0 or (
            decl.max_waiters is not None and slots.waiting >= decl.max_waiters
        ):
            raise self._reject(slots)
        loop = asyncio.get_running_loop()
        deadline = None if decl.max_wait is None else loop.time() + decl.max_wait
        delay = _POLL_FIRST
        slots.waiting += 1
        try:
            while True:
                if deadline is not None:
                    now = loop.time()
                    if within(deadline, now):
                        raise self._reject(slots)
                    delay = min(delay, deadline - now)
                # the next try after ``delay``, or at once when a call of this loop gives
                # its slot back (its release then goes with the try, or has landed)
                waker: asyncio.Future[None] = loop.create_future()
                slots.pollers.append(waker)
                timer = loop.call_later(delay, _wake, waker)
                try:
                    await waker
                finally:
                    timer.cancel()
                    with contextlib.suppress(ValueError):  # (not there: woken by a slot)
                        slots.pollers.remove(waker)
                if self._life.closed:
                    raise self._life.refuse()
                if await self._store_try(store, name, lease, slots):
                    return lease
                delay = min(delay * 2, _POLL_MAX)
        finally:
            slots.waiting -= 1

    async def _store_try(self, store: BulkheadStore, name: str, lease: str, slots: _Slots) -> bool:
        """Ask the store for a slot once; an unknown outcome releases the lease id.

        With a store that carries releases, the leases given back on this loop go with
        the request (released first, in the same step), and so do the ones whose own
        release has no reply yet: releasing is idempotent, and an acquire that overtook
        such a release is never refused for want of it.
        """
        carried: list[str] = []
        try:
            if self._carries:
                carried = _take_returned(slots, store) if slots.returned else carried
                release = carried
                if slots.releasing:
                    release = carried + [
                        each for each, owner in slots.releasing.items() if owner is store
                    ]
                got: object = await cast("_CarryingStore", store).acquire(
                    name, self._decl.limit, lease, _LEASE_TTL, release=release
                )
            else:
                got = await store.acquire(name, self._decl.limit, lease, _LEASE_TTL)
        except BulkheadFull:
            # A store that fails closed rejects for us (its request may still have run).
            self._unknown(store, name, slots, lease, carried)
            raise self._reject(slots) from None
        except BaseException:
            self._unknown(store, name, slots, lease, carried)
            raise
        if got is True or got is False or (isinstance(got, int) and got in (0, 1)):
            if got:
                slots.in_flight += 1
            return bool(got)
        self._unknown(store, name, slots, lease, carried)
        raise TypeError(
            f"{type(store).__name__}.acquire() returned a {type(got).__name__}, not a bool"
        )

    def _unknown(
        self, store: BulkheadStore, name: str, slots: _Slots, lease: str, carried: list[str]
    ) -> None:
        """Release the lease of an acquire whose outcome is unknown, and what it carried."""
        if not self._carries:
            self._release_soon(store, name, lease)
            return
        self._return(slots, store, name, lease)
        for each in carried:
            self._return(slots, store, name, each)

    def _release_soon(
        self, store: BulkheadStore, name: str, lease: str
    ) -> asyncio.Task[BaseException | None]:
        """Release ``lease`` in a task bounded by the lease's TTL (releasing is idempotent)."""
        return self._background.send(
            "releasing a lease", functools.partial(store.release, name, lease), _LEASE_TTL
        )

    def _return(self, slots: _Slots, store: BulkheadStore, name: str, lease: str) -> None:
        """Leave ``lease`` for the next acquire to carry, else release it in the background.

        The background task starts at the loop's next turn: an acquire of this name and
        store that starts before then (typically the caller's next call) takes the lease
        along, and the task has nothing left to send.
        """
        slots.returned[lease] = store
        self._background.send(
            "releasing a lease",
            functools.partial(self._release_returned, slots, store, name, lease),
            _LEASE_TTL,
        )

    @staticmethod
    async def _release_returned(slots: _Slots, store: BulkheadStore, name: str, lease: str) -> None:
        if slots.returned.pop(lease, None) is None:
            return  # an acquire carried it
        slots.releasing[lease] = store
        try:
            await store.release(name, lease)
        finally:
            slots.releasing.pop(lease, None)

    async def _store_release(self, lease: str, exc: BaseException | None) -> None:
        """Give back a held lease.

        With a store that carries releases nobody waits: the next acquire carries it, or
        it is released in the background. Otherwise the caller waits for the store
        (bounded), except one unwinding from a cancel or an interrupt.
        """
        task = self._give_back(lease)
        if task is not None and (exc is None or isinstance(exc, Exception)):
            await self._background.wait(task)

    def _give_back(self, lease: str) -> asyncio.Task[BaseException | None] | None:
        # The slot leaves this process's count now; the store's release is carried by the
        # next acquire or goes on in the background (bounded).
        store, name = self._store, self.name
        assert store is not None
        assert name is not None
        slots = self._decl.slots.get()
        slots.in_flight -= 1
        slots.completed += 1
        if self._carries:
            self._return(slots, store, name, lease)
            if slots.pollers:
                _wake_poller(slots)  # its try carries the release
            return None
        task = self._release_soon(store, name, lease)
        if slots.pollers:
            # a poller woken before the release landed would be refused: after it
            task.add_done_callback(lambda _: _wake_poller(slots))
        return task

    def _push_lease(self, lease: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._leases.setdefault(task, []).append(lease)

    def _pop_lease(self) -> str | None:
        task = asyncio.current_task()
        stack = self._leases.get(task) if task is not None else None
        if not stack:
            return None
        lease = stack.pop()
        if not stack:
            del self._leases[task]  # type: ignore[arg-type]
        return lease

    def _store_release_now(self) -> None:
        lease = self._pop_lease()
        if lease is None:
            raise RuntimeError("Bulkhead.release() without a lease held by this task")
        self._give_back(lease)

    async def _call_store(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        lease = await self._store_acquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._store_release(lease, exc)
            if isinstance(exc, TypeError):
                raise_if_not_async(fn, exc)
            raise
        await self._store_release(lease, None)
        return result

    # -- async with and reading ------------------------------------------------------
    async def __aenter__(self) -> Bulkhead:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            lease = self._pop_lease()
            if lease is None:
                raise RuntimeError("Bulkhead.__aexit__ without a lease held by this task")
            try:
                await self._store_release(lease, exc)
            finally:
                self._life.leave()
            return
        self.release()

    def _closing(self) -> None:
        for fut, slots in tuple(self._queued.items()):
            _expire(slots, fut)  # refused: the waiter raises Closed
        if self._store is not None:
            # this loop's callers polling the store try no more: refused with Closed (a
            # poller of another instance of the name just tries once more)
            pollers = self._decl.slots.get().pollers
            while pollers:
                _wake(pollers.popleft())

    async def _closed_background(self) -> None:
        await self._background.aclose()

    def _closed_interrupt(self) -> None:
        self._background.raise_interrupt()

    def snapshot(self) -> BulkheadSnapshot:
        """Return the limit and counters on the running loop (O(1), no await).

        Returns:
            A frozen :class:`BulkheadSnapshot` (zeros outside a loop that used it).
        """
        decl = self._decl
        slots = decl.slots.peek()
        if slots is None:
            in_flight = waiting = rejected = completed = 0
        else:
            in_flight, waiting = slots.in_flight, slots.waiting
            rejected, completed = slots.rejected, slots.completed
        return BulkheadSnapshot(
            name=self.name,
            limit=decl.limit,
            in_flight=in_flight,
            waiting=waiting,
            available=max(0, decl.limit - in_flight),
            rejected=rejected,
            completed=completed,
        )
