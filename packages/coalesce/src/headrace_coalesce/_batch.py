"""``@batch``: concurrent calls of one function become one bulk call.

See :mod:`headrace_coalesce._collect` for how a body is driven and
:mod:`headrace_coalesce._core` for leading, hand-over and routing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, final, overload

from headrace_coalesce._collect import COLLECT, drive, no_collect
from headrace_coalesce._core import PROMOTE, Batch, Core, close
from headrace_coalesce._lane import Options, filled, require_async
from headrace_coalesce._stats import CoalesceEvent, CoalesceStats
from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_callable, safe_repr
from headrace_core.stats import Listener

__all__ = ["BatchFunction", "batch"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
S = TypeVar("S")

_get_running_loop = asyncio.get_running_loop


@final
class BatchFunction(Generic[P, R]):
    """A function decorated with ``@batch``; call it like the original, one item per call.

    Concurrent calls that reach ``await collect(item)`` in the same window share one bulk
    call. Accessed through an instance (a method), it batches per instance.
    """

    __slots__ = ("__dict__", "__weakref__", "_core", "_instance")

    def __init__(self, core: Core, instance: Any = None) -> None:
        self._core = core
        self._instance = instance

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call; it joins the current batch of its lane.

        Returns:
            This caller's value from the bulk result.

        Raises:
            BatchRoutingError: when the bulk result cannot be routed (every caller).
            MissingResult: when a ``Mapping`` result lacks this caller's key.
            RuntimeError: when the body returns without awaiting ``collect()``.
            Closed: when the function is closed.
            Exception: whatever the body raised, or the exception value in its slot.
        """
        core = self._core
        life = core.life
        if life.closed:
            raise life.refuse()
        core.calls.value += 1  # also counts the call in flight, until ``ended`` counts it
        try:
            instance = self._instance
            if instance is not None:
                coro = core.fn(instance, *args, **kwargs)
            elif kwargs:
                coro = core.fn(*args, **kwargs)
            else:
                coro = core.fn(*args)
            try:
                box = coro.send(None)
            except StopIteration:
                raise RuntimeError(no_collect(core.name)) from None
            if type(box) is not tuple or not box or box[0] is not COLLECT:  # not collect()'s
                try:
                    box = await drive(coro, box, core.name)
                except asyncio.CancelledError:
                    core.rec.cancelled.value += 1
                    raise
            loop = _get_running_loop()
            batch: Batch | None = None  # bound on every path that reaches the code after the try
            try:
                last = core.last  # one read: another thread may replace it meanwhile
                if last is not None and instance is None and last[0]() is loop:
                    lane = last[1]
                else:
                    lane = core.lane_for(loop, instance, args, kwargs)
                batch = lane.open
                if batch is None:
                    batch = core.open(lane, box[1], loop)
                    return await core.lead(batch, coro, 0, loop)  # type: ignore[no-any-return]
                if core.inline_join:  # default options (dedupe by the item): the join inlined
                    item = box[1]
                    items = batch.items
                    keys: dict[Any, int] = batch.keys  # type: ignore[assignment]
                    n = len(items)
                    try:
                        entry = keys.setdefault(item, n)
                    except TypeError:  # unhashable: allowed, never de-duplicated
                        entry = n
                    if entry == n:
                        items.append(item)
                        if batch.entries is not None:
                            batch.entries.append(n)
                        if n == core.last_entry:
                            filled(batch)
                    else:
                        core.duplicate(batch, entry)
                else:
                    core.join(batch, box[1])
            except BaseException:
                close(coro)
                raise
            fut = loop.create_future()
            batch.futs.append(fut)
            try:
                value = await fut
            except BaseException as exc:
                try:
                    close(coro)
                finally:
                    core.follower_failed(batch, fut, exc)
                raise
            if value is PROMOTE:
                pos = batch.futs.index(fut)
                return await core.lead(batch, coro, pos, loop)  # type: ignore[no-any-return]
            try:
                coro.close()
            except RuntimeError:  # the body awaited in a finally block: its value still stands
                if getattr(coro, "cr_frame", None) is None:  # the body raised it: the user's error
                    raise
            return value  # type: ignore[no-any-return]
        finally:
            core.ended += 1
            if life.idle and core.ended == core.calls.value:  # aclose() waits: none in flight
                life.wake()

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> BatchFunction[P, R]: ...
    @overload
    def __get__(
        self: BatchFunction[Concatenate[S, P2], R], obj: S, owner: type[Any] | None = None
    ) -> BatchFunction[P2, R]: ...
    def __get__(self, obj: Any, owner: type[Any] | None = None) -> BatchFunction[Any, R]:
        """Bind to ``obj``: the bound function batches per instance.

        Returns:
            This function when accessed on the class, else a bound ``BatchFunction``.
        """
        if obj is None or self._instance is not None:
            return self
        return BatchFunction(self._core, obj)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        # a method: calls through the class (Class.method(obj, ...)) batch per instance too
        self._core.method = True
        self._core.plain_lane = False
        self._core.last = None

    def stats(self) -> CoalesceStats:
        """Return a frozen snapshot of the counters (shared by every instance and loop).

        Returns:
            The current :class:`CoalesceStats`.
        """
        return self._core.rec.snapshot()

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
        return self._core.rec.add_listener(callback)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: the function refuses new calls."""
        return self._core.life.closed

    async def aclose(self) -> None:
        """Close the function for good (the family's one ``aclose()``; idempotent).

        It is closed for every instance and loop (they share it). New calls raise
        :class:`~headrace_core.Closed`. Calls already waiting in a window are not
        dropped: the window ends now and their batch runs. Returns once every call in
        flight has its value, then once pending async listeners have ended (under a
        deadline, ``asyncio.timeout``, those still running are cancelled). ``stats()``
        and ``add_listener()`` keep working.
        """
        core = self._core
        if core.life.close():
            core.flush(asyncio.get_running_loop())
        await core.wait_idle()
        await core.rec.aclose()

    async def __aenter__(self) -> BatchFunction[P, R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        # bound copies skip functools.update_wrapper: answer from the wrapped function
        if name == "__wrapped__":
            return self._core.fn
        if name.startswith("__") and name not in ("__name__", "__qualname__"):
            raise AttributeError(name)
        return getattr(self._core.fn, name)

    def __repr__(self) -> str:
        bound = "" if self._instance is None else f" bound to {safe_repr(self._instance)}"
        return f"<batch function {self._core.name}{bound}>"


@overload
def batch(fn: Callable[P, Awaitable[Sequence[R] | Mapping[Any, R]]], /) -> BatchFunction[P, R]: ...
@overload
def batch(
    *,
    max_size: int | None = None,
    max_wait: float = 0.0,
    max_concurrent: int | None = None,
    key: Callable[[Any], Hashable] | None = None,
    dedupe: bool = True,
    group_by: Callable[..., Hashable] | None = None,
) -> Callable[[Callable[P, Awaitable[Sequence[R] | Mapping[Any, R]]]], BatchFunction[P, R]]: ...
def batch(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    max_size: int | None = None,
    max_wait: float = 0.0,
    max_concurrent: int | None = None,
    key: Callable[[Any], Hashable] | None = None,
    dedupe: bool = True,
    group_by: Callable[..., Hashable] | None = None,
) -> Any:
    """Make concurrent calls of an async function share one bulk call.

    Use bare (``@batch``) or with options (``@batch(max_size=100)``). In the body, code
    before ``await collect(item)`` runs per caller; the leader alone resumes with the
    batch's items and returns one result per item: a ``Sequence`` in the order of the
    items, or a ``Mapping`` keyed by item (or by ``key(item)``). An exception instance
    in the results is raised in its caller; an exception of the body reaches every caller.

    Args:
        fn: the async function (when used bare).
        max_size: most unique items per bulk call (``>= 1``); reaching it dispatches at once.
        max_wait: seconds (``>= 0``, loop clock) the window stays open after its first
            item; ``0`` means the callers that reach ``collect()`` in the same loop
            iteration.
        max_concurrent: most bulk calls in flight per loop and lane (``>= 1``); a batch
            waiting for a slot keeps accepting items up to ``max_size``.
        key: identity of an item for de-duplication and ``Mapping`` routing.
        dedupe: send identical items once (unhashable items are never de-duplicated).
        group_by: called with the call's arguments; calls with different group keys
            never share a batch.

    Returns:
        A :class:`BatchFunction` (or, with options only, a decorator that makes one).

    Raises:
        ConfigurationError: when an option is invalid (the message names it).
        TypeError: when ``fn`` is not an async function.
    """
    options = Options(max_size, max_wait, max_concurrent)
    check_callable("key", key)
    check_callable("group_by", group_by)
    if not isinstance(dedupe, bool):
        raise ConfigurationError.argument_error("dedupe", dedupe, "must be a bool")

    def decorate(function: Callable[..., Any]) -> BatchFunction[Any, Any]:
        require_async("@batch", function)
        wrapper: BatchFunction[Any, Any] = BatchFunction(
            Core(function, options, key, dedupe, group_by)
        )
        functools.update_wrapper(wrapper, function)
        return wrapper

    if fn is None:
        return decorate
    return decorate(fn)
