"""Zero-work pre + execute + post per task, by level shape, against sdax, anyio and raw asyncio.

µs/op is microseconds per task (three phases). Groups: ``L x W`` = L levels of W tasks.
The ``+timeout`` groups put a timeout on every phase; their floor is headrace without one,
so "× floor" is the cost of the timeouts.

Run: ``python packages/leveled/benchmarks/bench_levels.py``
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_leveled import Processor, Task, TaskFunction
from shared.bench import Bench


def _sdax_label() -> str:
    try:
        return f"sdax {importlib.metadata.version('sdax')}"
    except importlib.metadata.PackageNotFoundError:
        return "sdax"


SDAX = _sdax_label()
BENCH = Bench("leveled: zero-work pre+execute+post per task")

SHAPES = [(100, 10), (10, 10), (1, 1000), (1000, 1)]
TIMEOUT = 60.0


async def noop(ctx: Any) -> None:
    return None


def headrace_processor(
    levels: int, width: int, timeout: float | None = None
) -> Processor[Any, Any]:
    fn: Any = noop if timeout is None else TaskFunction(noop, timeout=timeout)
    builder = Processor.builder()
    for level in range(levels):
        for i in range(width):
            builder.add_task(Task((level, i), fn, fn, fn), level=level)
    return builder.build()


def sdax_processor(levels: int, width: int, timeout: float | None = None) -> Any:
    from sdax import AsyncTask, AsyncTaskProcessor
    from sdax import TaskFunction as SdaxFunction

    fn = SdaxFunction(noop, timeout=timeout)
    builder = AsyncTaskProcessor.builder()
    for level in range(levels):
        for i in range(width):
            builder.add_task(AsyncTask(f"{level}-{i}", fn, fn, fn), level)
    return builder.build()


async def raw_run(levels: int, width: int) -> None:
    # A TaskGroup per level, an execute TaskGroup, post TaskGroups in reverse; no bookkeeping.
    for _ in range(levels):
        async with asyncio.TaskGroup() as tg:
            for _ in range(width):
                tg.create_task(noop(None))
    async with asyncio.TaskGroup() as tg:
        for _ in range(levels * width):
            tg.create_task(noop(None))
    for _ in range(levels):
        async with asyncio.TaskGroup() as tg:
            for _ in range(width):
                tg.create_task(noop(None))


async def _timed(timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await noop(None)


async def raw_timeout_run(levels: int, width: int) -> None:
    for _ in range(levels):
        async with asyncio.TaskGroup() as tg:
            for _ in range(width):
                tg.create_task(_timed(TIMEOUT))
    async with asyncio.TaskGroup() as tg:
        for _ in range(levels * width):
            tg.create_task(_timed(TIMEOUT))
    for _ in range(levels):
        async with asyncio.TaskGroup() as tg:
            for _ in range(width):
                tg.create_task(_timed(TIMEOUT))


async def floor_run(levels: int, width: int) -> None:
    # Full cleanup bookkeeping with an AsyncExitStack; one-task levels awaited directly.
    async with AsyncExitStack() as stack:
        for _ in range(levels):
            if width == 1:
                await noop(None)
            else:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(width):
                        tg.create_task(noop(None))
            stack.push_async_callback(_post_level, width)
        if levels * width == 1:
            await noop(None)
        else:
            async with asyncio.TaskGroup() as tg:
                for _ in range(levels * width):
                    tg.create_task(noop(None))


async def _post_level(width: int) -> None:
    if width == 1:
        await noop(None)
        return
    async with asyncio.TaskGroup() as tg:
        for _ in range(width):
            tg.create_task(noop(None))


async def anyio_run(levels: int, width: int) -> None:
    import anyio

    for _ in range(levels):
        async with anyio.create_task_group() as tg:
            for _ in range(width):
                tg.start_soon(noop, None)
    async with anyio.create_task_group() as tg:
        for _ in range(levels * width):
            tg.start_soon(noop, None)
    for _ in range(levels):
        async with anyio.create_task_group() as tg:
            for _ in range(width):
                tg.start_soon(noop, None)


def register(levels: int, width: int) -> None:
    group = f"{levels} x {width}"
    ops = levels * width
    processor = headrace_processor(levels, width)

    @BENCH.case(group, "headrace_leveled", kind="headrace", ops=ops)
    async def headrace(n: int) -> None:
        for _ in range(n):
            await processor.process_tasks(None)

    peers: dict[str, Any] = {}

    @BENCH.case(group, SDAX, kind="peer", ops=ops, requires=("sdax",))
    async def sdax(n: int) -> None:
        peer = peers.get("sdax") or peers.setdefault("sdax", sdax_processor(levels, width))
        for _ in range(n):
            await peer.process_tasks(None)

    @BENCH.case(group, "anyio task groups", kind="peer", ops=ops, requires=("anyio",))
    async def anyio_case(n: int) -> None:
        for _ in range(n):
            await anyio_run(levels, width)

    @BENCH.case(group, "raw asyncio (TaskGroup per level)", kind="raw", ops=ops)
    async def raw(n: int) -> None:
        for _ in range(n):
            await raw_run(levels, width)

    @BENCH.case(group, "floor (AsyncExitStack, inline 1-task levels)", kind="floor", ops=ops)
    async def floor(n: int) -> None:
        for _ in range(n):
            await floor_run(levels, width)


def register_timeout(levels: int, width: int) -> None:
    group = f"{levels} x {width} +timeout"
    ops = levels * width
    timed = headrace_processor(levels, width, TIMEOUT)
    plain = headrace_processor(levels, width)

    @BENCH.case(group, "headrace_leveled, timeout on every phase", kind="headrace", ops=ops)
    async def headrace(n: int) -> None:
        for _ in range(n):
            await timed.process_tasks(None)

    @BENCH.case(group, "headrace_leveled, no timeout (reference)", kind="floor", ops=ops)
    async def reference(n: int) -> None:
        for _ in range(n):
            await plain.process_tasks(None)

    peers: dict[str, Any] = {}

    @BENCH.case(group, f"{SDAX}, timeout (wait_for)", kind="peer", ops=ops, requires=("sdax",))
    async def sdax(n: int) -> None:
        peer = peers.get("sdax") or peers.setdefault("sdax", sdax_processor(levels, width, TIMEOUT))
        for _ in range(n):
            await peer.process_tasks(None)

    @BENCH.case(group, "raw asyncio + asyncio.timeout", kind="raw", ops=ops)
    async def raw(n: int) -> None:
        for _ in range(n):
            await raw_timeout_run(levels, width)


def register_width(width: int) -> None:
    # Per-task cost must stay flat as one level grows (no O(n^2) bookkeeping).
    group = f"1 x {width} (width scaling)"
    processor = headrace_processor(1, width)

    @BENCH.case(group, "headrace_leveled", kind="headrace", ops=width)
    async def headrace(n: int) -> None:
        for _ in range(n):
            await processor.process_tasks(None)

    @BENCH.case(group, "raw asyncio (TaskGroup per level)", kind="raw", ops=width)
    async def raw(n: int) -> None:
        for _ in range(n):
            await raw_run(1, width)


for _levels, _width in SHAPES:
    register(_levels, _width)
register_timeout(100, 10)
register_timeout(1000, 1)
register_width(250)
register_width(4000)


if __name__ == "__main__":
    BENCH.main()
