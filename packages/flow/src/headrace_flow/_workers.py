"""The worker loops: map, ordered, fan-out, batched, router, and ``Last``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from headrace_flow._calls import make_call
from headrace_flow._errors import Dropped, DropReason, TransformerError
from headrace_flow._markers import DROP, Last
from headrace_flow._queues import EOF, RETIRE
from headrace_flow._stage_run import HOLE, Aborted, StageRun, note
from headrace_flow._stages import BATCHED, GEN, ROUTER, is_async_gen_callable

if TYPE_CHECKING:
    from headrace_flow._run import Run


async def worker(run: Run, st: StageRun) -> None:
    cm: Any = None
    gone = False
    try:
        if st.factory is not None:
            try:
                cm = st.factory()
                fn = await cm.__aenter__()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # this worker is gone before it started: count it out now, so that
                # concurrent failures see the true number of workers left
                st.workers -= 1
                gone = True
                await cm_failed(run, st, exc)
                return
            try:
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
    except (Aborted, asyncio.CancelledError):
        pass
    except BaseException as exc:  # a failing __aexit__, or KeyboardInterrupt & co.
        note(exc, f"raised in flow stage {st.name!r}")
        run.abort(exc)
    finally:
        if gone:
            run._maybe_finish(st)
        else:
            run._worker_exit(st)


async def cm_failed(run: Run, st: StageRun, exc: Exception) -> None:
    st.errors += 1
    st.last_error = run.loop.time()
    try:
        await run.report(TransformerError(None, exc, st.name, run.loop.time()))
    except Aborted:
        return
    if st.workers <= 0 and not (st.input.closed and not st.input.size):
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
        st.busy += 1
        if dynamic:
            run.scale(st, tick=False, enqueue=False)
        try:
            result = await call(item)
        except Exception as exc:
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
        seq, item = entry
        st.taken += 1
        st.busy += 1
        if st.dynamic:
            run.scale(st, tick=False, enqueue=False)
        try:
            result = await call(item)
        except Exception as exc:
            st.busy -= 1
            st.buffer[seq] = HOLE
            await run.failed_item(st, item, exc)
            if await release(run, st):
                return
            continue
        st.busy -= 1
        st.processed += 1
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
        if ch.sequenced:  # a context manager yielded a fan-out function to an ordered stage
            item = item[1]
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
                    await emit(run, st, value)
            finally:
                await agen.aclose()
        except Exception as exc:
            st.busy -= 1
            if count:
                run.extra += 1
            await run.failed_item(st, item, exc)
            continue
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
    deadline = 0.0
    try:
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
                    await flush(run, st, batch)
                    batch = []
                    continue
            if item is EOF or item is RETIRE:
                break
            batch.append(item)
            if len(batch) == 1 and max_wait is not None:
                deadline = run.loop.time() + max_wait
            if len(batch) >= size:
                await flush(run, st, batch)
                batch = []
        if batch:
            await flush(run, st, batch)
            batch = []
    finally:
        if batch:
            pass  # cancelled: the units stay counted as discarded


async def flush(run: Run, st: StageRun, batch: list[Any]) -> None:
    run.extra -= len(batch) - 1
    st.processed += 1
    await emit(run, st, batch)


async def router_loop(run: Run, st: StageRun) -> None:
    ch = st.input
    call = st.call
    arms = st.arm_targets
    default = st.default_target
    while True:
        if st.workers > st.target or st.cut:
            return
        if ch.size:
            item = ch.take()
        else:
            item = await ch.wait()
            if item is EOF or item is RETIRE:
                return
        st.busy += 1
        try:
            label = await call(item)
        except Exception as exc:
            st.busy -= 1
            await run.failed_item(st, item, exc)
            continue
        st.busy -= 1
        st.processed += 1
        target = arms.get(label, default) if isinstance(label, str) else default
        if target is None:
            st.filtered += 1
            run.filtered += 1
            await run.report(Dropped(item, st.name, DropReason.ROUTER_MISS, run.loop.time()))
            continue
        await run.put(target, target.input, item)


# -- Last ------------------------------------------------------------------------------
async def last(run: Run, st: StageRun, value: Any) -> None:
    if st.cut:
        # a sibling already returned Last (or a downstream Last cut this stage): this
        # worker just finishes its current item
        await emit(run, st, value)
        return
    current = asyncio.current_task()
    # 1. cut everything that feeds this stage, or feeds the stage after it from
    #    another branch (sibling router arms): nothing may follow the final item
    below = descendants(st)
    cut = [*st.ancestors, st]
    if st.out_stage is not None:
        known = {s.index for s in cut}
        for other in st.out_stage.ancestors:
            if other.index not in known and other.index not in below:
                cut.append(other)
                known.add(other.index)
    dropped: list[tuple[str, Any]] = []
    for other in cut:
        other.cut = True
        wake_window(run, other)  # ordered workers waiting for room see the cut
        items = other.input.drain_items()
        if other.input.sequenced:
            items = [item for _, item in items]
        dropped.extend((other.name, item) for item in items)
        other.input.close()
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
    # 2. busy siblings of this stage finish their current item first
    if st.workers > 1:
        waiter: asyncio.Future[None] = run.loop.create_future()
        st.last_waiter = waiter
        await waiter
    # 3. the value goes downstream as the final item
    await emit(run, st, value)


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
