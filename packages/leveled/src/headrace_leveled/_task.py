"""``Task``: a named node with up to three phases, and sdax's helper constructors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, final, runtime_checkable

from headrace_core import ConfigurationError
from headrace_leveled._function import DEFAULT_RETRY_ON, PhaseGuard, TaskFunction

__all__ = [
    "SdaxTaskGroup",
    "Task",
    "join",
    "task",
    "task_func",
    "task_group_func",
    "task_group_task",
    "task_sync_func",
]

C = TypeVar("C")
K = TypeVar("K", bound=Hashable)


@runtime_checkable
class SdaxTaskGroup(Protocol):
    """The task group a ``task_group=True`` phase receives (an ``asyncio.TaskGroup``)."""

    def create_task(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None, context: Any = None
    ) -> Any:
        """Start ``coro`` as a child task that the phase awaits before it ends."""
        ...


@final
@dataclass(frozen=True)
class Task(Generic[C, K]):
    """A named task with optional ``pre_execute``, ``execute`` and ``post_execute`` phases.

    Each phase is a :class:`TaskFunction` or a plain ``async def fn(ctx)``. A task with no
    phase at all is a join node: it only orders the tasks around it.

    Attributes:
        name: the task's name, any hashable value (unique within a processor).
        pre_execute: runs first, by level or dependency; its start "enters" the task.
        execute: runs after every ``pre_execute`` of the run has succeeded.
        post_execute: runs, in reverse order, for every task that was entered.
    """

    name: K
    pre_execute: TaskFunction[C] | Callable[[C], Awaitable[Any]] | None = None
    execute: TaskFunction[C] | Callable[[C], Awaitable[Any]] | None = None
    post_execute: TaskFunction[C] | Callable[[C], Awaitable[Any]] | None = None


def task(
    name: K,
    *,
    pre_execute: TaskFunction[C] | Callable[[C], Awaitable[Any]] | None = None,
    execute: TaskFunction[C] | Callable[[C], Awaitable[Any]] | None = None,
    post_execute: TaskFunction[C] | Callable[[C], Awaitable[Any]] | None = None,
) -> Task[C, K]:
    """Build a :class:`Task` with at least one phase (sdax's ``task()``).

    Args:
        name: the task's name.
        pre_execute: the pre phase.
        execute: the execute phase.
        post_execute: the post phase.

    Returns:
        The task.

    Raises:
        ConfigurationError: when no phase is given (use :func:`join` for an empty node).
    """
    if pre_execute is None and execute is None and post_execute is None:
        raise ConfigurationError.argument_error(
            "name", name, "a task needs at least one phase; use join(name) for an empty node"
        )
    return Task(name, pre_execute, execute, post_execute)


def join(name: K) -> Task[Any, K]:
    """Build a join node: a task without phases that others can depend on.

    Args:
        name: the node's name.

    Returns:
        ``Task(name)``.
    """
    return Task(name)


def task_func(
    function: Callable[[C], Awaitable[Any]],
    *,
    timeout: float | None = None,
    retries: int = 0,
    initial_delay: float = 1.0,
    backoff_factor: float = 2.0,
    retryable_exceptions: Sequence[type[Exception]] = DEFAULT_RETRY_ON,
    jitter: bool = True,
    guards: Sequence[PhaseGuard] = (),
) -> TaskFunction[C]:
    """Build a :class:`TaskFunction` (sdax's ``task_func``).

    Args:
        function: ``async def fn(ctx)``.
        timeout: per-attempt deadline in seconds, or ``None``.
        retries: extra attempts.
        initial_delay: seconds before the first retry.
        backoff_factor: growth of the delay per retry.
        retryable_exceptions: the exception types that are retried.
        jitter: multiply each delay by ``uniform(0.5, 1.0)``.
        guards: guard objects, outermost first.

    Returns:
        The task function.

    Raises:
        ConfigurationError: when an option is invalid.
    """
    return TaskFunction(
        function,
        timeout=timeout,
        retries=retries,
        initial_delay=initial_delay,
        backoff_factor=backoff_factor,
        retryable_exceptions=retryable_exceptions,
        jitter=jitter,
        guards=guards,
    )


def task_group_func(
    function: Callable[[C, Any], Awaitable[Any]],
    *,
    timeout: float | None = None,
    retries: int = 0,
    initial_delay: float = 1.0,
    backoff_factor: float = 2.0,
    retryable_exceptions: Sequence[type[Exception]] = DEFAULT_RETRY_ON,
    jitter: bool = True,
    guards: Sequence[PhaseGuard] = (),
) -> TaskFunction[C]:
    """Build a ``TaskFunction(fn, task_group=True)``: ``fn(ctx, tg)`` gets a task group.

    The phase ends when ``fn`` and every child it started in ``tg`` have ended; each
    attempt gets a fresh group.

    Args:
        function: ``async def fn(ctx, tg)``.
        timeout: per-attempt deadline in seconds (children included), or ``None``.
        retries: extra attempts.
        initial_delay: seconds before the first retry.
        backoff_factor: growth of the delay per retry.
        retryable_exceptions: the exception types that are retried.
        jitter: multiply each delay by ``uniform(0.5, 1.0)``.
        guards: guard objects, outermost first.

    Returns:
        The task function.

    Raises:
        ConfigurationError: when an option is invalid.
    """
    return TaskFunction(
        function,
        timeout=timeout,
        retries=retries,
        initial_delay=initial_delay,
        backoff_factor=backoff_factor,
        retryable_exceptions=retryable_exceptions,
        jitter=jitter,
        guards=guards,
        task_group=True,
    )


#: sdax's older name of :func:`task_group_func`.
task_group_task = task_group_func


def task_sync_func(
    function: Callable[[C], Any],
    *,
    retries: int = 0,
    initial_delay: float = 1.0,
    backoff_factor: float = 2.0,
    retryable_exceptions: Sequence[type[Exception]] = DEFAULT_RETRY_ON,
    jitter: bool = True,
) -> TaskFunction[C]:
    """Run a synchronous ``fn(ctx)`` as a phase (it blocks the loop while it runs).

    Args:
        function: ``def fn(ctx)``; its return value is the phase's result.
        retries: extra attempts.
        initial_delay: seconds before the first retry.
        backoff_factor: growth of the delay per retry.
        retryable_exceptions: the exception types that are retried.
        jitter: multiply each delay by ``uniform(0.5, 1.0)``.

    Returns:
        The task function.

    Raises:
        ConfigurationError: when an option is invalid.
    """
    if not callable(function):
        raise ConfigurationError.argument_error("function", function, "must be callable")

    async def run_sync(ctx: C) -> Any:
        return function(ctx)

    run_sync.__name__ = getattr(function, "__name__", "run_sync")
    run_sync.__qualname__ = getattr(function, "__qualname__", "run_sync")
    return TaskFunction(
        run_sync,
        retries=retries,
        initial_delay=initial_delay,
        backoff_factor=backoff_factor,
        retryable_exceptions=retryable_exceptions,
        jitter=jitter,
    )
