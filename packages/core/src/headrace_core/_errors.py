"""The error hierarchy shared by every headrace package."""

from __future__ import annotations

import asyncio
import enum
import functools
import math
from collections.abc import Awaitable
from typing import Any, TypeVar, final

__all__ = [
    "BulkheadFull",
    "CapacityExceeded",
    "CircuitOpenError",
    "CircuitState",
    "Closed",
    "ConfigurationError",
    "GuardTimeout",
    "HeadraceError",
    "RateLimited",
    "Rejected",
]

T = TypeVar("T")


class HeadraceError(Exception):
    """Base class of every error that headrace raises on purpose."""


class ConfigurationError(HeadraceError, ValueError):
    """A component was given a bad argument.

    Raised at construction (or by a setter), never later. The message reads
    ``name=repr(value): reason``, for example ``limit=0: must be an int >= 1``.
    """

    def __init__(
        self,
        message: str,
        *,
        argument: str | None = None,
        value: object = None,
        component: str | None = None,
    ) -> None:
        super().__init__(message)
        self.argument = argument
        self.value = value
        self.component = component

    @classmethod
    def argument_error(
        cls, argument: str, value: object, reason: str, *, component: str | None = None
    ) -> ConfigurationError:
        """Build the error for one bad argument, in the house format.

        Args:
            argument: the argument's name, as the caller spelled it.
            value: the rejected value (shown with ``repr``).
            reason: what the value must be, e.g. ``"must be >= 0"``.
            component: the named component the argument belongs to, if any.

        Returns:
            A ``ConfigurationError`` whose message reads ``argument=value: reason``.
        """
        prefix = f"{component}: " if component else ""
        return cls(
            f"{prefix}{argument}={safe_repr(value, limit=None)}: {reason}",
            argument=argument,
            value=value,
            component=component,
        )


class ConfigurationTypeError(ConfigurationError, TypeError):
    """A :class:`ConfigurationError` that is also a ``TypeError``.

    Raised where a compatible API's original raises ``TypeError`` for the same bad
    argument (flowrhythm's stage arity and names, for example), so that ``except
    TypeError`` written for the original and ``except ConfigurationError`` both work.
    """


def safe_repr(value: object, limit: int | None = 200) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters (None: not cut); never raises.

    For messages, notes and logs that show a user's object: a ``__repr__`` that raises an
    ``Exception`` (or ``CancelledError`` of its own) gives ``<TypeName object (repr
    failed)>`` instead of replacing the error being reported. ``KeyboardInterrupt`` and
    ``SystemExit`` propagate.
    """
    try:
        text = repr(value)
    except (Exception, asyncio.CancelledError):  # a user's __repr__ must not replace our error
        return f"<{type(value).__qualname__} object (repr failed)>"
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..."


async def keep_cancel(awaitable: Awaitable[T], client: str = "the client") -> T:
    """Await a client's ``awaitable``; raise a cancellation of this task that it swallowed.

    Some clients (redis-py 8.0 to 8.2 on Python 3.11) return a reply, or raise another
    error, when the task is cancelled while a reply is read: the cancellation would be
    lost. The task's cancellation count still shows it was asked for, so it is raised
    again here. A ``CancelledError`` that the client raises while this task is not being
    cancelled is the client's failure: it is raised as a ``HeadraceError`` chaining it
    (naming ``client``), so that no caller mistakes it for its own cancellation.
    """
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    try:
        result = await awaitable
    except asyncio.CancelledError as exc:
        if task.cancelling() > cancelling:
            raise
        raise HeadraceError(
            f"{client} raised CancelledError while the task was not being cancelled"
        ) from exc
    except Exception as exc:
        if task.cancelling() > cancelling:
            raise asyncio.CancelledError from exc
        raise
    if task.cancelling() > cancelling:
        raise asyncio.CancelledError
    return result


def callable_name(fn: object) -> str:
    """Return a name for ``fn`` in messages, read without calling any ``__repr__`` of the user's.

    The ``__qualname__`` of the function (through ``functools.partial`` layers), else the
    type's qualified name.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        name = getattr(fn, "__qualname__", None)
    except Exception:  # a hostile __getattr__
        name = None
    if not isinstance(name, str):
        name = type(fn).__qualname__
    return name


def being_cancelled() -> bool:
    """Return whether the current task is being cancelled.

    A ``CancelledError`` is the task's own only then; one that user code raises while its
    task is not being cancelled (it awaited a future someone else cancelled) is that
    code's failure, never a reason to stop quietly.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@final
class CircuitState(enum.Enum):
    """The three states of a circuit breaker.

    Forced-open and disabled are flags in a breaker's snapshot, not states, so that
    ``state == CircuitState.OPEN`` checks keep working.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


class Rejected(HeadraceError):
    """The call was not run: load was shed (or the server refused it).

    Attributes:
        retry_after: seconds after which a retry may succeed, or ``None`` when unknown.
        name: the name of the component that rejected the call, if it has one.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        name: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.name = name
        super().__init__(message if message is not None else self._default_message())

    def _default_message(self) -> str:
        who = f" by {self.name!r}" if self.name else ""
        after = "" if self.retry_after is None else f"; retry after {self.retry_after:.3f}s"
        return f"rejected{who}{after}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class CircuitOpenError(Rejected):
    """A circuit breaker is open (or its half-open probes are taken).

    Attributes:
        retry_after: seconds until the breaker will admit a probe (``inf`` when forced open).
        state: the breaker's state when it rejected the call.
    """

    retry_after: float

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float = 0.0,
        name: str | None = None,
        state: CircuitState = CircuitState.OPEN,
    ) -> None:
        self.state = state
        super().__init__(message, retry_after=max(0.0, retry_after), name=name)

    def _default_message(self) -> str:
        who = f"circuit {self.name!r}" if self.name else "circuit"
        if math.isinf(self.retry_after):
            return f"{who} is forced open"
        return f"{who} is {self.state.value}; retry after {self.retry_after:.3f}s"


class BulkheadFull(Rejected):
    """A bulkhead had no free slot within the allowed wait (or its queue was full)."""

    def _default_message(self) -> str:
        who = f"bulkhead {self.name!r}" if self.name else "bulkhead"
        return f"{who} is full"


class RateLimited(Rejected):
    """A rate limiter had no budget within the allowed wait.

    Attributes:
        retry_after: seconds until the requested cost would be available.
    """

    retry_after: float

    def __init__(
        self, message: str | None = None, *, retry_after: float = 0.0, name: str | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after, name=name)

    def _default_message(self) -> str:
        who = f"rate limiter {self.name!r}" if self.name else "rate limiter"
        return f"{who} is over its rate; retry after {self.retry_after:.3f}s"


class Closed(HeadraceError):
    """The component was closed; packages subclass it (``ThrottleClosed``, ``FlowClosed``)."""


class CapacityExceeded(HeadraceError, ValueError):
    """A request is larger than a limiter's or budget's whole capacity: it could never be served.

    Attributes:
        requested: the size of the request.
        capacity: the most the component can ever grant at once.
        name: the component's name, if any.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        requested: float | None = None,
        capacity: float | None = None,
        name: str | None = None,
    ) -> None:
        self.requested = requested
        self.capacity = capacity
        self.name = name
        if message is None:
            who = f" of {name!r}" if name else ""
            message = f"requested {requested} exceeds the capacity {capacity}{who}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class GuardTimeout(HeadraceError, TimeoutError):
    """A deadline that headrace enforces expired.

    Attributes:
        timeout: the deadline's length in seconds.
        name: the component's name, if any.
    """

    def __init__(
        self, message: str | None = None, *, timeout: float = 0.0, name: str | None = None
    ) -> None:
        self.timeout = timeout
        self.name = name
        if message is None:
            who = f"{name!r} " if name else ""
            message = f"{who}timed out after {timeout:g}s"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class BackoffError(HeadraceError, RuntimeError):
    """A backoff schedule failed its contract while a retry needed its next delay.

    A schedule's ``delays()`` must yield a finite number ``>= 0`` for every retry; this is
    raised when a custom schedule runs out or yields anything else. The error that caused
    the retry is chained as ``__cause__``.
    """
