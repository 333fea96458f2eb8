"""Errors of the processor: graph errors, phase timeouts, retryable errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

from headrace_core import ConfigurationError, GuardTimeout, HeadraceError
from headrace_core.lowlevel import safe_repr
from headrace_leveled._types import Phase

__all__ = [
    "CycleError",
    "GraphError",
    "PhaseTimeout",
    "RetryableError",
    "argument_error",
    "flatten_exceptions",
]


def argument_error(argument: str, value: object, reason: str) -> ConfigurationError:
    """``ConfigurationError.argument_error`` whose message survives a raising ``__repr__``."""
    return ConfigurationError(
        f"{argument}={safe_repr(value)}: {reason}", argument=argument, value=value
    )


def flatten_exceptions(exc: BaseException) -> list[BaseException]:
    """Return the leaf exceptions of ``exc``, nested exception groups flattened, in order.

    Args:
        exc: an exception, or an exception group of any depth.

    Returns:
        ``[exc]`` for a plain exception, else every leaf of the group, depth first.
    """
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
        else:
            leaves.append(current)
    return leaves


@final
class PhaseTimeout(GuardTimeout):
    """A phase call ran past its own deadline (``timeout=`` or ``cleanup_timeout=``).

    Also a ``TimeoutError`` and a ``GuardTimeout``. The message reads
    ``task 'A' pre_execute timed out after 2s``. A call that ignored the cancellation sent
    at its deadline is abandoned (see :attr:`abandoned`); its message then ends with
    ``and ignored its cancellation; abandoned``.

    Attributes:
        task: the task's name.
        phase: the phase that timed out.
        timeout: the deadline in seconds.
        abandoned: whether the call swallowed the cancellation sent at its deadline, so
            the run stopped waiting for it and closed its coroutine (never retried).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        task: Any = None,
        phase: Phase = Phase.EXECUTE,
        timeout: float = 0.0,
        abandoned: bool = False,
    ) -> None:
        self.task = task
        self.phase = phase
        self.abandoned = abandoned
        if message is None:
            message = f"task {safe_repr(task)} {phase.value} timed out after {timeout:g}s"
            if abandoned:
                message += " and ignored its cancellation; abandoned"
        super().__init__(message, timeout=timeout, name=None)


class GraphError(ConfigurationError):
    """The task graph is invalid: a dependency names a task that was never added.

    :class:`CycleError` is its subclass for cycles.

    Attributes:
        task: the task whose dependency is missing (``None`` for other graph errors).
        missing: the missing dependency's name.
    """

    def __init__(
        self,
        message: str,
        *,
        task: Any = None,
        missing: Any = None,
        argument: str | None = "depends_on",
        value: object = None,
    ) -> None:
        super().__init__(message, argument=argument, value=value)
        self.task = task
        self.missing = missing


@final
class CycleError(GraphError):
    """The task graph has a cycle (a task depending on itself included).

    Attributes:
        path: the names along the cycle, first name repeated at the end (``('a', 'b', 'a')``).
    """

    def __init__(self, path: Sequence[Any]) -> None:
        self.path = tuple(path)
        text = " -> ".join(safe_repr(name) for name in self.path)
        super().__init__(
            f"depends_on: dependency cycle {text}",
            task=self.path[0] if self.path else None,
            value=self.path,
        )


class RetryableError(HeadraceError):
    """Raise it (or a subclass) from a phase to ask for a retry under the default ``retry_on``.

    Unlike sdax's ``RetryableException`` it is an ``Exception``, so a retryable failure that
    runs out of attempts is still caught by ``except Exception``.
    """
