"""One stage in one run (plan, channels, live counters), and what its workers see of the run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeAlias

from headrace_core import HeadraceError
from headrace_flow._autoscale import Scaler
from headrace_flow._calls import ItemCall
from headrace_flow._channel import Channel
from headrace_flow._errors import DropReason, ErrorEvent
from headrace_flow._plan import StagePlan
from headrace_flow._reorder import Reorder
from headrace_flow._stats import StageStats

#: An error handler, adapted to take the event.
Handler: TypeAlias = Callable[[ErrorEvent], Awaitable[None]]


class Aborted(BaseException):
    """Internal: unwinds a worker after the run was aborted."""


#: No item in hand (a worker waiting for its next item, or handing one on).
NO_ITEM: Final = object()


class Counters:
    """A stage's live counters in one run (what its ``StageStats`` report)."""

    __slots__ = ("busy", "errors", "filtered", "last_error", "peak", "processed", "workers")

    def __init__(self) -> None:
        self.workers = 0  # live worker tasks (busy + idle)
        self.busy = 0
        self.peak = 0
        self.processed = 0
        self.errors = 0
        self.filtered = 0
        self.last_error: float | None = None


class Tally:
    """A run's item counters (what its ``FlowStats`` report).

    ``extra`` counts the item units a fan-out adds (and a batch removes), so that
    ``accepted + extra == completed + failed + filtered + discarded`` once the run ended.
    """

    __slots__ = (
        "accepted",
        "completed",
        "discarded",
        "drops",
        "extra",
        "failed",
        "filtered",
        "source_errors",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.completed = 0
        self.failed = 0
        self.filtered = 0
        self.discarded = 0
        self.extra = 0
        self.source_errors = 0  # SourceError events
        self.drops: dict[DropReason, int] = {}  # Dropped events by reason


class StageRun:
    """One stage in one run: its fixed plan and wiring, and the objects that change.

    Attributes:
        plan: the stage's settings (frozen).
        input: its input channel (numbered for an ordered stage).
        out: where its outputs go (the next stage's input, the output of ``iterate()``,
            or ``None`` for a sink); a router's outputs go to ``routes`` instead.
        out_stage: the stage behind ``out``, if any.
        routes: a router's arms by label; ``default``: its default arm.
        call: its item function with deadline and retries (a context manager's
            function is wrapped per worker).
        live: its counters.
        scaler: its worker count (target, strategy, timers).
        order: the release order of an ordered stage.
        tasks: its worker tasks.
        finished: every worker is gone and its input is closed: it closed its outputs.
        cut: a ``Last`` ended the stream and this stage is not downstream of it.
        final_waiter: a worker holding the final items waits here to be the last one.
    """

    __slots__ = (
        "call",
        "cut",
        "default",
        "final_waiter",
        "finished",
        "input",
        "live",
        "order",
        "out",
        "out_stage",
        "plan",
        "routes",
        "scaler",
        "tasks",
    )

    def __init__(
        self, plan: StagePlan, input: Channel, scaler: Scaler, call: ItemCall | None
    ) -> None:
        self.plan = plan
        self.input = input
        self.out: Channel | None = None
        self.out_stage: StageRun | None = None
        self.routes: dict[str, StageRun] = {}
        self.default: StageRun | None = None
        self.call = call
        self.live = Counters()
        self.scaler = scaler
        self.order = Reorder(input) if input.numbered else None
        self.tasks: set[asyncio.Task[None]] = set()
        self.finished = False
        self.cut = False
        self.final_waiter: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        """The stage's name."""
        return self.plan.name

    def snapshot(self, now: float) -> StageStats:
        """The stage's ``StageStats`` at loop time ``now``."""
        ch = self.input
        live = self.live
        scaler = self.scaler
        oldest = ch.oldest_time()
        return StageStats(
            name=self.plan.name,
            workers=live.workers,
            busy_workers=live.busy,
            idle_workers=live.workers - live.busy,
            queue_length=ch.size,
            processed=live.processed,
            errors=live.errors,
            filtered=live.filtered,
            peak_workers=live.peak,
            oldest_item_age=max(0.0, now - oldest) if oldest is not None else 0.0,
            last_enqueue_at=ch.last_put,
            last_dequeue_at=ch.last_get,
            last_scale_up_at=scaler.last_up,
            last_scale_down_at=scaler.last_down,
            last_error_at=live.last_error,
            oldest_item_enqueued_at=oldest,
            at=now,
            input_closed=ch.closed,
        )


class Engine(Protocol):
    """What workers and the source task use of their run."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The run's event loop."""
        ...

    @property
    def tally(self) -> Tally:
        """The run's item counters."""
        ...

    @property
    def ended(self) -> bool:
        """Whether the run has ended (stopped, aborted or finished)."""
        ...

    @property
    def tracked(self) -> bool:
        """Whether items travel with their lineage (a source that acknowledges them)."""
        ...

    @property
    def draining(self) -> bool:
        """Whether the source must stop pulling."""
        ...

    def abort(self, error: BaseException) -> None:
        """End the run with ``error`` (the first one wins)."""
        ...

    async def report(self, event: ErrorEvent) -> None:
        """Give ``event`` to listeners and the handler; raise ``Aborted`` if that ends the run."""
        ...

    async def failed_item(self, st: StageRun, item: object, exc: BaseException) -> None:
        """Count ``item`` as failed at ``st`` and report it."""
        ...

    def scale(self, st: StageRun, *, tick: bool, enqueue: bool) -> None:
        """Evaluate the strategy of a dynamic stage; raise ``Aborted`` if it failed."""
        ...

    async def last(self, st: StageRun, value: object) -> None:
        """End the stream at ``st`` (a worker returned ``Last(value)``)."""
        ...

    def cancelled_outside(
        self, st: StageRun | None, exc: asyncio.CancelledError, item: object = NO_ITEM
    ) -> None:
        """A task of the run (a worker of ``st``, or the source) was cancelled by someone else."""
        ...

    def worker_exit(self, st: StageRun) -> None:
        """A worker of ``st`` has left."""
        ...

    def maybe_finish(self, st: StageRun) -> None:
        """Finish ``st`` if its input is closed and no worker is left."""
        ...

    def close_source(self) -> None:
        """The source will put no more items."""
        ...


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
