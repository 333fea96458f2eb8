"""The worker loops: map, ordered, fan-out, batched, router, and ``Last``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from headrace_core.lowlevel import being_cancelled, safe_repr
from headrace_flow._calls import make_call
from headrace_flow._errors import Dropped, DropReason, TransformerError
from headrace_flow._markers import DROP, Last
from headrace_flow._queues import EOF, RETIRE, Final
from headrace_flow._stage_run import HOLE, Aborted, StageRun, note
from headrace_flow._stages import BATCHED, GEN, ROUTER, is_async_gen_callable

if TYPE_CHECKING:
    from headrace_flow._run import Run


async def worker(run: Run, st: StageRun) -> None:
    cm: Any = None
    gone = False
    try:
        if st.factory is not None:
            failure: BaseException | None = None
            fn: Any = None
            try:
                cm = st.factory()
                enter = getattr(cm, "__aenter__", None)
                if enter is None or not callable(getattr(cm, "__aexit__", None)):
                    raise TypeError(
                        f"the context manager factory of flow stage {st.name!r} returned "
                        f"{safe_repr(cm)}, not an async context manager"
                    )
                fn = await enter()
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    raise
                failure = exc
            if failure is not None:
                # this worker is gone before it started: count it out now, so that
                # concurrent failures see the true number of workers left
                st.workers -= 1
                gone = True
                await cm_failed(run, st, failure)
                return
            try:
                if not callable(fn):
                    raise TypeError(
                        f"the context manager of flow stage {st.name!r} gave "
                        f"{safe_repr(fn)}; its __aenter__ must return the async item function"
                    )
                if is_async_gen_callable(fn):
                    await gen_loop(run, st, fn)
                else:
                    await pick_loop(run, st, make_call(st, fn))
            finally:
                # The per-worker context manager always exits cleanly: item errors are
                # routed per item, and a stop is not the resource's failure.
                await cm.__aexit__(None, None, None)
        elif st.kind == GEN:
            await gen_loop(run, st, st.call)
        elif st.kind == BATCHED:
            await batch_loop(run, st)
        elif st.kind == ROUTER:
            await router_loop(run, st)
        else:
            await pick_loop(run, st, st.call)
    except Aborted:
        pass
    except asyncio.CancelledError as exc:
        if not being_cancelled():  # raised by user code (a context manager's exit), not a stop
            note(exc, f"raised in flow stage {st.name!r}")
            run.abort(exc)
    except BaseException as exc:  # a failing __aexit__, or KeyboardInterrupt & co.
        note(exc, f"raised in flow stage {st.name!r}")
        run.abort(exc)
    finally:
        st.tasks.discard(asyncio.current_task())
        if gone:
            run._maybe_finish(st)
        else:
            run._worker_exit(st)


async def cm_failed(run: Run, st: StageRun, exc: BaseException) -> None:
    st.errors += 1
    st.last_error = run.loop.time()
    try:
        await run.report(TransformerError(None, exc, st.name, run.loop.time()))
    except Aborted:
        return
    ch = st.input
    if st.workers <= 0 and not (ch.closed and not ch.size and not ch.finals):
        # never leave a stage without workers while items may wait
        note(exc, f"flow stage {st.name!r} has no worker left (context manager failed)")
        run.abort(exc)


async def pick_loop(run: Run, st: StageRun, call: Any) -> None:
    if st.ordered:
        await ordered_loop(run, st, call)
    else:
        await map_loop(run, st, call)


async def map_loop(run: Run, st: StageRun, call: Any) -> None:
    ch = st.input
    out = st.out
    out_stage = st.out_stage
    out_dynamic = out_stage is not None and out_stage.dynamic
    dynamic = st.dynamic
    is_sink = out is None
    while True:
        if st.workers > st.target or st.cut:
            return
        if ch.size:
            item = ch.take()
        else:
            item = await ch.wait()
            if item is EOF or item is RETIRE:
                return
            if item.__class__ is Final:
                await final_calls(run, st, call, item.values)
                continue
        st.busy += 1
        if dynamic:
            run.scale(st, tick=False, enqueue=False)
        try:
            result = await call(item)
        except (Exception, asyncio.CancelledError) as exc:
            # a CancelledError the stage raised itself (the run is not being cancelled)
            # is the item's failure, like any other
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            st.busy -= 1
            await run.failed_item(st, item, exc)
            continue
        st.busy -= 1
        st.processed += 1
        if result is DROP:
            st.filtered += 1
            run.filtered += 1
            continue
        if result.__class__ is Last:
            await last(run, st, result.value)
            return
        if is_sink:
            run.completed += 1
            continue
        if not out.try_put(result):  # type: ignore[union-attr]
            await out.put(result)  # type: ignore[union-attr]
        if out_dynamic:
            run.scale(out_stage, tick=False, enqueue=True)  # type: ignore[arg-type]


async def alone(run: Run, st: StageRun) -> None:
    """Wait until the current worker is the stage's last one.

    The others finish their items and leave (the channel is closed and empty): the final
    items are processed after everything else.
    """
    while st.workers > 1:
        waiter: asyncio.Future[None] = run.loop.create_future()
        st.final_waiter = waiter
        try:
            await waiter
        finally:
            st.final_waiter = None


async def final_calls(run: Run, st: StageRun, call: Any, values: list[Any]) -> None:
    """Process the final items (see ``Final``) alone; their results are the final outputs."""
    await alone(run, st)
    for value in values:
        await final_call(run, st, call, value)


async def final_call(run: Run, st: StageRun, call: Any, value: Any) -> None:
    st.busy += 1
    try:
        result = await call(value)
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise
        st.busy -= 1
        await run.failed_item(st, value, exc)
        return
    st.busy -= 1
    st.processed += 1
    if result is DROP:
        st.filtered += 1
        run.filtered += 1
        return
    if result.__class__ is Last:
        result = result.value  # already the final item
    pass_final(run, st, result)


def pass_final(run: Run, st: StageRun, value: Any) -> None:
    """Hand ``value`` on as the final output of ``st``: after everything else it emits."""
    out = st.out
    if out is None:
        run.completed += 1
    else:
        out.add_final(value)


async def emit(run: Run, st: StageRun, value: Any) -> None:
    out = st.out
    if out is None:
        run.completed += 1
        return
    if not out.try_put(value):
        await out.put(value)
    out_stage = st.out_stage
    if out_stage is not None and out_stage.dynamic:
        run.scale(out_stage, tick=False, enqueue=True)


async def ordered_loop(run: Run, st: StageRun, call: Any) -> None:
    ch = st.input
    loop = run.loop
    out = st.out
    out_stage = st.out_stage
    out_dynamic = out_stage is not None and out_stage.dynamic
    # the window bounds in-flight + held results; with a LIFO/priority queue the head
    # of the order may still wait in the queue, so only FIFO queues bound it
    fifo = ch.fifo
    while True:
        if st.workers > st.target or st.cut:
            return
        while fifo and st.taken - st.released >= max(st.target, 1):
            fut: asyncio.Future[None] = loop.create_future()
            st.window_waiters.append(fut)
            await fut
            if st.workers > st.target or st.cut:
                return
        if ch.size:
            entry = ch.take()
        else:
            entry = await ch.wait()
            if entry is EOF or entry is RETIRE:
                return
            if entry.__class__ is Final:
                # after every numbered item: the results go out after theirs
                await final_calls(run, st, call, entry.values)
                continue
        seq, item = entry
        st.taken += 1
        st.busy += 1
        if st.dynamic:
            run.scale(st, tick=False, enqueue=False)
        try:
            result = await call(item)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            st.busy -= 1
            st.buffer[seq] = HOLE
            await run.failed_item(st, item, exc)
            if await release(run, st):
                return
            continue
        st.busy -= 1
        st.processed += 1
        if st.cut:  # set by another worker meanwhile
            return  # type: ignore[unreachable]  # a Last released before this item: it is discarded
        if result is DROP:
            st.filtered += 1
            run.filtered += 1
            result = HOLE
        if seq == st.released and not st.emitting and result.__class__ is not Last:
            # the head of the line: emit at once, then whatever it unblocked
            st.emitting = True
            try:
                if result is not HOLE:
                    if out is None:
                        run.completed += 1
                    else:
                        if not out.try_put(result):
                            await out.put(result)
                        if out_dynamic:
                            run.scale(out_stage, tick=False, enqueue=True)  # type: ignore[arg-type]
                st.released += 1
                if st.window_waiters:
                    wake_window(run, st)
            finally:
                st.emitting = False
            if st.buffer and await release(run, st):
                return
            continue
        st.buffer[seq] = result
        if await release(run, st):
            return


async def release(run: Run, st: StageRun) -> bool:
    """Emit buffered results in order; return True when a ``Last`` was released."""
    if st.emitting or st.released not in st.buffer:
        return False
    st.emitting = True
    buffer = st.buffer
    try:
        while st.released in buffer:
            result = buffer.pop(st.released)
            if result.__class__ is Last:
                # everything after the Last is discarded
                buffer.clear()
                st.released += 1
                wake_window(run, st)
                await last(run, st, result.value)
                return True
            if result is not HOLE:
                await emit(run, st, result)
            st.released += 1
            wake_window(run, st)
    finally:
        st.emitting = False
    return False


def wake_window(run: Run, st: StageRun) -> None:
    waiters = st.window_waiters
    if waiters:
        st.window_waiters = []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


async def gen_loop(run: Run, st: StageRun, fn: Any) -> None:
    ch = st.input
    while True:
        if st.workers > st.target or st.cut:
            return
        if ch.size:
            item = ch.take()
        else:
            item = await ch.wait()
            if item is EOF or item is RETIRE:
                return
            if item.__class__ is Final:
                await alone(run, st)
                for value in item.values:
                    await spread(run, st, fn, value, True)
                continue
        if ch.sequenced:  # a context manager yielded a fan-out function to an ordered stage
            item = item[1]
        await spread(run, st, fn, item, False)


async def spread(run: Run, st: StageRun, fn: Any, item: Any, final: bool) -> None:
    """Run a fan-out stage on ``item``; emit (or pass on as finals) each value it yields."""
    st.busy += 1
    if st.dynamic:
        run.scale(st, tick=False, enqueue=False)
    count = 0
    try:
        agen = fn(item)
        try:
            async for value in agen:
                count += 1
                if count > 1:
                    run.extra += 1
                if final:
                    pass_final(run, st, value)
                else:
                    await emit(run, st, value)
        finally:
            await agen.aclose()
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise
        st.busy -= 1
        if count:
            run.extra += 1
        await run.failed_item(st, item, exc)
        return
    st.busy -= 1
    st.processed += 1
    if not count:
        st.filtered += 1
        run.filtered += 1


async def batch_loop(run: Run, st: StageRun) -> None:
    ch = st.input
    size = st.batch_size
    max_wait = st.max_wait
    batch: list[Any] = []
    final = False  # the batch holds a final item: it goes out as the final output
    deadline = 0.0
    while True:
        if st.cut:
            return
        if ch.size:
            item = ch.take()
        elif not batch or max_wait is None:
            item = await ch.wait()
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await ch.wait()
            except TimeoutError:
                await flush(run, st, batch, final)
                batch = []
                continue
        if item is EOF or item is RETIRE:
            break
        if item.__class__ is Final:
            final = True
            items: list[Any] = item.values
        else:
            items = [item]
        for one in items:
            batch.append(one)
            if len(batch) == 1 and max_wait is not None:
                deadline = run.loop.time() + max_wait
            if len(batch) >= size:
                await flush(run, st, batch, final)
                batch = []
    if batch:
        # a partial batch is flushed at the end; cancelled, its units stay counted as
        # discarded
        await flush(run, st, batch, final)


async def flush(run: Run, st: StageRun, batch: list[Any], final: bool = False) -> None:
    run.extra -= len(batch) - 1
    st.processed += 1
    if final:
        pass_final(run, st, batch)
    else:
        await emit(run, st, batch)


async def router_loop(run: Run, st: StageRun) -> None:
    ch = st.input
    while True:
        if st.workers > st.target or st.cut:
            return
        if ch.size:
            item = ch.take()
        else:
            item = await ch.wait()
            if item is EOF or item is RETIRE:
                return
            if item.__class__ is Final:
                await alone(run, st)
                for value in item.values:
                    await route(run, st, value, True)
                continue
        await route(run, st, item, False)


async def route(run: Run, st: StageRun, item: Any, final: bool) -> None:
    """Send ``item`` to the arm its label names (a final item as the arm's final one)."""
    st.busy += 1
    try:
        label = await st.call(item)
        # a label that is not an arm's name (or not a str at all) goes to the default
        default = st.default_target
        target = st.arm_targets.get(label, default) if isinstance(label, str) else default
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise
        st.busy -= 1
        await run.failed_item(st, item, exc)
        return
    st.busy -= 1
    st.processed += 1
    if target is None:
        st.filtered += 1
        run.filtered += 1
        await run.report(Dropped(item, st.name, DropReason.ROUTER_MISS, run.loop.time()))
    elif final:
        target.input.add_final(item)
    else:
        await run.put(target, target.input, item)


# -- Last ------------------------------------------------------------------------------
async def last(run: Run, st: StageRun, value: Any) -> None:
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
        pass_final(run, st, value)
        return
    current = asyncio.current_task()
    below = descendants(st)
    cut = [other for other in run.stages if other.index not in below]
    dropped: list[tuple[str, Any]] = []
    for other in cut:
        other.cut = True
        wake_window(run, other)  # ordered workers waiting for room see the cut
        dropped.extend((other.name, item) for item in other.input.drain_items())
        other.input.close()
    # everything below is synchronous up to the reports: a concurrent Last elsewhere
    # sees this one complete (its stage cut, its workers cancelled)
    pass_final(run, st, value)
    run.draining = True
    run.source_cut = True
    task = run.source_task
    if task is not None and not task.done() and task is not current:
        task.cancel()
    for other in cut:
        if other is not st:
            for t in list(other.tasks):
                if t is not current:
                    t.cancel()
            # a stage with no worker left (scaled to zero) finishes now
            run._maybe_finish(other)
    for name, item in dropped:
        await run.report(Dropped(item, name, DropReason.UPSTREAM_TERMINATED, run.loop.time()))


def descendants(st: StageRun) -> set[int]:
    seen: set[int] = set()
    todo = [st]
    while todo:
        node = todo.pop()
        for child in (node.out_stage, node.default_target, *node.arm_targets.values()):
            if child is not None and child.index not in seen:
                seen.add(child.index)
                todo.append(child)
    return seen
