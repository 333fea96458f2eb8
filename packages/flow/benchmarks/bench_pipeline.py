"""headrace-flow against flowrhythm, aiostream, pypeln and a hand-written queue pool.

Groups: ``trivial-wN`` push ITEMS items through three ``x + 1`` stages with N workers
per stage; ``sleep-w64`` pushes SLEEP_ITEMS items through three stages whose middle one
sleeps 1 ms, with 64 workers per stage; ``ordered-w16`` compares ``ordered=True`` with
unordered at 16 workers. Item counts are scaled down from the issue's 100k / 10k so that
the slow peers finish within minutes (see ITEMS, SLEEP_ITEMS). ``--quick`` (a smoke run)
pushes a twentieth of them through every row.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_flow import FixedScaling, flow, stage
from shared.bench import Bench, Result

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


def _import_pypeln() -> Any:
    # pypeln imports stopit, which imports pkg_resources only to read its own version;
    # newer environments ship no pkg_resources, so give it a stand-in
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: F401
        except ImportError:
            import types

            shim = types.ModuleType("pkg_resources")

            def get_distribution(name: str) -> Any:
                raise LookupError(name)

            shim.get_distribution = get_distribution  # type: ignore[attr-defined]
            sys.modules["pkg_resources"] = shim
    import pypeln

    return pypeln


async def pypeln_run(n: int, workers: int, middle: Any) -> None:
    pl = _import_pypeln()

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

if __name__ == "__main__":
    BENCH.main()
