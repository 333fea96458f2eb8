"""The engine: one run of a flow (source task, worker tasks, channels, scaling timers)."""

from __future__ import annotations

import asyncio
import functools
import math
from types import MappingProxyType
from typing import Any

from headrace_core.lowlevel import being_cancelled, safe_repr
from headrace_core.stats import Listeners
from headrace_flow import _source, _workers
from headrace_flow._calls import make_call
from headrace_flow._errors import (
    Dropped,
    FlowClosed,
    ScaleEvent,
    TransformerError,
)
from headrace_flow._queues import Channel, QueueFactory
from headrace_flow._scaling import FixedScaling, UtilizationScaling, _LegacyAdapter, bounds
from headrace_flow._stage_run import (
    Aborted,
    Handler,
    StageRun,
    note,
    user_cancelled,
)
from headrace_flow._stages import BATCHED, CM, GEN, MAP, ROUTER
from headrace_flow._stats import FlowStats


class Run:
    """One execution of a flow: owns every task it starts and ends them all."""

    def __init__(
        self,
        plan: list[dict[str, Any]],
        *,
        handler: Handler | None,
        listeners: Listeners[Any],
        output: bool,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.listeners = listeners
        self.accepted = 0
        self.completed = 0
        self.failed = 0
        self.filtered = 0
        self.discarded = 0
        self.extra = 0  # fan-out adds, batching removes item units
        self.error: BaseException | None = None
        self.stopped = False
        self.ended = False
        self.draining = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.source_task: asyncio.Task[None] | None = None
        self.source_pulling = False
        self.source_cancel = False
        self.source_cut = False
        self.source_done = False
        self.push_complete = False
        self.finished = asyncio.Event()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.stages: list[StageRun] = []
        self._build(plan, output)

    # -- construction ------------------------------------------------------------------
    def _build(self, plan: list[dict[str, Any]], output: bool) -> None:
        loop = self.loop
        stages = self.stages
        for i, spec in enumerate(plan):
            st = StageRun(i, spec["name"], spec["kind"])
            st.options = spec["options"]
            strategy = spec["scaling"]
            st.strategy = strategy
            if st.kind == BATCHED:
                strategy = st.strategy = FixedScaling(1)
                st.batch_size = spec["size"]
                st.max_wait = spec["max_wait"]
            st.low, st.high = bounds(strategy)
            st.dynamic = not isinstance(strategy, FixedScaling)
            if isinstance(strategy, UtilizationScaling):
                st.tick = strategy.tick_period
                st.sampling_events = strategy.sampling_events
            elif st.dynamic:
                period = getattr(strategy, "sampling_period", None)
                st.tick = float(period) if isinstance(period, int | float) and period > 0 else 1.0
            st.ordered = bool(spec["ordered"])
            target = spec["target"]
            if st.kind == CM:
                st.factory = target
            elif st.kind == ROUTER:
                st.call = make_call(st, target)
            elif st.kind in (MAP, GEN):
                st.call = make_call(st, target) if st.kind == MAP else target
            st.input = Channel(loop, spec["queue"], spec["queue_size"], 0)
            st.input.sequenced = st.ordered and st.kind in (MAP, CM)
            stages.append(st)
        producers = [0] * len(plan)
        if plan:
            producers[0] = 1
        self.output: Channel | None = None
        if output:
            self.output = Channel(loop, _fifo(), 1, 0)
        tails = 0
        for st, spec in zip(stages, plan, strict=True):
            if st.kind == ROUTER:
                for label, j in spec["arms"].items():
                    st.arm_targets[label] = stages[j]
                    producers[j] += 1
                if spec["default"] is not None:
                    st.default_target = stages[spec["default"]]
                    producers[spec["default"]] += 1
                continue
            nxt = spec["next"]
            if nxt is not None:
                st.out_stage = stages[nxt]
                st.out = stages[nxt].input
                producers[nxt] += 1
            elif self.output is not None:
                st.out = self.output
                tails += 1
        for st, n in zip(stages, producers, strict=True):
            st.input.producers = n
            st.input.closed = n == 0
        if self.output is not None:
            self.output.producers = tails
            self.output.closed = tails == 0
        # ancestors (for Last): every stage that can reach this one
        parents: dict[int, list[int]] = {i: [] for i in range(len(stages))}
        for st in stages:
            for child in (st.out_stage, st.default_target, *st.arm_targets.values()):
                if child is not None:
                    parents[child.index].append(st.index)
        for st in stages:
            seen: set[int] = set()
            todo = list(parents[st.index])
            while todo:
                j = todo.pop()
                if j not in seen:
                    seen.add(j)
                    todo.extend(parents[j])
            st.ancestors = [stages[j] for j in sorted(seen)]

    # -- starting ------------------------------------------------------------------------
    def start(self, source: Any, *, push: bool = False) -> None:
        for st in self.stages:
            initial = worker_delta(st.strategy.initial_workers(), st.strategy, "initial_workers")
            st.target = min(max(initial, st.low), st.high)
            for _ in range(st.target):
                self._spawn(st)
            if st.dynamic:
                st.tick_handle = self.loop.call_later(st.tick, self._on_tick, st)
        if not self.stages:
            self._end()
            return
        if not push:
            task = self.loop.create_task(_source.pull_source(self, source))
            self.source_task = task
            self.tasks.add(task)
            task.add_done_callback(self._source_ended)
        self._check_all_finished()

    def _spawn(self, st: StageRun) -> None:
        st.workers += 1
        if st.workers > st.peak:
            st.peak = st.workers
        task = self.loop.create_task(_workers.worker(self, st))
        self.tasks.add(task)
        st.tasks.add(task)
        task.add_done_callback(functools.partial(self._worker_ended, st))

    def _worker_ended(self, st: StageRun, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task in st.tasks:
            # cancelled before it ever ran (a stop, or a Last, right after it started):
            # its own exit never ran, count it out here
            st.tasks.discard(task)
            self._worker_exit(st)

    def _source_ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.close_source()  # (done already, unless it was cancelled before it ran)

    # -- ending --------------------------------------------------------------------------
    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        for st in self.stages:
            if st.tick_handle is not None:
                st.tick_handle.cancel()
                st.tick_handle = None
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
        for st in self.stages:
            st.busy = 0  # a worker that ended by an error or a cancel was busy
        self.discarded = max(
            0, self.accepted + self.extra - self.completed - self.failed - self.filtered
        )
        self.finished.set()
        if cancelled:
            raise asyncio.CancelledError

    def is_own_task(self) -> bool:
        """Whether the current task is one of this run's tasks."""
        return asyncio.current_task() in self.tasks

    # -- stats ---------------------------------------------------------------------------
    def stats(self) -> FlowStats:
        now = self.loop.time()
        discarded = self.discarded
        return FlowStats(
            stages=MappingProxyType({st.name: st.snapshot(now) for st in self.stages}),
            accepted=self.accepted,
            completed=self.completed,
            failed=self.failed,
            filtered=self.filtered,
            discarded=discarded,
            running=not self.finished.is_set(),
        )

    # -- events --------------------------------------------------------------------------
    async def report(self, event: Any) -> None:
        """Give ``event`` to listeners and the handler; abort when there is no handler."""
        if self.listeners:
            try:
                self.listeners.emit(event)
            except BaseException as interrupt:  # KeyboardInterrupt/SystemExit of a listener
                self.abort(interrupt)
                raise Aborted from None
        handler = self.handler
        if handler is None:
            if isinstance(event, Dropped):
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

    async def failed_item(self, st: StageRun, item: Any, exc: BaseException) -> None:
        st.errors += 1
        st.last_error = self.loop.time()
        self.failed += 1
        await self.report(TransformerError(item, exc, st.name, self.loop.time()))

    # -- scaling -------------------------------------------------------------------------
    def _on_tick(self, st: StageRun) -> None:
        st.tick_handle = None
        if self.ended or st.finished:
            return
        try:
            self.scale(st, tick=True, enqueue=False)
        except Aborted:  # the strategy failed: the run has ended with its error
            return
        st.tick_handle = self.loop.call_later(st.tick, self._on_tick, st)

    def scale(self, st: StageRun, *, tick: bool, enqueue: bool) -> None:
        """Evaluate the strategy of a dynamic stage and apply its decision.

        Raises:
            Aborted: the strategy raised or returned a bad delta; the run has ended
                with that error.
        """
        if self.ended or st.cut:
            return
        now = self.loop.time()
        if st.workers == 0:
            # work waits and nobody takes it: one worker at once, whatever the strategy
            # or its cooldown says (so min_workers=0 works)
            if st.input.size > 0 or st.input.finals:
                self._resize(st, max(st.target, 1), now)
            return
        if not tick and st.sampling_events is not None:
            st.events += 1
            if st.events < st.sampling_events:
                return
            st.events = 0
        strategy = st.strategy
        if isinstance(strategy, UtilizationScaling):
            last = st.last_scale_up
            down = st.last_scale_down
            if last is None or (down is not None and down > last):
                last = down
            delta = strategy.evaluate(st.workers, st.busy, st.input.size, last, now)
        else:
            try:
                if isinstance(strategy, _LegacyAdapter):
                    if tick:
                        return
                    delta = strategy.legacy(st.snapshot(now), enqueue)
                else:
                    delta = strategy.decide(st.snapshot(now), now, tick)
                if delta.__class__ is not int:
                    delta = worker_delta(delta, strategy, "decide")
            except BaseException as exc:  # the user's strategy: its error ends the run
                note(exc, f"raised by the scaling strategy of flow stage {st.name!r}")
                self.abort(exc)
                raise Aborted from None
        if delta:
            self._resize(st, st.target + delta, now)

    def _resize(self, st: StageRun, wanted: int, now: float) -> None:
        wanted = min(max(wanted, st.low), st.high)
        before = st.target
        st.target = wanted
        if wanted > before:
            st.last_scale_up = now
        elif wanted < before:
            st.last_scale_down = now
            excess = st.workers - wanted
            while excess > 0 and st.input.retire_one():
                excess -= 1
        # also when the target is unchanged: workers that left (retired just before the
        # target went up again) are replaced
        while st.workers < wanted:
            self._spawn(st)
        if wanted != before and self.listeners:
            try:
                self.listeners.emit(ScaleEvent(st.name, before, wanted, now))
            except BaseException as exc:  # KeyboardInterrupt/SystemExit of a sync listener
                self.abort(exc)

    # -- stage completion ----------------------------------------------------------------
    def _worker_exit(self, st: StageRun) -> None:
        st.workers -= 1
        waiter = st.final_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self.ended and not st.cut:
            ch = st.input
            pending = ch.size or ch.finals
            if st.workers < st.target and (pending or not ch.closed):
                # it left for a retirement the target no longer wants (the target went
                # up again meanwhile): replace it
                self._spawn(st)
                return
            if not st.workers and pending:
                # the last worker left (scaled to zero) while work waits: one at once
                self._resize(st, max(st.target, 1), self.loop.time())
                return
        self._maybe_finish(st)

    def _maybe_finish(self, st: StageRun) -> None:
        ch = st.input
        if st.finished or st.workers or not ch.closed:
            return
        if ch.size or ch.finals:
            if st.cut:
                # items given back by workers cancelled by a Last: discarded (counted)
                try:
                    ch.drain_items()
                except BaseException as exc:  # a custom queue's failure
                    self.abort(exc)
                    return
            elif not self.ended:
                # work waits and no worker is left (scaled to zero): start one
                self._resize(st, max(st.target, 1), self.loop.time())
                return
            else:
                return
        st.finished = True
        if st.tick_handle is not None:
            st.tick_handle.cancel()
            st.tick_handle = None
        if st.kind == ROUTER:
            for child in {*st.arm_targets.values(), st.default_target}:
                if child is not None and child.input.close_one():
                    self._maybe_finish(child)
        elif st.out is not None and st.out.close_one() and st.out_stage is not None:
            self._maybe_finish(st.out_stage)
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
            self._maybe_finish(first)
        self._check_all_finished()

    # -- enqueue -------------------------------------------------------------------------
    async def put(self, st: StageRun, ch: Channel, item: Any) -> None:
        if not ch.try_put(item):
            await ch.put(item)
        if st.dynamic:
            self.scale(st, tick=False, enqueue=True)

    def drain(self) -> None:
        """Stop pulling from the source; finish everything already accepted."""
        if self.ended or self.draining:
            return
        self.draining = True
        task = self.source_task
        if task is not None and not task.done():
            if self.source_pulling:
                self.source_cancel = True
                task.cancel()
        elif task is None:
            self.close_source()


def _fifo() -> QueueFactory:
    from headrace_flow._queues import fifo_queue

    return fifo_queue


def worker_delta(value: Any, strategy: Any, method: str) -> int:
    """Return a strategy's worker count or delta as an int, or raise a clear error.

    Raises:
        TypeError: for anything but an int or a finite float (``None``, NaN, a string).
    """
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    raise TypeError(
        f"scaling strategy {safe_repr(strategy)}: {method}() returned {safe_repr(value)}; "
        "it must return an int"
    )
