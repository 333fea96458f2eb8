"""Seeded stress runs: random failures, stop/drain points and cancellations."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_flow import DROP, FlowClosed, Last, UtilizationScaling, flow, stage


class Resource:
    def __init__(self) -> None:
        self.open = 0
        self.entered = 0
        self.lasts = 0


def build(rng: random.Random, resource: Resource, with_handler: bool) -> Any:
    fail_rate = rng.choice([0.0, 0.05, 0.2])
    last_rate = rng.choice([0.0, 0.0, 0.01])

    def make(name: str) -> Any:
        async def fn(x: int) -> Any:
            await asyncio.sleep(rng.random() * 0.02)
            roll = rng.random()
            if roll < fail_rate:
                raise ValueError(f"{name} failed on {x}")
            if roll < fail_rate + 0.1:
                return DROP
            if roll > 1 - last_rate:
                resource.lasts += 1
                return Last(x)
            return x

        fn.__name__ = name
        return fn

    @contextlib.asynccontextmanager
    async def pooled() -> AsyncIterator[Any]:
        resource.open += 1
        resource.entered += 1
        try:
            yield make("pooled")
        finally:
            resource.open -= 1

    async def handler(event: Any) -> None:
        if rng.random() < 0.02:
            raise RuntimeError("handler gave up")

    stages = [
        stage(
            make("a"),
            workers=rng.randint(1, 4),
            queue_size=rng.randint(0, 3),
            ordered=rng.random() < 0.3,
        ),
        stage(
            pooled,
            scaling=UtilizationScaling(
                min_workers=rng.randint(0, 1),
                max_workers=rng.randint(2, 5),
                cooldown_seconds=0.05,
                sampling_period=0.05,
            ),
        ),
        stage(make("c"), workers=rng.randint(1, 3), ordered=rng.random() < 0.3),
    ]
    return flow(*stages, on_error=handler if with_handler else None)


async def source(rng: random.Random, n: int) -> AsyncIterator[int]:
    for i in range(n):
        if rng.random() < 0.05:
            await asyncio.sleep(rng.random() * 0.1)
        yield i


@pytest.mark.parametrize("seed", range(40))
async def test_random_runs_keep_the_invariant(seed: int) -> None:
    rng = random.Random(seed)
    resource = Resource()
    f = build(rng, resource, with_handler=rng.random() < 0.7)
    action = rng.choice(["none", "stop", "drain", "cancel"])
    with VirtualClock():
        task = asyncio.create_task(f.run(source(rng, rng.randint(0, 200))))
        if action != "none":
            await asyncio.sleep(rng.random() * 0.5)
            if action == "stop":
                await f.stop()
            elif action == "drain":
                await f.drain()
            else:
                task.cancel()
        with contextlib.suppress(ValueError, RuntimeError, asyncio.CancelledError):
            await task
    stats = f.stats()
    assert not stats.running
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded
    if action == "drain" and not resource.lasts and not task.cancelled() and not task.exception():
        assert stats.discarded == 0
    assert resource.open == 0
    assert not f.running


@pytest.mark.parametrize("seed", range(15))
async def test_random_push_and_iterate(seed: int) -> None:
    rng = random.Random(1000 + seed)
    resource = Resource()
    f = build(rng, resource, with_handler=True)
    with VirtualClock():
        if rng.random() < 0.5:
            got = 0
            limit = rng.randint(0, 50)
            try:
                async with contextlib.aclosing(f.iterate(range(100))) as items:
                    async for _ in items:
                        got += 1
                        if got >= limit:
                            break
            except RuntimeError:
                pass
        else:
            try:
                async with f.push() as h:
                    for i in range(rng.randint(0, 60)):
                        await h.send(i)
                        if rng.random() < 0.03:
                            raise KeyError("user bailed")
            except (KeyError, RuntimeError, FlowClosed):  # FlowClosed: a Last ended the run
                pass
    stats = f.stats()
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded
    assert resource.open == 0
