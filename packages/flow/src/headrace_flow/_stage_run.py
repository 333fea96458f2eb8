"""The live state of one stage in one run, and helpers shared by the engine's modules."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from headrace_core import HeadraceError
from headrace_flow._queues import Channel
from headrace_flow._stats import StageStats

Handler = Callable[[Any], Awaitable[None]]
HOLE: Any = object()


class Aborted(BaseException):
    """Internal: unwinds a worker after the run was aborted."""


class StageRun:
    """The live state of one stage in one run."""

    __slots__ = (
        "ancestors",
        "arm_targets",
        "batch_size",
        "buffer",
        "busy",
        "call",
        "cut",
        "default_target",
        "dynamic",
        "emitting",
        "errors",
        "events",
        "factory",
        "filtered",
        "final_waiter",
        "finished",
        "high",
        "index",
        "input",
        "kind",
        "last_error",
        "last_scale_down",
        "last_scale_up",
        "low",
        "max_wait",
        "name",
        "options",
        "ordered",
        "out",
        "out_stage",
        "peak",
        "processed",
        "released",
        "sampling_events",
        "strategy",
        "taken",
        "target",
        "tasks",
        "tick",
        "tick_handle",
        "window_waiters",
        "workers",
    )

    def __init__(self, index: int, name: str, kind: str) -> None:
        self.index = index
        self.name = name
        self.kind = kind
        self.input: Channel = None  # type: ignore[assignment]
        self.out: Channel | None = None
        self.out_stage: StageRun | None = None
        self.arm_targets: dict[str, StageRun] = {}
        self.default_target: StageRun | None = None
        self.ancestors: list[StageRun] = []
        self.call: Any = None
        self.factory: Any = None
        self.options: Any = None
        self.strategy: Any = None
        self.dynamic = False
        self.sampling_events: int | None = None
        self.events = 0
        self.tick = 1.0
        self.tick_handle: asyncio.TimerHandle | None = None
        self.low = 1
        self.high = 1
        self.target = 0
        self.workers = 0
        self.busy = 0
        self.peak = 0
        self.processed = 0
        self.errors = 0
        self.filtered = 0
        self.last_error: float | None = None
        self.last_scale_up: float | None = None
        self.last_scale_down: float | None = None
        self.finished = False
        self.cut = False
        # a worker holding the final items waits here until it is the stage's last one
        self.final_waiter: asyncio.Future[None] | None = None
        self.ordered = False
        self.taken = 0
        self.released = 0
        self.buffer: dict[int, Any] = {}
        self.emitting = False
        self.window_waiters: list[asyncio.Future[None]] = []
        self.batch_size = 0
        self.max_wait: float | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def snapshot(self, now: float) -> StageStats:
        ch = self.input
        oldest = ch.oldest_time()
        return StageStats(
            name=self.name,
            workers=self.workers,
            busy_workers=self.busy,
            idle_workers=self.workers - self.busy,
            queue_length=ch.size,
            processed=self.processed,
            errors=self.errors,
            filtered=self.filtered,
            peak_workers=self.peak,
            oldest_item_age=max(0.0, now - oldest) if oldest is not None else 0.0,
            last_enqueue_at=ch.last_put,
            last_dequeue_at=ch.last_get,
            last_scale_up_at=self.last_scale_up,
            last_scale_down_at=self.last_scale_down,
            last_error_at=self.last_error,
            oldest_item_enqueued_at=oldest,
            at=now,
        )


def note(exc: BaseException, text: str, kind: str | None = None) -> None:
    """Add ``text`` to the exception's notes, never failing and never piling up.

    A note of the same ``kind`` (the start of the text, by default all of it) that flow
    added before, in this run or an earlier one that raised the same exception object, is
    replaced, so an exception raised again gains no extra note per run. A note that cannot
    be added (an ``add_note`` or ``__notes__`` of the user's that raises) is skipped: the
    user's error is never replaced by the failure to annotate it.
    """
    prefix = text if kind is None else kind
    try:
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            if text in notes:
                return
            notes[:] = [n for n in notes if not (isinstance(n, str) and n.startswith(prefix))]
        exc.add_note(text)
    except (Exception, asyncio.CancelledError):  # best effort: the error itself matters
        pass


def user_cancelled(error: asyncio.CancelledError) -> HeadraceError:
    """The error a caller gets for a ``CancelledError`` user code raised by itself.

    Raised as is, it would read as a cancellation of the caller's task (and a task group
    would drop it silently); this ``HeadraceError`` chains it instead.
    """
    notes = getattr(error, "__notes__", None)
    where = "; ".join(n for n in notes if isinstance(n, str)) if isinstance(notes, list) else ""
    wrapped = HeadraceError(
        "user code raised CancelledError while the flow run was not being cancelled"
        + (f" ({where})" if where else "")
    )
    wrapped.__cause__ = error
    return wrapped
