"""Type-level tests (checked by mypy, never run): Flow[In, Out] chains stage types."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, assert_type

from headrace_flow import (
    DROP,
    Drop,
    FixedScaling,
    Flow,
    FlowStats,
    PushHandle,
    Stage,
    StageStats,
    UtilizationScaling,
    flow,
    stage,
)


async def parse(raw: bytes) -> str:
    return raw.decode()


async def length(text: str) -> int:
    return len(text)


async def keep_even(n: int) -> int | Drop:
    return n if n % 2 == 0 else DROP


async def explode(n: int) -> AsyncIterator[float]:
    for i in range(n):
        yield i / 2


async def store(x: float) -> None:
    return None


@contextlib.asynccontextmanager
async def pooled() -> AsyncIterator[Callable[[int], Awaitable[str]]]:
    async def work(n: int) -> str:
        return str(n)

    yield work


def chains() -> None:
    assert_type(flow(parse), Flow[bytes, str])
    assert_type(flow(parse, length), Flow[bytes, int])
    assert_type(flow(parse, length, keep_even), Flow[bytes, int])
    assert_type(flow(parse, length, keep_even, explode), Flow[bytes, float])
    assert_type(flow(parse, length, keep_even, explode, store), Flow[bytes, None])
    assert_type(flow(length, pooled), Flow[str, str])
    inner = flow(parse, length)
    assert_type(flow(inner, keep_even), Flow[bytes, int])


def stages_and_strategies() -> None:
    s = stage(length, workers=4, ordered=True)
    assert_type(s, Stage[str, int])
    assert_type(UtilizationScaling(min_workers=0).min_workers, int)
    assert_type(FixedScaling(2).workers, int)


async def running(f: Flow[bytes, int]) -> None:
    stats = await f.run([b"a", b"bb"])
    assert_type(stats, FlowStats)
    assert_type(stats.stages["parse"], StageStats)
    assert_type(stats.stages["parse"].utilization, float)
    async with contextlib.aclosing(f.iterate([b"x"])) as items:
        async for item in items:
            assert_type(item, int)
    async with f.push() as handle:
        assert_type(handle, PushHandle[bytes])
        await handle.send(b"x")
    assert_type(f.stats(), FlowStats)
    assert_type(f.snapshot(), FlowStats)
    assert_type(await f.drain(), FlowStats)


def builder() -> None:
    f = Flow(default_scaling_strategy=UtilizationScaling(max_workers=8))
    assert_type(f, Flow[Any, Any])
    f.add_transformer(length, name="len", scaling_strategy=FixedScaling(workers=2))
    f.set_consumer(store)
