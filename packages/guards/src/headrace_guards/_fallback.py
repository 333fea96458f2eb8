"""The fallback guard: replace a handled error with a handler's value."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, final

from headrace_core import ConfigurationError
from headrace_guards._common import (
    ExcSpec,
    GuardBase,
    GuardEvent,
    compile_spec,
    now_of,
    raise_if_not_async,
)

P = ParamSpec("P")
T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class FallbackSnapshot:
    """Counters of a :class:`Fallback`.

    Attributes:
        name: the guard's name.
        calls: calls made.
        fallbacks: calls answered by the handler.
    """

    name: str | None
    calls: int
    fallbacks: int


@final
class Fallback(GuardBase):
    """Answer a failed call with ``handler(exc, *args, **kwargs)``.

    The handler never runs for cancel-like exceptions (``CancelledError``,
    ``KeyboardInterrupt``, ...), even with ``on=BaseException``.

    Args:
        handler: called with the error and the call's arguments; awaited if it returns an
            awaitable. Its value (or its own error) is the call's outcome.
        on: which errors fall back (an exception spec); default every ``Exception``.
        name: a name for events and snapshots.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = ("_calls", "_fallbacks", "_on", "handler")

    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        on: ExcSpec = Exception,
        name: str | None = None,
    ) -> None:
        if not callable(handler):
            raise ConfigurationError.argument_error("handler", handler, "must be callable")
        self.handler = handler
        self._on = compile_spec("on", on)
        self._init_base(name)
        self._calls = 0
        self._fallbacks = 0

    def __repr__(self) -> str:
        return f"Fallback(handler={self.handler!r}, name={self.name!r})"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``; on a matching error, return the handler's value.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn`` (and the handler).
            **kwargs: keyword arguments for ``fn`` (and the handler).

        Returns:
            What ``fn`` returned, or the handler's value.

        Raises:
            Exception: an error that does not match ``on``, or the handler's own error.
        """
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        try:
            self._calls += 1
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, TypeError):
                    raise_if_not_async(fn, exc)  # a misuse never falls back
                if not self._on(exc):
                    raise
                error = exc
            # Outside the except block: the handler's own errors are not chained to ``error``.
            self._fallbacks += 1
            if self._listeners:
                self._listeners.emit(
                    GuardEvent(source=self._source, kind="fallback", at=now_of(None), error=error)
                )
            value = self.handler(error, *args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            return value  # type: ignore[no-any-return]
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

    def snapshot(self) -> FallbackSnapshot:
        """Return the guard's counters (O(1), no await).

        Returns:
            A frozen :class:`FallbackSnapshot`.
        """
        return FallbackSnapshot(name=self.name, calls=self._calls, fallbacks=self._fallbacks)
