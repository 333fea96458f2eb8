"""What every guard shares: the event type, exception specs, the decorator and listeners."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeAlias, TypeVar, final

from headrace_core import ConfigurationError, is_async_callable
from headrace_core.stats import Listeners

P = ParamSpec("P")
T = TypeVar("T")

#: An exception filter: a type, a tuple or list of types, or a predicate on the error.
ExcSpec: TypeAlias = (
    type[BaseException]
    | tuple[type[BaseException], ...]
    | list[type[BaseException]]
    | Callable[[BaseException], bool]
)

#: A zero-argument callable returning seconds (the guard's measuring clock).
Clock: TypeAlias = Callable[[], float]

LOGGER = "headrace.guards"


@final
@dataclass(frozen=True, slots=True)
class GuardEvent:
    """One event of a guard, handed to its listeners after the state change is complete.

    Attributes:
        source: the guard's name, or its kind (``"CircuitBreaker"``) when it has none.
        kind: ``state_change``, ``rejected``, ``timeout``, ``retry``, ``hedge`` or ``fallback``.
        at: the time of the event on the guard's clock (the loop's time by default).
        old_state: the state before a ``state_change``.
        new_state: the state after a ``state_change``.
        reason: why it happened, e.g. ``"failures"`` or ``"recovery_timeout"``.
        attempt: the attempt number (retry: the attempt that just failed; hedge: the new one).
        delay: seconds slept before the next attempt (retry) or the hedge delay.
        error: the error involved, if any.
    """

    source: str
    kind: str
    at: float
    old_state: Any = None
    new_state: Any = None
    reason: str | None = None
    attempt: int | None = None
    delay: float | None = None
    error: BaseException | None = None


def _never(exc: BaseException) -> bool:
    return False


def compile_spec(argument: str, spec: object) -> Callable[[BaseException], bool]:
    """Turn an exception spec into a predicate that never matches cancel-like exceptions.

    Args:
        argument: the argument's name, for the error message.
        spec: an exception type, a tuple or list of types, or a predicate.

    Returns:
        A predicate ``(exc) -> bool``; it is False for every non-``Exception``.

    Raises:
        ConfigurationError: when ``spec`` is none of the accepted forms.
    """
    if isinstance(spec, type) and issubclass(spec, BaseException):
        types: tuple[type[BaseException], ...] = (spec,)
    elif isinstance(spec, tuple | list):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in spec):
            raise ConfigurationError.argument_error(
                argument, spec, "must be exception types or a predicate"
            )
        types = tuple(spec)
        if not types:
            return _never
    elif callable(spec):
        predicate: Callable[[BaseException], bool] = spec

        def call_predicate(exc: BaseException) -> bool:
            return isinstance(exc, Exception) and bool(predicate(exc))

        return call_predicate
    else:
        raise ConfigurationError.argument_error(
            argument, spec, "must be an exception type, a tuple of types, or a predicate"
        )

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and isinstance(exc, types)

    return matches


def check_callable(argument: str, value: object) -> Any:
    """Validate an optional callable argument (None passes)."""
    if value is not None and not callable(value):
        raise ConfigurationError.argument_error(argument, value, "must be a callable or None")
    return value


def check_clock(clock: Any) -> Clock | None:
    """Validate a ``clock=`` argument (None or a zero-argument callable)."""
    checked: Clock | None = check_callable("clock", clock)
    return checked


def check_name(name: object) -> str | None:
    """Validate a ``name=`` argument (None or a non-empty string)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError.argument_error("name", name, "must be a non-empty str or None")
    return name


def numeric_retry_after(exc: BaseException) -> float | None:
    """Return the error's ``retry_after`` when it is a real number, else None."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value:  # NaN
        return None
    return float(value)


class GuardBase:
    """The shared part of every guard: name, listeners, decorator use and ``aclose()``.

    Not public: every guard derives from it.
    """

    __slots__ = ("_listeners", "name")

    name: str | None
    _listeners: Listeners[GuardEvent]

    def _init_base(self, name: str | None) -> None:
        self.name = check_name(name)
        self._listeners = Listeners(LOGGER, self._describe())

    def _describe(self) -> str:
        kind = type(self).__name__
        return f"{kind} {self.name!r}" if self.name else kind

    @property
    def _source(self) -> str:
        return self.name or type(self).__name__

    async def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:  # pragma: no cover - every guard overrides it
        """Run ``fn(*args, **kwargs)`` under the guard."""
        raise NotImplementedError

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call runs under the guard.

        Args:
            fn: the coroutine function to protect.

        Returns:
            An ``async def`` with the same signature and ``functools.wraps`` metadata.

        Raises:
            TypeError: when ``fn`` is not an async function.
        """
        if not is_async_callable(fn):
            raise TypeError(f"{type(self).__name__} decorates async functions only, got {fn!r}")
        call = self.call

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await call(fn, *args, **kwargs)

        return guarded

    def add_listener(self, callback: Callable[[GuardEvent], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of this guard.

        The callback may be sync or async (an awaitable it returns is scheduled as a
        task). Its exceptions are logged on ``headrace.guards`` and swallowed.

        Args:
            callback: the listener.

        Returns:
            A callable that removes the listener.

        Raises:
            TypeError: when ``callback`` is not callable.
        """
        return self._listeners.add(callback)

    async def aclose(self) -> None:
        """Wait for this guard's pending async listeners (the guard stays usable)."""
        await self._listeners.aclose()


def now_of(clock: Clock | None) -> float:
    """Read ``clock``, or the running loop's time when it is None."""
    if clock is None:
        return asyncio.get_running_loop().time()
    return clock()
