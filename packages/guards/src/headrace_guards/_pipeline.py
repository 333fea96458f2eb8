"""Composition: ``pipeline(*guards)``, the first guard outermost."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, ParamSpec, Protocol, TypeVar, final, runtime_checkable

from headrace_core import ConfigurationError
from headrace_core.lowlevel import being_cancelled
from headrace_guards._common import GuardBase, GuardEvent, raise_if_not_async
from headrace_guards._fused import Fused, fuse

P = ParamSpec("P")
T = TypeVar("T")


@runtime_checkable
class _Guard(Protocol):
    def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Awaitable[Any]: ...

    def snapshot(self) -> Any: ...

    def add_listener(self, callback: Callable[[GuardEvent], Any]) -> Callable[[], None]: ...


@final
@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """The snapshots of a :class:`Pipeline`'s guards.

    Attributes:
        guards: one snapshot per guard, ``guards[0]`` the outermost.
    """

    guards: tuple[Any, ...]


@final
class Pipeline(GuardBase):
    """Guards composed into one: ``pipeline(a, b, c).call(fn)`` is ``a(b(c(fn)))``.

    Build it with :func:`pipeline`. It is itself a guard (``call``, decorator,
    ``snapshot()``, ``add_listener``), without ``async with``. Each run of
    ``[Retry] [CircuitBreaker] Timeout [Bulkhead]`` in it runs in one coroutine frame
    instead of one per guard, with the same outcomes.

    Args:
        *guards: the guards, outermost first; nested pipelines are flattened in order.
        name: a name for the pipeline.

    Raises:
        ConfigurationError: when an argument is not a guard.
    """

    __slots__ = ("_calls", "_outer", "_outer_is_ours", "_whole", "guards")

    def __init__(self, *guards: Any, name: str | None = None) -> None:
        flat: list[Any] = []
        for guard in guards:
            if isinstance(guard, Pipeline):
                flat.extend(guard.guards)
            elif isinstance(guard, _Guard):
                flat.append(guard)
            else:
                raise ConfigurationError.argument_error(
                    "guards", guard, "must be a guard (with call, snapshot and add_listener)"
                )
        self.guards: tuple[Any, ...] = tuple(flat)
        # What runs a call: the guards, each run of them that fuse() knows as one Fused.
        runs = fuse(flat)
        # The outermost, and the bound ``call`` methods of the others, innermost first.
        self._outer: Any = runs[0] if runs else None
        self._calls = tuple(r.call for r in reversed(runs[1:]))
        # A guard of this package returns a coroutine from call(); another one is checked.
        self._outer_is_ours = isinstance(self._outer, GuardBase | Fused)
        # The pipeline when it is one fused run (it then calls Fused.run directly).
        whole = runs[0] if len(runs) == 1 else None
        self._whole: Fused | None = whole if isinstance(whole, Fused) else None
        self._init_base(name)

    def __repr__(self) -> str:
        return f"pipeline({', '.join(repr(g) for g in self.guards)})"

    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """Run ``fn(*args, **kwargs)`` through every guard, the first outermost.

        Every guard sees the call's own arguments (so ``Timeout.on_timeout`` and
        ``Fallback``'s handler get them). Returns the outermost guard's coroutine
        directly (no extra frame): ``await pipeline.call(fn)`` as with any guard.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            A coroutine returning what the outermost guard returned.

        Raises:
            Exception: (when awaited) whatever the guards or ``fn`` raise.
        """
        life = self._life
        if life.closed:
            return _refused(life.refuse())
        whole = self._whole
        if whole is not None:
            return whole.run(fn, args, kwargs)
        outer = self._outer
        if outer is None:
            return _direct(fn, args, kwargs)
        inner: Callable[..., Awaitable[Any]] = fn
        partial = functools.partial
        for call in self._calls:
            inner = partial(call, inner)
        if self._outer_is_ours:
            return outer.call(inner, *args, **kwargs)  # type: ignore[no-any-return]
        return _direct(partial(outer.call, inner), args, kwargs)

    def snapshot(self) -> PipelineSnapshot:
        """Return every guard's snapshot, outermost first.

        Returns:
            A frozen :class:`PipelineSnapshot`.
        """
        return PipelineSnapshot(guards=tuple(g.snapshot() for g in self.guards))

    def add_listener(self, callback: Callable[[GuardEvent], Any]) -> Callable[[], None]:
        """Subscribe ``callback`` to every guard of the pipeline.

        Args:
            callback: the listener, sync or async.

        Returns:
            A callable that removes it from every guard.
        """
        removers: list[Callable[[], object]] = []

        def remove() -> None:
            for remover in removers:
                remover()

        try:
            for guard in self.guards:
                remover = guard.add_listener(callback)
                if not callable(remover):
                    raise TypeError(
                        f"{type(guard).__name__}.add_listener() returned a "
                        f"{type(remover).__name__}, not a callable that removes the listener"
                    )
                removers.append(remover)
        except BaseException:
            remove()  # all or nothing: no guard keeps a listener the caller never got
            raise
        return remove

    async def aclose(self) -> None:
        """Close the pipeline and every guard in it, outermost first (idempotent).

        From the first call on, the pipeline refuses new calls with
        :class:`~headrace_core.Closed`; each guard's own ``aclose()`` then refuses its
        new and waiting calls and waits for its running ones and its listeners. Every
        guard is closed even when one fails; the first failure is raised after.
        """
        self._life.close()
        first: BaseException | None = None
        for guard in self.guards:
            try:
                close = getattr(guard, "aclose", None)
                if close is not None:
                    await close()
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    raise
                if first is None:
                    first = exc
        await self._listeners.aclose()
        if first is not None:
            raise first


async def _refused(error: BaseException) -> NoReturn:
    raise error


async def _direct(fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
    try:
        return await fn(*args, **kwargs)
    except TypeError as exc:
        raise_if_not_async(fn, exc)
        raise


def pipeline(*guards: Any, name: str | None = None) -> Pipeline:
    """Compose guards into one, the first guard outermost (as in reading order).

    Recommended order: ``pipeline(Fallback, Retry, CircuitBreaker, RateLimiter, Timeout,
    Bulkhead)``. A :class:`~headrace_guards.Timeout` before ``Retry`` bounds all attempts;
    after it, each attempt.

    Args:
        *guards: the guards, outermost first; nested pipelines are flattened.
        name: a name for the pipeline.

    Returns:
        A :class:`Pipeline`.

    Raises:
        ConfigurationError: when an argument is not a guard.
    """
    return Pipeline(*guards, name=name)
