"""Seeded stress runs: random cancellations at random points, for @batch and Loader.

Every surviving caller must get its own result, no item of a caller cancelled before a
dispatch may be sent in that dispatch, nothing may hang, and no task may be left pending.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_coalesce import Loader, batch, collect
from headrace_core.testing import VirtualClock

OPTIONS: list[dict[str, Any]] = [
    {},
    {"max_size": 3},
    {"max_wait": 0.05},
    {"max_concurrent": 1},
    {"max_size": 4, "max_wait": 0.1, "max_concurrent": 2},
    {"dedupe": False},
]


async def _run_batch(seed: int, options: dict[str, Any]) -> None:
    rng = random.Random(seed)
    cancel_requested: set[int] = set()
    violations: list[str] = []
    n = 40

    @batch(**options)
    async def get(k: int) -> list[int]:
        await asyncio.sleep(rng.choice((0, 0, 0.01)))
        ids = await collect(k)
        stale = [i for i in ids if i in cancel_requested]
        if stale:
            violations.append(f"sent cancelled items {stale}")
        await asyncio.sleep(rng.choice((0, 0.02, 0.05)))
        return [i * 10 for i in ids]

    async def caller(k: int) -> int:
        await asyncio.sleep(rng.choice((0, 0, 0.01, 0.02, 0.05)))
        return int(await get(k))

    with VirtualClock():
        tasks = [asyncio.create_task(caller(k)) for k in range(n)]
        for _ in range(n // 2):
            await asyncio.sleep(rng.random() * 0.02)
            victim = rng.randrange(n)
            if not tasks[victim].done():
                cancel_requested.add(victim)
                tasks[victim].cancel()
        async with asyncio.timeout(60):
            results = list(await asyncio.gather(*tasks, return_exceptions=True))
    assert violations == []
    for k, (task, result) in enumerate(zip(tasks, results, strict=True)):
        if isinstance(result, BaseException):
            assert isinstance(result, asyncio.CancelledError), result
            assert k in cancel_requested
        else:
            assert result == k * 10
            assert task.done()
    stats = get.stats()
    assert n - len(cancel_requested) <= stats.calls <= n
    assert stats.cancelled <= len(cancel_requested)
    assert stats.in_flight == 0
    assert stats.failed_batches == 0
    assert sum(stats.batch_sizes.values()) == stats.batches
    assert sum(s * c for s, c in stats.batch_sizes.items()) == stats.items
    assert await get(1000) == 10000  # healthy afterwards


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "zero-config")
@pytest.mark.parametrize("seed", range(6))
async def test_batch_random_cancellations(seed: int, options: dict[str, Any]) -> None:
    await _run_batch(seed, options)


async def _run_loader(seed: int, options: dict[str, Any]) -> None:
    rng = random.Random(seed)
    cancel_requested: set[int] = set()
    calls: list[list[int]] = []

    async def load_fn(keys: list[int]) -> list[int]:
        calls.append(keys)
        await asyncio.sleep(rng.choice((0, 0.02, 0.05)))
        return [k * 10 for k in keys]

    loader: Loader[int, int] = Loader(load_fn, **options)
    n = 40

    async def caller(i: int) -> int:
        await asyncio.sleep(rng.choice((0, 0, 0.01, 0.02, 0.05)))
        key = i % 25  # some keys are shared by two callers
        if i % 7 == 0:
            return (await loader.load_many([key, (key + 1) % 25]))[0]
        return await loader.load(key)

    with VirtualClock():
        tasks = [asyncio.create_task(caller(i)) for i in range(n)]
        for _ in range(n // 2):
            await asyncio.sleep(rng.random() * 0.02)
            victim = rng.randrange(n)
            if not tasks[victim].done():
                cancel_requested.add(victim)
                tasks[victim].cancel()
        async with asyncio.timeout(60):
            results = list(await asyncio.gather(*tasks, return_exceptions=True))
        await asyncio.sleep(0)
    for i, result in enumerate(results):
        if isinstance(result, BaseException):
            assert isinstance(result, asyncio.CancelledError), result
            assert i in cancel_requested
        else:
            assert result == (i % 25) * 10
    stats = loader.stats()
    assert stats.in_flight == 0
    assert stats.failed_batches == 0
    # whatever was cached holds a value: every key loads right, cached or not
    assert await loader.load_many(range(25)) == [k * 10 for k in range(25)]


LOADER_OPTIONS: list[dict[str, Any]] = [
    {},
    {"cache": False},
    {"max_size": 3},
    {"max_wait": 0.05, "max_concurrent": 1},
]


@pytest.mark.parametrize("options", LOADER_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("seed", range(6))
async def test_loader_random_cancellations(seed: int, options: dict[str, Any]) -> None:
    await _run_loader(seed, options)


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.integers(0, 9), min_size=1, max_size=30),
    max_size=st.none() | st.integers(1, 5),
    dedupe=st.booleans(),
)
def test_property_every_caller_gets_its_own_result(
    keys: list[int], max_size: int | None, dedupe: bool
) -> None:
    sent: list[list[int]] = []

    @batch(max_size=max_size, dedupe=dedupe)
    async def get(k: int) -> dict[int, int] | list[int]:
        ids = await collect(k)
        sent.append(ids)
        if len(ids) % 2:
            return {i: i * 3 for i in ids}
        return [i * 3 for i in ids]

    async def main() -> list[int]:
        return list(await asyncio.gather(*(get(k) for k in keys)))

    assert asyncio.run(main()) == [k * 3 for k in keys]
    flat = [i for ids in sent for i in ids]
    if dedupe:
        for ids in sent:
            assert len(ids) == len(set(ids))
    else:
        assert sorted(flat) == sorted(keys)
    if max_size is not None:
        assert all(len(ids) <= max_size for ids in sent)
    # greedy in call order: the batches, concatenated, follow the order of first calls
    order = list(dict.fromkeys(keys)) if dedupe else keys
    if dedupe and max_size is None:
        assert flat == order
