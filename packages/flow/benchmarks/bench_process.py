"""A CPU-bound stage in worker processes: headrace-flow, pypeln and a hand-written pool.

Each item is about 1 ms of pure-Python work (``shared.flow_workers.spin``). Groups
``cpu-pN`` run ITEMS items through N worker processes, pool start included (each run starts
its processes, as a flow run does); the floor is a hand-written ``ProcessPoolExecutor``
loop keeping N items in flight. "x floor" is the cost of the process hop and of flow's
bookkeeping; comparing the groups gives the speed-up from one process to two.

Run: ``python packages/flow/benchmarks/bench_process.py [--quick]``
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_flow import flow, process_stage
from shared.bench import Bench, Result, import_pypeln
from shared.flow_workers import spin

BENCH = Bench("flow: a CPU-bound stage in worker processes (about 1 ms per item)")

ITEMS = 1000
QUICK_ITEMS = 40
WORK = 1000  # spin(WORK) is about 1 ms of work on this machine
_items = [ITEMS]


async def _sink(x: int) -> None:
    return None


async def floor_pool(processes: int) -> None:
    """``ProcessPoolExecutor`` with ``processes`` workers, ``processes`` items in flight."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: set[asyncio.Future[int]] = set()
        for _ in range(_items[0]):
            if len(pending) >= processes:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(loop.run_in_executor(pool, spin, WORK))
        await asyncio.gather(*pending)


def _pypeln(processes: int) -> None:
    pl = import_pypeln()
    list(pl.process.map(spin, [WORK] * _items[0], workers=processes, maxsize=processes))


for _processes in (1, 2):
    group = f"cpu-p{_processes}"

    def _register(processes: int, group: str) -> None:
        pipeline = flow(process_stage(spin, workers=processes, name="spin"), _sink)

        @BENCH.case(group, "ProcessPoolExecutor loop", kind="floor", ops=ITEMS)
        async def _floor(n: int) -> None:
            for _ in range(n):
                await floor_pool(processes)

        @BENCH.case(group, "headrace-flow process_stage", kind="headrace", ops=ITEMS)
        async def _headrace(n: int) -> None:
            for _ in range(n):
                await pipeline.run([WORK] * _items[0])

        @BENCH.case(group, "pypeln process.map", kind="peer", ops=ITEMS, requires=("pypeln",))
        async def _peer(n: int) -> None:
            for _ in range(n):
                await asyncio.to_thread(_pypeln, processes)

    _register(_processes, group)

_run_async = BENCH.run_async


async def _run_scaled(
    *, quick: bool = False, only: str | None = None, log: Callable[[str], None] = print
) -> Result:
    _items[0] = QUICK_ITEMS if quick else ITEMS
    for case in BENCH.cases:
        case.ops = _items[0]
    return await _run_async(quick=quick, only=only, log=log)


BENCH.run_async = _run_scaled  # type: ignore[method-assign]

if __name__ == "__main__":
    BENCH.main()
