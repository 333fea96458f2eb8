"""The small value types of a run: phases, task states and attributed failures."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar, final

from headrace_core.lowlevel import safe_repr

__all__ = ["Phase", "TaskFailure", "TaskState"]

K = TypeVar("K")


@final
class Phase(enum.Enum):
    """The three phases of a task, in the order a run enters them.

    ``PRE_EXEC``, ``EXECUTE`` and ``POST_EXEC`` are aliases kept for code written against
    sdax's ``PhaseId``.
    """

    PRE_EXECUTE = "pre_execute"
    EXECUTE = "execute"
    POST_EXECUTE = "post_execute"
    PRE_EXEC = PRE_EXECUTE
    POST_EXEC = POST_EXECUTE

    def __str__(self) -> str:
        return self.value


@final
class TaskState(enum.Enum):
    """How a task ended in one run.

    ``SUCCEEDED``: every phase of it that ran succeeded. ``FAILED``: one of its phases
    failed. ``CANCELLED``: one of its phases was cancelled (by fail-fast or by the caller).
    ``SKIPPED``: it never started.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@final
@dataclass(frozen=True, slots=True)
class TaskFailure(Generic[K]):
    """One failure of one phase of one task.

    Attributes:
        task: the task's name.
        phase: the phase that failed.
        error: the original exception object the phase raised.
    """

    task: K
    phase: Phase
    error: BaseException

    def __str__(self) -> str:
        return f"task {safe_repr(self.task)} {self.phase.value}: {safe_repr(self.error)}"
