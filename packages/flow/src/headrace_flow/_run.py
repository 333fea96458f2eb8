"""The engine: one run of a flow (source task, worker tasks, channels, scaling timers)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from types import MappingProxyType

from headrace_core import HeadraceError
from headrace_core.lowlevel import being_cancelled, safe_repr
from headrace_core.stats import Listeners
from headrace_flow._autoscale import Scaler
from headrace_flow._calls import make_call
from headrace_flow._channel import Channel
from headrace_flow._errors import (
    Dropped,
    DropReason,
    ErrorEvent,
    FlowClosed,
    FlowEvent,
    ScaleEvent,
    SourceError,
    TransformerError,
    event_logger,
    events,
)
from headrace_flow._lineage import Tracked, TrackedSource, finish
from headrace_flow._plan import Kind, Plan
from headrace_flow._queues import fifo_queue
from headrace_flow._source import Items, Source
from headrace_flow._state import (
    NO_ITEM,
    Aborted,
    Handler,
    StageRun,
    Tally,
    note,
    user_cancelled,
)
from headrace_flow._stats import FlowStats
from headrace_flow._worker import Worker


class Run:
    """One execution of a flow: owns every task it starts and ends them all."""

    def __init__(
        self,
        plan: Plan,
        *,
        handler: Handler | None,
        listeners: Listeners[FlowEvent],
        output: bool,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.plan = plan
        self.handler = handler
        self.listeners = listeners
        self.tally = Tally()
        self.error: BaseException | None = None
        self.stopped = False
        self.ended = False
        self.draining = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.source: Source | None = None
        self.tracker: TrackedSource | None = None  # a source acknowledging its items
        self.tracked = False
        self.source_done = False  # the source (or push handle) will put no more items
        self.finished = asyncio.Event()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.output = Channel(self.loop, fifo_queue, 1) if output else None
        self.stages = self._build(plan)

    # -- construction ------------------------------------------------------------------
    def _build(self, plan: Plan) -> list[StageRun]:
        loop = self.loop
        stages: list[StageRun] = []
        for spec in plan.stages:
            kind = spec.kind
            call = None
            if kind is Kind.MAP or kind is Kind.ROUTER:
                call = make_call(spec.name, spec.calls, spec.target)
            inbox = Channel(loop, spec.queue, spec.queue_size, numbered=spec.numbered)
            stages.append(StageRun(spec, inbox, Scaler(spec.scaling), call))
        for st in stages:
            spec = st.plan
            if spec.kind is Kind.ROUTER:
                st.routes = {label: stages[j] for label, j in spec.arms.items()}
                st.default = None if spec.default is None else stages[spec.default]
            elif spec.next is not None:
                st.out_stage = stages[spec.next]
                st.out = st.out_stage.input
            else:
                st.out = self.output
        for st, producers in zip(stages, plan.producers(), strict=True):
            st.input.set_producers(producers)
        if self.output is not None:
            self.output.set_producers(len(plan.tails()))
        return stages

    # -- starting ------------------------------------------------------------------------
    def start(self, items: Items, *, push: bool = False) -> None:
        """Start every stage's workers, then (unless fed by hand) the source task.

        Raises:
            Exception: what a strategy's ``initial_workers()`` raised (in the caller's task).
        """
        if isinstance(items, TrackedSource):
            self.tracker = items
            self.tracked = True
        for st in self.stages:
            scaler = st.scaler
            scaler.target = scaler.initial()
            for _ in range(scaler.target):
                self._spawn(st)
            if scaler.dynamic:
                scaler.tick_handle = self.loop.call_later(scaler.tick, self._on_tick, st)
        if not self.stages:
            self._end()
            return
        if not push:
            source = self.source = Source(self, self.stages[0])
            task = source.start(items)
            self.tasks.add(task)
            task.add_done_callback(self._source_ended)
        self._check_all_finished()

    def _spawn(self, st: StageRun) -> None:
        live = st.live
        live.workers += 1
        if live.workers > live.peak:
            live.peak = live.workers
        task = self.loop.create_task(Worker(self, st).run())
        self.tasks.add(task)
        st.tasks.add(task)
        task.add_done_callback(functools.partial(self._worker_ended, st))

    def _worker_ended(self, st: StageRun, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task in st.tasks:
            # cancelled before it ever ran (a stop, or a Last, right after it started):
            # its own exit never ran, count it out here
            st.tasks.discard(task)
            if not self.ended and not st.cut:
                # neither: someone else cancelled it (its exit would have said so)
                self.cancelled_outside(st, asyncio.CancelledError())
            self.worker_exit(st)

    def _source_ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.close_source()  # (done already, unless it was cancelled before it ran)

    # -- ending --------------------------------------------------------------------------
    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        for st in self.stages:
            st.scaler.stop_ticking()
        if self.output is not None:
            self.output.close()
        if self.stages:
            self.stages[0].input.fail_putters(FlowClosed("the run has ended"))
        if not self.done.done():
            self.done.set_result(None)

    def abort(self, error: BaseException) -> None:
        """End the run with ``error`` (the first one wins).

        A ``CancelledError`` that user code raised by itself (the run was not being
        cancelled) is wrapped in a ``HeadraceError`` chaining it: raised as is, it would
        read as a cancellation of the task awaiting ``run()``.
        """
        if self.ended:
            return
        if isinstance(error, asyncio.CancelledError):
            error = user_cancelled(error)
        self.error = error
        self._end()

    def cancelled_outside(
        self, st: StageRun | None, exc: asyncio.CancelledError, item: object = NO_ITEM
    ) -> None:
        """A task of the run was cancelled by someone else: the run ends with an error.

        Not by the run itself (its teardown after a stop, an abort, the end of the run or
        the cancellation of its caller; a ``Last``'s cut; a drain of the source): by a
        shutdown sweep over ``asyncio.all_tasks()``, say. The task obeys, so the run cannot
        go on whole: it aborts with a ``HeadraceError`` chaining ``exc``. ``st`` is the
        worker's stage (``None``: the source task), ``item`` what the task held. A worker's
        item counts as failed at its stage and a ``TransformerError`` goes to the listeners,
        like an error that ends a run; the source's cancellation is a ``SourceError`` (an
        item it had pulled and not handed on is discarded, named in the error). The handler
        is not asked: a cancellation is never an item's error to route, and the run ends
        whatever it would decide.
        """
        if self.ended:
            return
        now = self.loop.time()
        if isinstance(item, Tracked):
            item = item.item  # (not acknowledged: the run ends in error, it is delivered again)
        held = item is not NO_ITEM
        event: ErrorEvent | None = None
        if st is None:
            text = "the flow run's source task was cancelled from outside the run"
            if held:
                text += f" while it held item {safe_repr(item)}, which is discarded"
        else:
            text = f"a worker of flow stage {st.name!r} was cancelled from outside the run"
            if held:
                text += f" while it processed item {safe_repr(item)}"
        error = HeadraceError(text)
        error.__cause__ = exc
        if st is None:
            event = SourceError(error, now)
        elif held:
            self._count_failed(st, now)
            event = TransformerError(item, error, st.name, now)
        if event is not None:
            try:
                self._announce(event, handled=False)
            except Aborted:  # a listener's KeyboardInterrupt/SystemExit ended the run
                return
        self.abort(error)

    def stop(self) -> None:
        """End the run at once; what is in flight is discarded."""
        if self.ended:
            return
        self.stopped = True
        self._end()

    async def teardown(self) -> None:
        """Cancel every task of the run and wait until all have finished."""
        self._end()
        current = asyncio.current_task()
        cancelled = False
        while True:
            pending = [t for t in self.tasks if t is not current and not t.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:
                cancelled = True
        if self.listeners.pending:
            # async listeners are referenced until done; a run ends with none pending
            try:
                await self.listeners.aclose(timeout=5.0)
            except asyncio.CancelledError:
                cancelled = True
        tracker = self.tracker
        if tracker is not None:
            self.tracker = None
            try:
                await tracker.settle()
            except asyncio.CancelledError:
                if being_cancelled():
                    cancelled = True
                elif self.error is None:
                    self.error = user_cancelled(asyncio.CancelledError())
            except BaseException as exc:
                # the acknowledgements of completed items were not sent: they will be
                # delivered again, and the run says so (an interrupt reaches the caller)
                note(exc, "raised while the flow's source acknowledged the completed items")
                if self.error is None or not isinstance(exc, Exception):
                    self.error = exc
        for st in self.stages:
            st.live.busy = 0  # a worker that ended by an error or a cancel was busy
        tally = self.tally
        tally.discarded = max(
            0, tally.accepted + tally.extra - tally.completed - tally.failed - tally.filtered
        )
        self.finished.set()
        if cancelled:
            raise asyncio.CancelledError

    def is_own_task(self) -> bool:
        """Whether the current task is one of this run's tasks."""
        return asyncio.current_task() in self.tasks

    # -- stats ---------------------------------------------------------------------------
    def stats(self) -> FlowStats:
        """The run's stats now (final once it has finished)."""
        now = self.loop.time()
        tally = self.tally
        return FlowStats(
            stages=MappingProxyType({st.name: st.snapshot(now) for st in self.stages}),
            accepted=tally.accepted,
            completed=tally.completed,
            failed=tally.failed,
            filtered=tally.filtered,
            discarded=tally.discarded,
            running=not self.finished.is_set(),
            source_errors=tally.source_errors,
            drops=MappingProxyType(dict(tally.drops)),
            started=True,
        )

    # -- events --------------------------------------------------------------------------
    async def report(self, event: ErrorEvent) -> None:
        """Give ``event`` to listeners and the handler; abort when there is no handler.

        Raises:
            Aborted: the event ended the run (no handler, or the handler raised).
        """
        ticket = None
        if not isinstance(event, SourceError) and isinstance(event.item, Tracked):
            ticket = event.item.ticket
            event = dataclasses.replace(event, item=event.item.item)
        self._announce(event, handled=self.handler is not None)
        handler = self.handler
        if handler is None:
            if isinstance(event, Dropped):
                if ticket is not None:
                    ticket.done()
                return
            exc = event.exception
            if isinstance(event, TransformerError):
                note(
                    exc,
                    f"raised by flow stage {event.stage!r} on item {safe_repr(event.item)}",
                    kind="raised by flow stage ",
                )
            else:
                note(exc, "raised by the flow's source")
            self.abort(exc)
            raise Aborted
        try:
            await handler(event)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            note(exc, f"raised by the flow's error handler on {type(event).__name__}")
            self.abort(exc)
            raise Aborted from None
        if ticket is not None:
            ticket.done()  # the handler let the run go on: the item has left the pipeline

    def _announce(self, event: ErrorEvent, *, handled: bool) -> None:
        """Count ``event`` (a drop, a source error), log it and give it to the listeners.

        Raises:
            Aborted: a listener raised ``KeyboardInterrupt``/``SystemExit``; the run has
                ended with it.
        """
        tally = self.tally
        if isinstance(event, Dropped):
            tally.drops[event.reason] = tally.drops.get(event.reason, 0) + 1
        elif isinstance(event, SourceError):
            tally.source_errors += 1
        if event_logger.isEnabledFor(logging.WARNING):
            _log_event(event, handled=handled)
        if self.listeners:
            try:
                self.listeners.emit(event)
            except BaseException as interrupt:  # KeyboardInterrupt/SystemExit of a listener
                self.abort(interrupt)
                raise Aborted from None

    def _count_failed(self, st: StageRun, now: float) -> None:
        """Count an item as failed at ``st``."""
        st.live.errors += 1
        st.live.last_error = now
        self.tally.failed += 1

    async def failed_item(self, st: StageRun, item: object, exc: BaseException) -> None:
        """Count ``item`` as failed at ``st`` and report it."""
        now = self.loop.time()
        self._count_failed(st, now)
        await self.report(TransformerError(item, exc, st.name, now))

    # -- scaling -------------------------------------------------------------------------
    def _on_tick(self, st: StageRun) -> None:
        scaler = st.scaler
        scaler.tick_handle = None
        if self.ended or st.finished:
            return
        try:
            self.scale(st, tick=True, enqueue=False)
        except Aborted:  # the strategy failed: the run has ended with its error
            return
        scaler.tick_handle = self.loop.call_later(scaler.tick, self._on_tick, st)

    def scale(self, st: StageRun, *, tick: bool, enqueue: bool) -> None:
        """Evaluate the strategy of a dynamic stage and apply its decision.

        Raises:
            Aborted: the strategy raised or returned a bad delta; the run has ended
                with that error.
        """
        if self.ended or st.cut:
            return
        now = self.loop.time()
        scaler = st.scaler
        live = st.live
        if live.workers == 0:
            # work waits and nobody takes it: one worker at once, whatever the strategy
            # or its cooldown says (so min_workers=0 works)
            if st.input.pending():
                self._resize(st, max(scaler.target, 1), now)
            return
        try:
            delta = scaler.decide(
                live.workers,
                live.busy,
                st.input.size,
                st.snapshot,
                now,
                tick=tick,
                enqueue=enqueue,
            )
        except BaseException as exc:  # the user's strategy: its error ends the run
            note(exc, f"raised by the scaling strategy of flow stage {st.name!r}")
            self.abort(exc)
            raise Aborted from None
        if delta:
            self._resize(st, scaler.target + delta, now)

    def _resize(self, st: StageRun, wanted: int, now: float) -> None:
        scaler = st.scaler
        before = scaler.moved(wanted, now)
        wanted = scaler.target
        if st.order is not None:
            st.order.window(max(wanted, 1))  # an ordered stage's window follows the target
        if wanted < before:
            excess = st.live.workers - wanted
            while excess > 0 and st.input.retire_one():
                excess -= 1
        # also when the target is unchanged: workers that left (retired just before the
        # target went up again) are replaced
        while st.live.workers < wanted:
            self._spawn(st)
        if wanted != before and event_logger.isEnabledFor(logging.INFO):
            events.info(
                "stage %r scaled from %d to %d workers",
                st.name,
                before,
                wanted,
                kind="Flow",
                component=None,
                event="scaled",
                stage=st.name,
                workers=wanted,
                old_workers=before,
            )
        if wanted != before and self.listeners:
            try:
                self.listeners.emit(ScaleEvent(st.name, before, wanted, now))
            except BaseException as exc:  # KeyboardInterrupt/SystemExit of a sync listener
                self.abort(exc)

    # -- stage completion ----------------------------------------------------------------
    def worker_exit(self, st: StageRun) -> None:
        """A worker of ``st`` has left: replace it, or finish the stage."""
        st.live.workers -= 1
        waiter = st.final_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self.ended and not st.cut:
            ch = st.input
            pending = ch.pending()
            if st.live.workers < st.scaler.target and (pending or not ch.closed):
                # it left for a retirement the target no longer wants (the target went
                # up again meanwhile): replace it
                self._spawn(st)
                return
            if not st.live.workers and pending:
                # the last worker left (scaled to zero) while work waits: one at once
                self._resize(st, max(st.scaler.target, 1), self.loop.time())
                return
        self.maybe_finish(st)

    def maybe_finish(self, st: StageRun) -> None:
        """Finish ``st`` (close its outputs) once its input is closed and no worker is left."""
        ch = st.input
        if st.finished or st.live.workers or not ch.closed:
            return
        if ch.pending():
            if st.cut:
                # items given back by workers cancelled by a Last: discarded (counted)
                try:
                    ch.drain_items()
                except BaseException as exc:  # a custom queue's failure
                    self.abort(exc)
                    return
            elif not self.ended:
                # work waits and no worker is left (scaled to zero): start one
                self._resize(st, max(st.scaler.target, 1), self.loop.time())
                return
            else:
                return
        st.finished = True
        st.scaler.stop_ticking()
        if st.plan.kind is Kind.ROUTER:
            for child in {*st.routes.values(), st.default}:
                if child is not None and child.input.close_one():
                    self.maybe_finish(child)
        elif st.out is not None and st.out.close_one() and st.out_stage is not None:
            self.maybe_finish(st.out_stage)
        self._check_all_finished()

    def _check_all_finished(self) -> None:
        if self.ended:
            return
        if self.output is not None:
            return  # the consumer ends the run when the output channel is closed
        # a source cut by a Last is still closing (its aclose() may fail): the run ends
        # when it is done too
        if self.source_done and all(st.finished for st in self.stages):
            self._end()

    def close_source(self) -> None:
        """The source (or push handle) will put no more items."""
        if self.source_done:
            return
        self.source_done = True
        first = self.stages[0]
        if first.input.close_one():
            self.maybe_finish(first)
        self._check_all_finished()

    def drain(self) -> None:
        """Stop pulling from the source; finish everything already accepted."""
        if self.ended or self.draining:
            return
        self.draining = True
        if self.source is None:
            self.close_source()
        else:
            self.source.stop_pulling()

    # -- Last ------------------------------------------------------------------------------
    async def last(self, st: StageRun, value: object) -> None:
        """End the stream at ``st``: ``value`` becomes the last item every sink receives.

        Every stage that is not downstream of ``st`` is cut: its queue is discarded
        (``Dropped`` events), its workers are cancelled (``st``'s own busy workers finish
        their current item), and the source stops. ``value`` is handed on as the final item
        of ``st``'s output, which the next stage receives only after everything else, and so
        on down to the sinks: whatever the topology (router arms, sub-flows, several
        workers), nothing reaches a sink after it.
        """
        if st.cut:
            # a sibling worker of this stage returned Last first: this value is final too
            self._pass_final(st, value)
            return
        current = asyncio.current_task()
        below = self.plan.below(st.plan.index)
        cut = [other for other in self.stages if other.plan.index not in below]
        dropped: list[tuple[str, object]] = []
        for other in cut:
            other.cut = True
            dropped.extend((other.name, item) for item in other.input.drain_items())
            other.input.close()
        # everything below is synchronous up to the reports: a concurrent Last elsewhere
        # sees this one complete (its stage cut, its workers cancelled)
        self._pass_final(st, value)
        self.draining = True
        if self.source is not None:
            self.source.cut_off()
        for other in cut:
            if other is not st:
                for task in list(other.tasks):
                    if task is not current:
                        task.cancel()
                # a stage with no worker left (scaled to zero) finishes now
                self.maybe_finish(other)
        for name, item in dropped:
            await self.report(Dropped(item, name, DropReason.UPSTREAM_TERMINATED, self.loop.time()))

    def _pass_final(self, st: StageRun, value: object) -> None:
        out = st.out
        if out is None:
            self.tally.completed += 1
            finish(value)
        else:
            out.add_final(value)


def _log_event(event: ErrorEvent, *, handled: bool) -> None:
    """One item's error or drop at DEBUG; an error that ends the run (no handler) at WARNING."""
    if isinstance(event, Dropped):
        if not event_logger.isEnabledFor(logging.DEBUG):
            return
        events.debug(
            "item dropped by %r (%s)",
            event.stage,
            event.reason.name,
            kind="Flow",
            component=None,
            event="dropped",
            stage=event.stage,
            reason=event.reason.name,
        )
        return
    level = logging.DEBUG if handled else logging.WARNING
    if not event_logger.isEnabledFor(level):
        return
    if isinstance(event, TransformerError):
        where, stage = f"stage {event.stage!r}", event.stage
    else:
        where, stage = "the source", None
    events.log(
        level,
        "%s raised %s%s",
        where,
        type(event.exception).__name__,
        "" if handled else ": the run ends",
        kind="Flow",
        component=None,
        event="item_failed" if stage is not None else "source_failed",
        stage=stage,
        error_type=type(event.exception).__name__,
        handled=handled,
    )
