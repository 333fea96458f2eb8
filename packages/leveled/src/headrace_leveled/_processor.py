"""``Builder`` and ``Processor``: declare the graph once, run it any number of times."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Generic, Literal, NoReturn, Self, TypeVar, final

from headrace_core.lowlevel import check_int, check_optional_number, is_async_callable, safe_repr
from headrace_core.stats import Listener
from headrace_leveled._engine import EXEC, POST, PRE, Run, drive
from headrace_leveled._errors import argument_error
from headrace_leveled._function import TaskFunction
from headrace_leveled._observe import ProcessorEvent, ProcessorSnapshot, Runs
from headrace_leveled._plan import PHASES, Entry, Plan, compile_plan
from headrace_leveled._report import ProcessorError, RunReport
from headrace_leveled._task import Task
from headrace_leveled._types import Phase, TaskFailure

__all__ = ["Builder", "PhaseRunner", "Processor"]

C = TypeVar("C")
K = TypeVar("K", bound=Hashable)

_PHASE_FIELDS = ("pre_execute", "execute", "post_execute")


@final
class Builder(Generic[C, K]):
    """Collects tasks; ``build()`` validates the graph and returns an immutable processor.

    Tasks join by ``level=`` (every task of a level depends on every task of the nearest
    lower level), by ``depends_on=`` (explicit edges), or both. A rejected ``add_task``
    leaves the builder unchanged, and ``build()`` never changes it, so a builder can be
    fixed and built again.
    """

    __slots__ = ("_entries", "_names")

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._names: dict[Any, int] = {}

    def add_task(
        self, task: Task[C, K], level: int | None = None, *, depends_on: Iterable[K] = ()
    ) -> Self:
        """Add a task.

        Args:
            task: the task (its name must be new to this builder).
            level: its level, an ``int``; it then depends on every task of the nearest
                lower level. ``None``: only ``depends_on`` orders it.
            depends_on: names of tasks it depends on (checked at ``build()``).

        Returns:
            The builder, for chaining.

        Raises:
            ConfigurationError: when ``task`` is not a :class:`Task`, ``level`` is not an
                int (``bool`` included), ``depends_on`` is not an iterable of hashable
                names, a phase is neither a ``TaskFunction``, a callable nor ``None``, or
                the name is already taken.
        """
        if not isinstance(task, Task):
            raise argument_error("task", task, "must be a Task")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            raise argument_error("level", level, "must be an int or None")
        if isinstance(depends_on, str | bytes) or not isinstance(depends_on, Iterable):
            raise argument_error(
                "depends_on", depends_on, "must be an iterable of task names (not a str)"
            )
        deps = tuple(depends_on)
        for dep in deps:
            if not isinstance(dep, Hashable):
                raise argument_error("depends_on", deps, f"{safe_repr(dep)} is not hashable")
        name = task.name
        if not isinstance(name, Hashable):
            raise argument_error("name", name, "a task name must be hashable")
        for field in _PHASE_FIELDS:
            value = getattr(task, field)
            if value is not None and not isinstance(value, TaskFunction) and not callable(value):
                raise argument_error(
                    field,
                    value,
                    f"task {safe_repr(name)}: must be a TaskFunction, a callable or None",
                )
        # Everything that calls the names' __hash__/__eq__ runs before the builder changes,
        # so a name that raises leaves the builder as it was.
        unique = tuple(dict.fromkeys(deps))
        if name in self._names:
            raise argument_error("name", name, "a task with this name was already added")
        entry = Entry(task, level, unique)
        self._names[name] = len(self._entries)
        self._entries.append(entry)
        return self

    def build(
        self,
        *,
        execute_order: Literal["parallel", "dependencies"] = "parallel",
        max_concurrency: int | None = None,
        cleanup_timeout: float | None = None,
        on_cleanup_error: Callable[[TaskFailure[K]], None] | None = None,
        rng: random.Random | None = None,
    ) -> Processor[C, K]:
        """Validate the graph and build the processor.

        Args:
            execute_order: ``"parallel"`` (every execute at once, as sdax does) or
                ``"dependencies"`` (a task's execute starts after its dependencies'
                executes end).
            max_concurrency: the most phase calls running at once in one run (``>= 1``),
                or ``None`` for no cap.
            cleanup_timeout: the default timeout of each ``post_execute`` call that has
                none of its own (finite, ``> 0``); a post past it is cancelled and
                reported as :class:`PhaseTimeout`, and the remaining posts still run.
            on_cleanup_error: called once per ``post_execute`` failure, also when the run
                was cancelled (the failure is then not raised). Its exceptions are logged
                and ignored. Without it, failures hidden by a cancel are logged.
            rng: the ``random.Random`` that draws retry jitter (default: the ``random``
                module), for reproducible delays.

        Returns:
            An immutable :class:`Processor`.

        Raises:
            GraphError: when a dependency names a task that was never added.
            CycleError: when the dependencies form a cycle (a self-dependency included).
            ConfigurationError: when an option is invalid.
        """
        if execute_order not in ("parallel", "dependencies"):
            raise argument_error(
                "execute_order", execute_order, "must be 'parallel' or 'dependencies'"
            )
        if max_concurrency is not None:
            max_concurrency = check_int("max_concurrency", max_concurrency, ge=1)
        cleanup = check_optional_number("cleanup_timeout", cleanup_timeout, gt=0)
        if on_cleanup_error is not None and not callable(on_cleanup_error):
            raise argument_error("on_cleanup_error", on_cleanup_error, "must be callable or None")
        if is_async_callable(on_cleanup_error):  # called where nothing awaits it
            raise argument_error(
                "on_cleanup_error", on_cleanup_error, "must be a plain function, not async"
            )
        if rng is not None and not isinstance(rng, random.Random):
            raise argument_error("rng", rng, "must be a random.Random or None")
        plan = compile_plan(
            self._entries,
            execute_order=execute_order,
            max_concurrency=max_concurrency,
            cleanup_timeout=cleanup,
            on_cleanup_error=on_cleanup_error,
            rng=rng,
        )
        return Processor(plan, execute_order)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Builder {len(self._entries)} tasks>"


@final
class Processor(Generic[C, K]):
    """An immutable, validated task graph; each ``process_tasks(ctx)`` is an isolated run.

    Runs follow the elevator: ``pre_execute`` by level or dependency (a task starts as soon
    as its own dependencies are done), ``execute`` once every pre has succeeded, and
    ``post_execute`` in reverse for every task that was entered, shielded from
    cancellation. Safe to run concurrently; setting an attribute raises ``AttributeError``.

    Attributes:
        task_names: the task names in topological order.
        tasks: the tasks by name (read-only).
        execute_order: ``"parallel"`` or ``"dependencies"``.
        max_concurrency: the cap on phase calls running at once in one run, or ``None``.
        cleanup_timeout: the default per-post timeout, or ``None``.
    """

    __slots__ = ("_plan", "_runs", "execute_order", "task_names", "tasks")

    _plan: Plan
    _runs: Runs
    task_names: tuple[K, ...]
    tasks: Mapping[K, Task[C, K]]
    execute_order: Literal["parallel", "dependencies"]

    def __init__(self, plan: Plan, execute_order: Literal["parallel", "dependencies"]) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "_plan", plan)
        setattr_(self, "task_names", plan.order)
        setattr_(self, "tasks", MappingProxyType(dict(zip(plan.names, plan.tasks, strict=True))))
        setattr_(self, "execute_order", execute_order)
        setattr_(self, "_runs", Runs())

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Processor is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Processor is immutable; cannot delete {name!r}")

    @staticmethod
    def builder() -> Builder[Any, Any]:
        """Return a new :class:`Builder` (levels and dependencies in one builder).

        Returns:
            An empty builder.
        """
        return Builder()

    graph_builder = builder
    elevator_builder = builder

    @property
    def max_concurrency(self) -> int | None:
        """The cap on phase calls running at once in one run, or ``None``."""
        cap = self._plan.max_concurrency
        return None if cap >= 1 << 62 else cap

    @property
    def cleanup_timeout(self) -> float | None:
        """The default timeout of each ``post_execute`` without its own, or ``None``."""
        return self._plan.cleanup_timeout

    async def process_tasks(self, ctx: C) -> RunReport[C, K]:
        """Run every task once against ``ctx``.

        Bound the whole run with ``async with asyncio.timeout(s):`` around this call.

        Args:
            ctx: the context object passed to every phase.

        Returns:
            The run's :class:`RunReport`.

        Raises:
            ProcessorError: when a phase failed (after cleanup); flat, attributed leaves.
            asyncio.CancelledError: when the caller was cancelled (after cleanup, with the
                caller's ``cancelling()`` count untouched).
        """
        loop = asyncio.get_running_loop()
        runs = self._runs
        runs.start(loop)
        run: Run | None = None
        try:
            run = Run(self._plan, ctx, loop)
            await drive(run, run.run_all())
            report = _outcome(run)
        except BaseException as exc:
            runs.end(loop, None if run is None else RunReport(run), exc)
            raise
        runs.end(loop, report, None)
        return report

    def open(self, ctx: C) -> PhaseRunner[C, K]:
        """Return a runner that drives one run phase by phase (an async context manager).

        Args:
            ctx: the context object passed to every phase.

        Returns:
            A :class:`PhaseRunner`; ``async with p.open(ctx) as r: while await r.run_next(): ...``.

        Raises:
            Closed: when the processor is closed.
        """
        life = self._runs.life
        if life.closed:
            raise life.refuse()
        return PhaseRunner(self._plan, ctx, self._runs)

    # -- observing and closing ---------------------------------------------------------
    def snapshot(self) -> ProcessorSnapshot:
        """Return the runs so far (O(1), no await).

        Returns:
            A frozen :class:`ProcessorSnapshot`.
        """
        return self._runs.snapshot(len(self.task_names))

    def add_listener(self, callback: Listener[ProcessorEvent]) -> Callable[[], None]:
        """Call ``callback(event)`` when a run starts and when it ends (sync or async).

        A listener's exception is logged on ``headrace.leveled`` and never reaches a run.

        Args:
            callback: receives a :class:`ProcessorEvent`.

        Returns:
            A callable that removes the listener.

        Raises:
            TypeError: when ``callback`` is not callable.
        """
        return self._runs.listeners.add(callback)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: the processor starts no new run."""
        return self._runs.life.closed

    async def aclose(self) -> None:
        """Close the processor for good (the family's one ``aclose()``; idempotent).

        New runs (``process_tasks``, ``open``) raise :class:`~headrace_core.Closed`.
        Runs in progress are not interrupted: they finish, cleanup included, and this
        returns once they have; then once pending async listeners have ended (under a
        deadline, ``asyncio.timeout``, those still running are cancelled).
        ``snapshot()`` and ``add_listener()`` keep working.
        """
        runs = self._runs
        runs.life.close()
        await runs.life.wait_idle()
        await runs.listeners.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Processor {len(self.task_names)} tasks execute_order={self.execute_order!r}>"


def _outcome(run: Run) -> RunReport[Any, Any]:
    report: RunReport[Any, Any] = RunReport(run)
    if run.fatal is not None:
        raise run.fatal
    failures = report.failures
    if failures:
        raise _error(failures, report)
    if run.spontaneous:
        raise asyncio.CancelledError("a phase was cancelled without a cancel of the run")
    return report


def _error(failures: tuple[TaskFailure[Any], ...], report: RunReport[Any, Any]) -> ProcessorError:
    first = failures[0]
    if len(failures) == 1:
        message = f"1 task phase failed: {first}"
    else:
        message = f"{len(failures)} task phases failed; first: {first}"
    errors: list[Exception] = []
    for f in failures:
        assert isinstance(f.error, Exception)
        errors.append(f.error)
    return ProcessorError(message, errors, failures, report)


@final
class PhaseRunner(Generic[C, K]):
    """Drive one run phase by phase (sdax's ``AsyncPhaseRunner``).

    ``run_next()`` runs the next phase and returns whether another remains; failures are
    recorded, not raised, until the context exits (or ``raise_failures()``). Leaving the
    context early runs what cleanup needs: nothing if no phase ran, ``post_execute`` (and
    not ``execute``) if only ``pre_execute`` ran.
    """

    __slots__ = ("_closed", "_counted", "_ctx", "_last", "_next", "_plan", "_run", "_runs")

    def __init__(self, plan: Plan, ctx: C, runs: Runs | None = None) -> None:
        self._plan = plan
        self._ctx = ctx
        self._runs = runs
        self._counted = False  # whether this run is counted in the processor's runs
        self._run: Run | None = None
        self._next: Phase | None = Phase.PRE_EXECUTE
        self._last: Phase | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            self._closed = True
        if exc is None:
            self.raise_failures()

    async def run_next(self) -> bool:
        """Run the next phase.

        Returns:
            Whether another phase remains.

        Raises:
            RuntimeError: when the runner is closed.
            asyncio.CancelledError: when the caller was cancelled; a cancelled pre or
                execute leaves only ``post_execute`` to run, a post phase always completes.
        """
        if self._closed:
            raise RuntimeError("this phase runner is closed")
        phase = self._next
        if phase is None:
            return False
        run = self._run
        if run is None:
            loop = asyncio.get_running_loop()
            if self._runs is not None:
                self._runs.start(loop)  # Closed when the processor was closed meanwhile
                self._counted = True
            run = self._run = Run(self._plan, self._ctx, loop)
        self._last = phase
        index = PHASES.index(phase)
        try:
            await drive(run, run.run_phase(index))
        except asyncio.CancelledError as exc:
            self._next = None if index == POST else Phase.POST_EXECUTE
            if self._next is None:
                self._end(exc)
            raise
        if index == PRE and not run.stopping and self._plan.execute_nodes:
            self._next = Phase.EXECUTE
        elif index in (PRE, EXEC):
            self._next = Phase.POST_EXECUTE
        else:
            self._next = None
            self._end(None)
        if run.fatal is not None:
            raise run.fatal
        return self._next is not None

    def _end(self, error: BaseException | None) -> None:
        """Count the run as ended in the processor's runs (once)."""
        runs = self._runs
        if not self._counted or runs is None:
            return
        self._counted = False
        run = self._run
        report: RunReport[Any, Any] | None = None
        if run is not None:
            report = RunReport(run)
            if error is None and run.fatal is not None:
                error = run.fatal
            elif error is None and report.failures:
                error = _error(report.failures, report)
        runs.end(run.loop if run is not None else asyncio.get_running_loop(), report, error)

    def __del__(self) -> None:
        # A runner dropped mid-run never ends its run: stop counting it, so the
        # processor's aclose() does not wait for it forever.
        if self._counted and self._runs is not None:
            self._counted = False
            self._runs.life.leave()

    async def aclose(self) -> None:
        """Run the phases cleanup still needs, then close the runner."""
        if self._closed:
            return
        if self._run is None:
            self._closed = True
            return
        try:
            while self._next is not None:
                if self._next is Phase.EXECUTE and self._last is Phase.PRE_EXECUTE:
                    self._next = Phase.POST_EXECUTE
                await self.run_next()
        except BaseException as exc:
            if self._next is None:
                self._end(exc)
            raise
        self._closed = True

    def next_phase_id(self) -> Phase | None:
        """Return the phase the next ``run_next()`` runs, or ``None`` when done."""
        return self._next

    def last_phase_id(self) -> Phase | None:
        """Return the phase ``run_next()`` ran last, or ``None`` before the first."""
        return self._last

    def has_failures(self) -> bool:
        """Return whether any phase call failed so far."""
        run = self._run
        return run is not None and bool(run.primary or run.post_failures)

    def failures(self) -> list[BaseException]:
        """Return the exceptions of the failed phase calls so far (flat, primary first)."""
        run = self._run
        if run is None:
            return []
        return [f.error for f in (*run.primary, *run.post_failures)]

    def raise_failures(self) -> None:
        """Raise :class:`ProcessorError` if any phase call failed so far.

        Raises:
            ProcessorError: with every failure so far.
        """
        run = self._run
        if run is None:
            return
        report: RunReport[Any, Any] = RunReport(run)
        if report.failures:
            raise _error(report.failures, report)

    @property
    def report(self) -> RunReport[C, K]:
        """The run's report so far (complete once every phase ran)."""
        run = self._run
        if run is None:
            run = self._run = Run(self._plan, self._ctx, asyncio.get_running_loop())
        return RunReport(run)
