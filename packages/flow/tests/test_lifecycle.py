"""Closing a ``Flow``: new runs are refused, the run in progress is drained."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from headrace_flow import FlowClosed, flow


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def test_a_started_run_is_drained_and_left_for_wait() -> None:
    pipeline = flow(_double)

    async def endless() -> object:
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0)

    pipeline.set_producer(endless)
    await pipeline.start()
    for _ in range(20):
        await asyncio.sleep(0)
    await pipeline.aclose()
    assert not pipeline.running
    stats = await pipeline.wait()
    assert stats.accepted >= 1
    assert stats.completed == stats.accepted  # drained: nothing taken in was lost
    with pytest.raises(FlowClosed):
        await pipeline.start()
    with pytest.raises(FlowClosed):
        async with pipeline.push():
            pass


async def test_closing_while_iterating_drains_without_waiting() -> None:
    pipeline = flow(_double)
    seen: list[int] = []
    async with contextlib.aclosing(pipeline.iterate(range(1000))) as results:
        async for value in results:
            seen.append(value)
            if len(seen) == 3:
                await pipeline.aclose()  # the consumer must keep reading: no wait here
    assert pipeline.closed
    assert seen[:3] == [0, 2, 4]
    assert len(seen) < 1000  # the source was not pulled to its end
    assert pipeline.stats().completed == len(seen)
