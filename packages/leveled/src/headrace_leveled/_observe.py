"""What a ``Processor`` tells about its runs: a snapshot, events, and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, final

from headrace_core.lowlevel import Lifecycle, safe_repr
from headrace_core.stats import Listeners
from headrace_leveled._log import event_logger, events

if TYPE_CHECKING:
    from headrace_leveled._report import RunReport

__all__ = ["ProcessorEvent", "ProcessorSnapshot", "RunKind"]

RunKind = Literal["started", "succeeded", "failed", "cancelled"]


@final
@dataclass(frozen=True, slots=True)
class ProcessorSnapshot:
    """A processor's runs so far (``Processor.snapshot()``).

    Attributes:
        tasks: the tasks in the graph.
        runs: runs started (``process_tasks`` calls and ``open()`` runners that ran a phase).
        running: runs in progress.
        succeeded: runs that ended with every phase done.
        failed: runs that ended with a failed phase (a ``ProcessorError``) or another error.
        cancelled: runs whose caller was cancelled.
    """

    tasks: int
    runs: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


@final
@dataclass(frozen=True, slots=True)
class ProcessorEvent:
    """A run started or ended (to ``Processor.add_listener`` callbacks).

    Attributes:
        kind: ``"started"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
        at: the loop time of the event.
        report: the run's report (``None`` for ``"started"``; a ``"cancelled"`` or
            ``"failed"`` run reports what it did before it ended).
        error: what the run raised (``None`` for ``"started"`` and ``"succeeded"``).
    """

    kind: RunKind
    at: float
    report: RunReport[Any, Any] | None = None
    error: BaseException | None = None


@final
class Runs:
    """A processor's mutable side: its lifecycle, listeners and run counters."""

    __slots__ = ("cancelled", "failed", "life", "listeners", "runs", "succeeded")

    def __init__(self) -> None:
        self.life = Lifecycle("Processor")
        self.listeners: Listeners[ProcessorEvent] = Listeners("headrace.leveled", "Processor")
        self.runs = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count a run that starts now.

        Raises:
            Closed: when the processor is closed.
            BaseException: a sync listener's ``KeyboardInterrupt`` or ``SystemExit`` (the
                run is then counted as failed and does not start).
        """
        self.life.enter()
        self.runs += 1
        if self.listeners.active:
            try:
                self.listeners.emit(ProcessorEvent("started", loop.time()))
            except BaseException:  # a listener's KeyboardInterrupt: the run never starts
                self.failed += 1
                self.life.leave()
                raise

    def end(
        self,
        loop: asyncio.AbstractEventLoop,
        report: RunReport[Any, Any] | None,
        error: BaseException | None,
    ) -> None:
        """Count a run that ended with ``error`` (``None``: it succeeded)."""
        kind: RunKind
        if error is None:
            kind = "succeeded"
            self.succeeded += 1
        elif isinstance(error, asyncio.CancelledError):
            kind = "cancelled"
            self.cancelled += 1
        else:
            kind = "failed"
            self.failed += 1
        self.life.leave()
        level = logging.WARNING if kind == "failed" else logging.DEBUG
        if event_logger.isEnabledFor(level):
            _log_end(kind, level, report, error)
        if self.listeners.active:
            self.listeners.emit(ProcessorEvent(kind, loop.time(), report, error))

    def snapshot(self, tasks: int) -> ProcessorSnapshot:
        """Return the counters as a :class:`ProcessorSnapshot`."""
        return ProcessorSnapshot(
            tasks=tasks,
            runs=self.runs,
            running=self.life.running,
            succeeded=self.succeeded,
            failed=self.failed,
            cancelled=self.cancelled,
        )


def _log_end(
    kind: RunKind, level: int, report: RunReport[Any, Any] | None, error: BaseException | None
) -> None:
    failures = report.failures if report is not None else ()
    if kind == "failed":
        first = failures[0] if failures else None
        events.log(
            level,
            "run failed: %d task phase(s) failed, first %s",
            len(failures),
            "none" if first is None else f"{first.phase.value} of {safe_repr(first.task)}",
            kind="Processor",
            component=None,
            event="run_failed",
            failures=len(failures),
            error_type=type(error).__name__ if error is not None else None,
        )
    else:
        events.log(level, "run %s", kind, kind="Processor", component=None, event=f"run_{kind}")
