"""What a run reports (per task and phase), and the error group a failed run raises."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, final, overload

from headrace_core import HeadraceError
from headrace_leveled._errors import flatten_exceptions
from headrace_leveled._plan import PHASES
from headrace_leveled._types import Phase, TaskFailure, TaskState

if TYPE_CHECKING:
    from headrace_leveled._engine import Run

__all__ = ["PhaseReport", "ProcessorError", "RunReport", "TaskReport"]

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")
_E = TypeVar("_E", bound=Exception)
_B = TypeVar("_B", bound=BaseException)

_STATES = (None, None, TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


@final
@dataclass(frozen=True, slots=True)
class PhaseReport:
    """One phase of one task in one run (times read from the loop clock).

    Attributes:
        started: loop time when the phase's first attempt started.
        ended: loop time when the phase ended.
        duration: ``ended - started`` in seconds.
        attempts: calls made in this phase (``1`` without retries).
        result: the phase's return value (``None`` unless it succeeded).
        error: the exception it ended with (``None`` unless it failed).
        state: ``SUCCEEDED``, ``FAILED`` or ``CANCELLED``.
    """

    started: float
    ended: float
    duration: float
    attempts: int
    result: Any = None
    error: BaseException | None = None
    state: TaskState = TaskState.SUCCEEDED


@final
@dataclass(frozen=True, slots=True)
class TaskReport(Generic[K]):
    """One task in one run.

    Attributes:
        name: the task's name.
        state: how the task ended (see :class:`TaskState`).
        phases: the phases of the task that started, keyed by :class:`Phase`.
        result: the return value of its ``execute`` (``None`` if it has none or it did not
            succeed).
        entered: whether the task was entered (so its ``post_execute``, if any, ran).
    """

    name: K
    state: TaskState
    phases: Mapping[Phase, PhaseReport] = field(default_factory=dict)
    result: Any = None
    entered: bool = False


@final
class RunReport(Generic[C, K]):
    """The report of one run of a processor; built lazily, so an unread report is cheap.

    Attributes:
        started: loop time when the run started.
        ended: loop time when the run ended (cleanup included).
        duration: ``ended - started`` in seconds.
    """

    __slots__ = ("_failures", "_results", "_run", "_tasks", "ended", "started")

    def __init__(self, run: Run) -> None:
        self._run: Run | None = run
        self._tasks: dict[K, TaskReport[K]] | None = None
        self._results: dict[K, Any] | None = None
        self._failures: tuple[TaskFailure[K], ...] = tuple(run.primary) + tuple(run.post_failures)
        self.started: float = run.started
        self.ended: float = run.ended

    @classmethod
    def detached(cls, failures: tuple[TaskFailure[Any], ...] = ()) -> RunReport[Any, Any]:
        """Return an empty report (for a :class:`ProcessorError` built by hand).

        Args:
            failures: the failures the report lists.

        Returns:
            A report with no tasks, started and ended at 0.
        """
        report: RunReport[Any, Any] = cls.__new__(cls)
        report._run = None
        report._tasks = {}
        report._results = {}
        report._failures = failures
        report.started = report.ended = 0.0
        return report

    @property
    def duration(self) -> float:
        """``ended - started`` in seconds, cleanup included."""
        return self.ended - self.started

    @property
    def tasks(self) -> dict[K, TaskReport[K]]:
        """A :class:`TaskReport` for every task of the processor, in the order added."""
        if self._tasks is None:
            self._materialize()
        assert self._tasks is not None
        return self._tasks

    @property
    def results(self) -> dict[K, Any]:
        """The return value of every ``execute`` that succeeded, by task name."""
        if self._results is None:
            self._materialize()
        assert self._results is not None
        return self._results

    @property
    def failures(self) -> tuple[TaskFailure[K], ...]:
        """Every failure of the run, primary (pre/execute) first, then post failures."""
        return self._failures

    @property
    def succeeded(self) -> bool:
        """Whether every task succeeded (nothing failed, was cancelled or skipped)."""
        return all(t.state is TaskState.SUCCEEDED for t in self.tasks.values())

    def _materialize(self) -> None:
        run = self._run
        assert run is not None
        plan = run.plan
        n = plan.n_tasks
        status, t_start, t_end, value, attempts = (
            run.status,
            run.t_start,
            run.t_end,
            run.value,
            run.attempts,
        )
        tasks: dict[Any, TaskReport[Any]] = {}
        results: dict[Any, Any] = {}
        for i, name in enumerate(plan.names):
            phases: dict[Phase, PhaseReport] = {}
            failed = cancelled = False
            for p, phase in enumerate(PHASES):
                k = p * n + i
                code = status[k]
                if not code:
                    continue
                state = _STATES[code] or TaskState.CANCELLED
                started, ended = t_start[k], t_end[k]
                ok = state is TaskState.SUCCEEDED
                bad = state is TaskState.FAILED
                failed = failed or bad
                cancelled = cancelled or state is TaskState.CANCELLED
                phases[phase] = PhaseReport(
                    started,
                    ended,
                    ended - started,
                    attempts.get(k, 1),
                    value[k] if ok else None,
                    value[k] if bad else None,
                    state,
                )
            entered = bool(run.entered[i])
            if failed:
                task_state = TaskState.FAILED
            elif cancelled:
                task_state = TaskState.CANCELLED
            elif phases:
                task_state = TaskState.SUCCEEDED
            else:
                task = plan.tasks[i]
                empty = task.pre_execute is None and task.execute is None
                empty = empty and task.post_execute is None
                task_state = TaskState.SUCCEEDED if entered and empty else TaskState.SKIPPED
            execute = phases.get(Phase.EXECUTE)
            result = None
            if execute is not None and execute.state is TaskState.SUCCEEDED:
                result = execute.result
                results[name] = result
            tasks[name] = TaskReport(name, task_state, phases, result, entered)
        self._tasks = tasks
        self._results = results
        self._run = None

    def timeline(self, width: int = 40) -> str:
        """Render the run as a text timeline: one row per phase that ran.

        Args:
            width: the number of columns of the bar area.

        Returns:
            The timeline, one line per row, times relative to the run's start.
        """
        rows: list[tuple[str, str, float, float, str]] = []
        for report in self.tasks.values():
            for which, pr in report.phases.items():
                rows.append((repr(report.name), which.value, pr.started, pr.ended, pr.state.value))
        rows.sort(key=lambda r: (r[2], r[3]))
        span = self.duration or 1.0
        name_w = max([len(r[0]) for r in rows] + [4])
        lines = [f"{'task':<{name_w}}  {'phase':<12}  {'start':>7}  {'end':>7}  state"]
        for name, label, started, ended, state in rows:
            a = round((started - self.started) / span * width)
            b = max(a + 1, round((ended - self.started) / span * width))
            bar = " " * a + "#" * (b - a)
            lines.append(
                f"{name:<{name_w}}  {label:<12}  {started - self.started:7.3f}  "
                f"{ended - self.started:7.3f}  {state:<9}  |{bar:<{width}}|"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for t in self.tasks.values():
            states[t.state.value] = states.get(t.state.value, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in states.items())
        return f"<RunReport {len(self.tasks)} tasks ({summary}) in {self.duration:g}s>"


@final
class ProcessorError(ExceptionGroup[Exception], HeadraceError):
    """A run failed: one leaf per original exception, flat, attributed to task and phase.

    Leaves are the exception objects the phases raised (never wrapped), primary failures
    (``pre_execute`` and ``execute``) before ``post_execute`` failures; each leaf carries a
    note naming its task and phase, and ``except* KeyError`` works as usual.

    Attributes:
        failures: one :class:`TaskFailure` per leaf, in the same order.
        report: the :class:`RunReport` of the failed run.
    """

    failures: tuple[TaskFailure[Any], ...]
    report: RunReport[Any, Any]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        failures: Iterable[TaskFailure[Any]] = (),
        report: RunReport[Any, Any] | None = None,
    ) -> Self:
        self = super().__new__(cls, message, exceptions)
        self.failures = tuple(failures)
        if report is None:
            report = RunReport.detached(self.failures)
        self.report = report
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        failures: Iterable[TaskFailure[Any]] = (),
        report: RunReport[Any, Any] | None = None,
    ) -> None:
        super().__init__(message, exceptions)

    @overload
    def derive(self, excs: Sequence[_E], /) -> ExceptionGroup[_E]: ...

    @overload
    def derive(self, excs: Sequence[_B], /) -> BaseExceptionGroup[_B]: ...

    def derive(self, excs: Sequence[BaseException], /) -> BaseExceptionGroup[Any]:
        """Build the group ``split()``/``except*`` return for a subset of the leaves.

        Args:
            excs: the leaves to keep.

        Returns:
            A ``ProcessorError`` with the same message and report, and the failures of
            the kept leaves.
        """
        keep = {id(e) for e in excs}
        failures = [f for f in self.failures if id(f.error) in keep]
        errors = [e for e in excs if isinstance(e, Exception)]
        if len(errors) != len(excs):
            return BaseExceptionGroup(self.message, excs)
        return ProcessorError(self.message, errors, failures, self.report)

    def leaf_exceptions(self) -> list[BaseException]:
        """Return the leaf exceptions (sdax's name; the leaves are already flat)."""
        return flatten_exceptions(self)

    def flatten_exceptions(self) -> list[BaseException]:
        """Return the leaf exceptions (same as :meth:`leaf_exceptions`)."""
        return flatten_exceptions(self)
