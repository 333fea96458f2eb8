"""CoalesceStats and listener events: the precise counting rules of the spec."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import pytest

from headrace_coalesce import CoalesceEvent, CoalesceStats, Loader, batch, collect
from headrace_core.testing import VirtualClock


async def test_in_flight_counts_bulk_calls_not_callers() -> None:
    with VirtualClock():
        seen: list[int] = []

        @batch(max_size=2)
        async def get(k: int) -> list[int]:
            ids = await collect(k)
            await asyncio.sleep(1)
            seen.append(get.stats().in_flight)
            return ids

        tasks = [asyncio.create_task(get(i)) for i in range(4)]
        await asyncio.sleep(0.5)
        assert get.stats().in_flight == 2
        await asyncio.gather(*tasks)
        assert seen[0] == 2
        assert get.stats().in_flight == 0


async def test_items_exclude_cancelled_and_duplicates() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return await collect(k)

    tasks = [asyncio.create_task(get(k)) for k in (1, 1, 2, 3)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = get.stats()
    assert stats == CoalesceStats(
        calls=4,
        batches=1,
        items=2,
        deduplicated=1,
        failed_batches=0,
        cancelled=1,
        in_flight=0,
        batch_sizes={2: 1},
        cache_hits=0,
    )
    assert dataclasses.asdict(stats)["batch_sizes"] == {2: 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls = 0  # type: ignore[misc]


async def test_snapshot_is_frozen_in_time() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return await collect(k)

    before = get.stats()
    await get(1)
    assert before.calls == 0
    assert get.stats().calls == 1
    assert before.batch_sizes == {}


async def test_failed_batches_counts_raised_and_misshaped() -> None:
    @batch
    async def get(k: int) -> list[int]:
        ids = await collect(k)
        if ids == [0]:
            raise ValueError
        return [] if ids == [1] else ids

    for k in (0, 1, 2):
        with contextlib.suppress(ValueError, TypeError):
            await get(k)
    assert get.stats().failed_batches == 2
    assert get.stats().batches == 3


async def test_loader_cache_hits_include_pending_entries() -> None:
    async def fn(keys: list[int]) -> list[int]:
        return keys

    loader: Loader[int, int] = Loader(fn)
    await asyncio.gather(loader.load(1), loader.load(1), loader.load(2))
    await loader.load(2)
    stats = loader.stats()
    assert stats.cache_hits == 2
    assert stats.items == 2
    assert stats.calls == 4


async def test_events_carry_loop_time_size_and_name() -> None:
    with VirtualClock() as clock:
        events: list[CoalesceEvent] = []

        @batch(max_wait=0.25)
        async def get(k: int) -> list[int]:
            return await collect(k)

        get.add_listener(events.append)
        await asyncio.gather(get(1), get(2))
        assert [e.kind for e in events] == ["dispatched", "completed"]
        assert events[0].size == 2
        assert events[0].at == pytest.approx(clock.now())
        assert "get" in events[0].name


async def test_failed_event_carries_the_error() -> None:
    events: list[CoalesceEvent] = []
    boom = RuntimeError("x")

    @batch
    async def get(k: int) -> list[int]:
        await collect(k)
        raise boom

    get.add_listener(events.append)
    with pytest.raises(RuntimeError):
        await get(1)
    assert events[-1].kind == "failed"
    assert events[-1].error is boom


async def test_failing_and_async_listeners_are_isolated(caplog: pytest.LogCaptureFixture) -> None:
    got: list[str] = []

    def bad(event: CoalesceEvent) -> None:
        raise ValueError("listener bug")

    async def slow(event: CoalesceEvent) -> None:
        await asyncio.sleep(0)
        got.append(event.kind)

    @batch
    async def get(k: int) -> list[int]:
        return await collect(k)

    get.add_listener(bad)
    get.add_listener(slow)
    with caplog.at_level(logging.ERROR, logger="headrace.coalesce"):
        assert await get(1) == 1
    for _ in range(3):
        await asyncio.sleep(0)
    assert got == ["dispatched", "completed"]
    assert "listener bug" in caplog.text


def test_add_listener_rejects_non_callables() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return await collect(k)

    with pytest.raises(TypeError):
        get.add_listener(42)  # type: ignore[arg-type]
