"""Closing a ``Flow``: new runs are refused, the run in progress is drained."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

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


async def test_errors_drops_and_scaling_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def picky(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    seen: list[object] = []

    async def handler(event: object) -> None:
        seen.append(event)

    with caplog.at_level(logging.DEBUG, logger="headrace.flow"):
        await flow(picky, on_error=handler).run(range(4))
        with pytest.raises(ValueError, match="two"):
            await flow(picky).run(range(4))
    records: list[Any] = [
        r for r in caplog.records if getattr(r, "headrace_event", None) == "item_failed"
    ]
    handled, unhandled = records
    assert (handled.levelno, handled.headrace_handled) == (logging.DEBUG, True)
    assert (unhandled.levelno, unhandled.headrace_handled) == (logging.WARNING, False)
    assert unhandled.headrace_stage == "picky"
    assert unhandled.headrace_error_type == "ValueError"
    assert "the run ends" in unhandled.getMessage()
