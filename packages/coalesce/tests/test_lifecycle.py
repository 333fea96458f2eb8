"""Closing a ``@batch`` function or a ``Loader``: windows are sent now, nothing is dropped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from headrace_coalesce import Loader, batch, collect
from headrace_core import Closed
from headrace_core.testing import VirtualClock


@pytest.mark.virtual_clock
async def test_closing_sends_an_open_batch_window_now(virtual_clock: VirtualClock) -> None:
    sizes: list[int] = []

    @batch(max_wait=60.0)
    async def double(x: int) -> list[int]:
        items = await collect(x)
        sizes.append(len(items))
        return [2 * i for i in items]

    calls = [asyncio.create_task(double(i)) for i in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    await double.aclose()
    assert [await c for c in calls] == [0, 2, 4]
    assert sizes == [3]
    assert virtual_clock.now() < 60.0  # the window did not run its course
    with pytest.raises(Closed):
        await double(1)
    assert double.stats().calls == 3


@pytest.mark.virtual_clock
async def test_closing_a_loader_loads_its_open_window_and_clears_the_cache(
    virtual_clock: VirtualClock,
) -> None:
    loaded: list[list[int]] = []

    async def load(keys: list[int]) -> list[str]:
        loaded.append(keys)
        await asyncio.sleep(1.0)
        return [str(k) for k in keys]

    loader: Loader[int, str] = Loader(load, max_wait=60.0)
    waiting = [asyncio.create_task(loader.load(k)) for k in (1, 2)]
    await asyncio.sleep(0)
    await loader.aclose()
    assert loaded == [[1, 2]]
    assert virtual_clock.now() == pytest.approx(1.0)  # the load ran, not the window
    assert [w.result() for w in waiting] == ["1", "2"]  # answered before aclose() returned
    assert repr(loader).endswith("cached=0>")
    with pytest.raises(Closed):
        await loader.load(1)
    with pytest.raises(Closed):
        await loader.load_many([1])


async def test_a_cancelled_caller_is_not_counted_as_running() -> None:
    gate = asyncio.Event()

    @batch
    async def fetch(x: int) -> list[int]:
        items = await collect(x)
        await gate.wait()
        return items

    calls = [asyncio.create_task(fetch(i)) for i in range(2)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for call in calls:
        call.cancel()
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
    await fetch.aclose()  # returns: nobody is left in flight
    assert fetch.closed


async def test_batches_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    @batch
    async def double(x: int) -> list[int]:
        items = await collect(x)
        return [2 * i for i in items]

    with caplog.at_level(logging.DEBUG, logger="headrace.coalesce"):
        assert list(await asyncio.gather(double(1), double(2))) == [2, 4]
    records: list[Any] = [r for r in caplog.records if r.name == "headrace.coalesce"]
    assert [r.headrace_event for r in records] == ["dispatched", "completed"]
    assert {r.headrace_kind for r in records} == {"@batch"}
    assert records[0].headrace_size == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="headrace.coalesce"):
        await asyncio.gather(double(1), double(2))
    assert [r for r in caplog.records if r.name == "headrace.coalesce"] == []
