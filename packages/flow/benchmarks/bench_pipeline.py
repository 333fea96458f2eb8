"""headrace-flow against flowrhythm, aiostream, pypeln and a hand-written queue pool.

Groups: ``trivial-wN`` push ITEMS items through three ``x + 1`` stages with N workers
per stage; ``sleep-w64`` pushes SLEEP_ITEMS items through three stages whose middle one
sleeps 1 ms, with 64 workers per stage; ``ordered-w16`` compares ``ordered=True`` with
unordered at 16 workers. Item counts are scaled down from the issue's 100k / 10k so that
the slow peers finish within minutes (see ITEMS, SLEEP_ITEMS). ``--quick`` (a smoke run)
pushes a twentieth of them through every row. ``--sleep-cpu [RUNS]`` runs no table: it
interleaves the ``sleep-w64`` row's headrace and floor cases and prints the wall and CPU
time per item of each run (see ``_sleep_cpu``); add ``--select`` to run it on a selector
loop whose idle waits have microsecond resolution (``select()``), not epoll's millisecond.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_flow import FixedScaling, flow, stage
from shared.bench import Bench, Result, import_pypeln

BENCH = Bench("flow: three-stage pipelines")

ITEMS = 20_000
SLEEP_ITEMS = 5_000
QUICK_DIVISOR = 20
_divisor = [1]  # QUICK_DIVISOR while a --quick run is under way
_DONE = object()


def _items(full: int) -> int:
    """Items per pipeline run: ``full``, or a QUICK_DIVISOR-th of it in a --quick run."""
    return max(1, full // _divisor[0])


async def inc(x: int) -> int:
    return x + 1


async def nap(x: int) -> int:
    await asyncio.sleep(0.001)
    return x + 1


async def sink(x: int) -> None:
    return None


async def source(n: int) -> Any:
    for i in range(n):
        yield i


async def floor_pool(n: int, workers: int, middle: Any) -> None:
    """Three stages of ``workers`` tasks each over bounded ``asyncio.Queue``s."""
    q1: asyncio.Queue[Any] = asyncio.Queue(1)
    q2: asyncio.Queue[Any] = asyncio.Queue(1)
    q3: asyncio.Queue[Any] = asyncio.Queue(1)

    async def work(fn: Any, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any] | None) -> None:
        while True:
            item = await inbox.get()
            if item is _DONE:
                await inbox.put(_DONE)  # let the siblings see it too
                return
            result = await fn(item)
            if outbox is not None:
                await outbox.put(result)

    async def stage_pool(fn: Any, inbox: asyncio.Queue[Any], outbox: Any) -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(work(fn, inbox, outbox))
        if outbox is not None:
            await outbox.put(_DONE)

    async def feed() -> None:
        for i in range(n):
            await q1.put(i)
        await q1.put(_DONE)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed())
        tg.create_task(stage_pool(inc, q1, q2))
        tg.create_task(stage_pool(middle, q2, q3))
        tg.create_task(stage_pool(sink, q3, None))


def headrace_flow(workers: int, middle: Any, *, ordered: bool = False) -> Any:
    return flow(
        stage(inc, workers=workers, ordered=ordered),
        stage(middle, name="middle", workers=workers, ordered=ordered),
        stage(sink, workers=workers),
    )


def flowrhythm_flow(workers: int, middle: Any) -> Any:
    import flowrhythm

    async def mid(x: int) -> Any:
        return await middle(x)

    chain = flowrhythm.flow(inc, mid, sink)
    for name in chain.stage_names:
        chain.configure(name, scaling=flowrhythm.FixedScaling(workers=workers))
    return chain


async def aiostream_run(n: int, workers: int, middle: Any) -> None:
    from aiostream import pipe, stream

    xs = (
        stream.iterate(range(n))
        | pipe.map(inc, ordered=False, task_limit=workers)
        | pipe.map(middle, ordered=False, task_limit=workers)
        | pipe.map(sink, ordered=False, task_limit=workers)
    )
    async with xs.stream() as streamer:
        async for _ in streamer:
            pass


async def pypeln_run(n: int, workers: int, middle: Any) -> None:
    pl = import_pypeln()

    stage1 = pl.task.map(inc, range(n), workers=workers, maxsize=1)
    stage2 = pl.task.map(middle, stage1, workers=workers, maxsize=1)
    stage3 = pl.task.map(sink, stage2, workers=workers, maxsize=1)
    await stage3


def _register(group: str, items: int, workers: int, middle: Any) -> None:
    f = headrace_flow(workers, middle)

    @BENCH.case(group, "headrace-flow", kind="headrace", ops=items)
    async def _headrace(n: int) -> None:
        k = _items(items)
        for _ in range(n):
            await f.run(range(k))

    @BENCH.case(group, "flowrhythm", kind="peer", ops=items, requires=("flowrhythm",))
    async def _flowrhythm(n: int) -> None:
        chain = flowrhythm_flow(workers, middle)
        k = _items(items)
        for _ in range(n):

            async def src() -> Any:
                for i in range(k):
                    yield i

            await chain.run(src)

    @BENCH.case(group, "aiostream", kind="peer", ops=items, requires=("aiostream",))
    async def _aiostream(n: int) -> None:
        for _ in range(n):
            await aiostream_run(_items(items), workers, middle)

    @BENCH.case(group, "pypeln", kind="peer", ops=items, requires=("pypeln",))
    async def _pypeln(n: int) -> None:
        for _ in range(n):
            await pypeln_run(_items(items), workers, middle)

    @BENCH.case(group, "asyncio.Queue pool", kind="floor", ops=items)
    async def _floor(n: int) -> None:
        for _ in range(n):
            await floor_pool(_items(items), workers, middle)


for _workers in (1, 4, 16):
    _register(f"trivial-w{_workers}", ITEMS, _workers, inc)
_register("sleep-w64", SLEEP_ITEMS, 64, nap)

_unordered = headrace_flow(16, inc)
_ordered = headrace_flow(16, inc, ordered=True)


@BENCH.case("ordered-w16", "headrace-flow unordered", kind="floor", ops=ITEMS)
async def _plain16(n: int) -> None:
    for _ in range(n):
        await _unordered.run(range(_items(ITEMS)))


@BENCH.case("ordered-w16", "headrace-flow ordered=True", kind="headrace", ops=ITEMS)
async def _ordered16(n: int) -> None:
    for _ in range(n):
        await _ordered.run(range(_items(ITEMS)))


_ = FixedScaling

# --quick: every row, with fewer items per run (and per-item times over those items).
_full_ops = [(case, case.ops) for case in BENCH.cases]
_run_async = BENCH.run_async


async def _run_scaled(
    *, quick: bool = False, only: str | None = None, log: Callable[[str], None] = print
) -> Result:
    _divisor[0] = QUICK_DIVISOR if quick else 1
    for case, ops in _full_ops:
        case.ops = _items(ops)
    return await _run_async(quick=quick, only=only, log=log)


BENCH.run_async = _run_scaled  # type: ignore[method-assign]


# -- diagnostics: --sleep-cpu [RUNS] ---------------------------------------------------------------
async def _sleep_cpu(runs: int) -> None:
    """The sleep-w64 row's two cases, interleaved: wall and CPU time per item of each run.

    A 1 ms sleep on asyncio's selector loop wakes no sooner than the next whole
    millisecond of idle wait (epoll's resolution, rounded up). A pipeline whose loop goes
    idle works in waves: all 64 sleepers wake together and each wave costs its CPU time
    plus 1 ms, about 1000/64 + CPU µs per item. One whose loop never goes idle (its CPU
    time per item near or above 1000/64 µs, and its sleeps spread out) runs at about its
    CPU time per item; the floor falls into either regime from run to run. Each line
    shows the regime a run was in (``waves`` when its wall time is nearer the first).
    With ``--select`` the loop waits in ``select()``, whose timeout has microsecond
    resolution: the waves disappear, and what is left is the kernel's timer slack.
    """
    import gc
    import statistics
    import time

    n = SLEEP_ITEMS
    f = headrace_flow(64, nap)
    cases: dict[str, Callable[[], Any]] = {
        "headrace-flow": lambda: f.run(range(n)),
        "asyncio.Queue pool": lambda: floor_pool(n, 64, nap),
    }
    walls: dict[str, list[float]] = {name: [] for name in cases}
    for start in cases.values():  # warm up
        await start()
    for i in range(runs):
        for name, start in cases.items():
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            await start()
            wall = (time.perf_counter() - wall) / n * 1e6
            cpu = (time.process_time() - cpu) / n * 1e6
            walls[name].append(wall)
            regime = "waves" if wall > cpu + 1000 / 128 else "no idle"
            print(
                f"run {i}: {name:20s} {wall:6.1f} µs/item wall, {cpu:5.1f} µs/item CPU "
                f"({regime}; waves would take ~{1000 / 64 + cpu:.1f})"
            )
    medians = {name: statistics.median(w) for name, w in walls.items()}
    print(
        "median wall: "
        + ", ".join(f"{name} {m:.1f} µs/item" for name, m in medians.items())
        + f"; headrace items/s = {medians['asyncio.Queue pool'] / medians['headrace-flow']:.2f}"
        " x the floor's"
    )


if __name__ == "__main__":
    if "--sleep-cpu" in sys.argv:
        at = sys.argv.index("--sleep-cpu")
        given = sys.argv[at + 1 : at + 2]
        runs = int(given[0]) if given and given[0].isdigit() else 7
        if "--select" in sys.argv:
            import selectors

            def fine_loop() -> asyncio.AbstractEventLoop:
                return asyncio.SelectorEventLoop(selectors.SelectSelector())

            with asyncio.Runner(loop_factory=fine_loop) as runner:
                runner.run(_sleep_cpu(runs))
        else:
            asyncio.run(_sleep_cpu(runs))
    else:
        BENCH.main()
