"""``TaskFunction``: one phase's callable with its timeout, retries, guards and task group."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, final, runtime_checkable

from headrace_core.backoff import Backoff, exponential
from headrace_core.lowlevel import check_int, check_number, safe_repr
from headrace_leveled._errors import RetryableError, argument_error, flatten_exceptions

__all__ = ["DEFAULT_RETRY_ON", "PhaseGuard", "TaskFunction"]

C_co = TypeVar("C_co")

#: The exceptions a phase is retried on unless ``retry_on=`` says otherwise.
DEFAULT_RETRY_ON: tuple[type[Exception], ...] = (TimeoutError, ConnectionError, RetryableError)

_UNSET: Any = object()


@runtime_checkable
class PhaseGuard(Protocol):
    """What ``guards=`` accepts: any object with ``async call(fn, /, *args, **kwargs)``.

    Every ``headrace_guards`` guard (``Timeout``, ``Retry``, ``CircuitBreaker``, ...) is one.
    """

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under the guard and return its result."""
        ...


def _check_retry_on(argument: str, value: object) -> tuple[type[Exception], ...]:
    if isinstance(value, type):
        value = (value,)
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise argument_error(argument, value, "must be a tuple of Exception subclasses")
    types = tuple(value)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise argument_error(
                argument,
                value,
                f"must hold only Exception subclasses ({safe_repr(kind)} is not one; "
                "cancellation and other BaseExceptions are never retried)",
            )
    return types


@final
@dataclass(frozen=True, slots=True, init=False)
class TaskFunction(Generic[C_co]):
    """A phase's callable and how to call it.

    A plain async callable is accepted wherever a ``TaskFunction`` is; this class adds the
    per-phase options. Each attempt runs ``guards[0].call(guards[1].call(... timeout(fn(ctx))))``;
    retries sit outside the guards, and the timeout applies to each attempt.

    Args:
        function: ``async def fn(ctx)`` (or ``fn(ctx, tg)`` with ``task_group=True``). A
            callable returning a non-awaitable value is accepted too; the value is the result.
        timeout: seconds each attempt may take (finite, ``> 0``), or ``None`` for no limit.
            An expired deadline raises :class:`PhaseTimeout`.
        retries: extra attempts after the first (an int ``>= 0``).
        initial_delay: seconds before the first retry (``>= 0``).
        backoff_factor: growth of the delay per retry (``>= 1``).
        jitter: multiply each delay by ``uniform(0.5, 1.0)``, as sdax does; ``False`` gives
            exactly ``initial_delay * backoff_factor ** n``.
        retry_on: the exception types that are retried (``Exception`` subclasses only;
            ``CancelledError`` is never retried). An exception group is retried when every
            leaf matches.
        guards: ``headrace_guards`` objects (anything with ``async call(fn, *args)``),
            outermost first. In ``post_execute`` the call's timeout also bounds each
            attempt's guards as a whole (cleanup is shielded, so nothing else would).
        backoff: a ``headrace_core.backoff`` schedule (anything with ``delays(rng)``) for
            the delays between retries, instead of ``initial_delay``, ``backoff_factor``
            and ``jitter``. A schedule that runs out of delays, or yields anything but a
            finite number ``>= 0``, fails the phase with ``headrace_core.BackoffError``
            (chaining the error that asked for the retry).
        task_group: call ``fn(ctx, tg)`` with an ``asyncio.TaskGroup`` whose children are
            awaited before the phase ends (and are cancelled with it).
        retryable_exceptions: sdax's name for ``retry_on``.
        has_task_group_argument: sdax's name for ``task_group``.

    Raises:
        ConfigurationError: when an argument is invalid (the message names it).
    """

    function: Callable[..., Any]
    timeout: float | None
    retries: int
    initial_delay: float
    backoff_factor: float
    jitter: bool
    retry_on: tuple[type[Exception], ...]
    guards: tuple[PhaseGuard, ...]
    task_group: bool
    _backoff: Backoff = field(init=False, repr=False, compare=False)
    _custom_backoff: Backoff | None = field(init=False, repr=False, compare=True)

    def __init__(
        self,
        function: Callable[[C_co], Awaitable[Any]]
        | Callable[[C_co, asyncio.TaskGroup], Awaitable[Any]],
        *,
        timeout: float | None = None,
        retries: int = 0,
        initial_delay: float = 1.0,
        backoff_factor: float = 2.0,
        jitter: bool = True,
        retry_on: Sequence[type[Exception]] = DEFAULT_RETRY_ON,
        guards: Sequence[PhaseGuard] = (),
        task_group: bool = False,
        backoff: Backoff | None = None,
        retryable_exceptions: Sequence[type[Exception]] = _UNSET,
        has_task_group_argument: bool = _UNSET,
    ) -> None:
        if not callable(function):
            raise argument_error("function", function, "must be callable")
        if timeout is not None:
            timeout = check_number("timeout", timeout, gt=0)
        retries = check_int("retries", retries, ge=0)
        initial_delay = check_number("initial_delay", initial_delay, ge=0)
        backoff_factor = check_number("backoff_factor", backoff_factor, ge=1)
        if not isinstance(jitter, bool):
            raise argument_error("jitter", jitter, "must be a bool")
        if retryable_exceptions is not _UNSET:
            if retry_on is not DEFAULT_RETRY_ON:
                raise argument_error(
                    "retryable_exceptions",
                    retryable_exceptions,
                    "give retry_on= or its sdax name retryable_exceptions=, not both",
                )
            retry_types = _check_retry_on("retryable_exceptions", retryable_exceptions)
        else:
            retry_types = _check_retry_on("retry_on", retry_on)
        if has_task_group_argument is not _UNSET:
            if task_group:
                raise argument_error(
                    "has_task_group_argument",
                    has_task_group_argument,
                    "give task_group= or its sdax name has_task_group_argument=, not both",
                )
            task_group = has_task_group_argument
            tg_name = "has_task_group_argument"
        else:
            tg_name = "task_group"
        if not isinstance(task_group, bool):
            raise argument_error(tg_name, task_group, "must be a bool")
        raw_guards: object = guards
        if isinstance(raw_guards, str) or not isinstance(raw_guards, Iterable):
            raise argument_error("guards", guards, "must be a sequence of guards")
        guard_tuple: tuple[PhaseGuard, ...] = tuple(raw_guards)
        for guard in guard_tuple:
            if not callable(getattr(guard, "call", None)):
                raise argument_error(
                    "guards", guards, f"{safe_repr(guard)} has no call(fn, *args) method"
                )
        if backoff is not None and not callable(getattr(backoff, "delays", None)):
            raise argument_error(
                "backoff", backoff, "must be a backoff schedule (an object with delays(rng))"
            )
        schedule: Backoff
        if backoff is not None:
            schedule = backoff
        else:
            schedule = exponential(
                base=initial_delay,
                factor=backoff_factor,
                max=math.inf,
                jitter=0.5 if jitter else 0.0,
            )
        setattr_ = object.__setattr__
        setattr_(self, "function", function)
        setattr_(self, "timeout", timeout)
        setattr_(self, "retries", retries)
        setattr_(self, "initial_delay", initial_delay)
        setattr_(self, "backoff_factor", backoff_factor)
        setattr_(self, "jitter", jitter)
        setattr_(self, "retry_on", retry_types)
        setattr_(self, "guards", guard_tuple)
        setattr_(self, "task_group", task_group)
        setattr_(self, "_backoff", schedule)
        setattr_(self, "_custom_backoff", backoff)

    @property
    def retryable_exceptions(self) -> tuple[type[Exception], ...]:
        """Sdax's name for :attr:`retry_on`."""
        return self.retry_on

    @property
    def has_task_group_argument(self) -> bool:
        """Sdax's name for :attr:`task_group`."""
        return self.task_group

    @property
    def backoff(self) -> Backoff:
        """The retry delay schedule.

        ``backoff=`` if it was given, else the ``headrace_core.backoff.exponential`` built
        from ``initial_delay``, ``backoff_factor`` and ``jitter``.
        """
        return self._backoff

    def replace(self, **changes: Any) -> TaskFunction[C_co]:
        """Return a copy with some options changed (validated like the constructor).

        Args:
            **changes: keyword arguments of the constructor.

        Returns:
            A new ``TaskFunction``.

        Raises:
            ConfigurationError: when a changed option is invalid.
        """
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "retries": self.retries,
            "initial_delay": self.initial_delay,
            "backoff_factor": self.backoff_factor,
            "jitter": self.jitter,
            "retry_on": self.retry_on,
            "guards": self.guards,
            "task_group": self.task_group,
            "backoff": self._custom_backoff,
        }
        options.update(changes)
        function = options.pop("function", self.function)
        return TaskFunction(function, **options)


def is_retryable(exc: BaseException, retry_on: tuple[type[Exception], ...]) -> bool:
    """Whether a failed attempt may be retried: every leaf is one of ``retry_on``."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = flatten_exceptions(exc)
        return bool(leaves) and all(isinstance(leaf, retry_on) for leaf in leaves)
    return isinstance(exc, retry_on)
