"""Type-level tests (checked by mypy, never run): ``stage()`` and ``batched()`` carry types.

``stage(f, ...)`` is a ``Stage`` from ``f``'s input to its output, so ``flow()`` chains
through wrapped stages as it does through bare functions, and rejects a mismatch. The
``# type: ignore[...]`` lines are the rejections: with ``warn_unused_ignores``, one that
stops being rejected fails the check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, assert_type

from headrace_flow import (
    DROP,
    Drop,
    Flow,
    Last,
    Stage,
    UtilizationScaling,
    batched,
    flow,
    router,
    stage,
)


async def parse(raw: bytes) -> str:
    return raw.decode()


async def length(text: str) -> int:
    return len(text)


async def keep_even(n: int) -> int | Drop:
    return n if n % 2 == 0 else DROP


async def until_ten(n: int) -> int | Last[int]:
    return Last(n) if n >= 10 else n


async def explode(n: int) -> AsyncIterator[float]:
    for i in range(n):
        yield i / 2


async def total(numbers: list[int]) -> int:
    return sum(numbers)


async def is_long(text: str) -> str:
    return "long" if len(text) > 10 else "short"


@contextlib.asynccontextmanager
async def pooled() -> AsyncIterator[Callable[[int], Awaitable[str]]]:
    async def work(n: int) -> str:
        return str(n)

    yield work


@contextlib.asynccontextmanager
async def pooled_fan_out() -> AsyncIterator[Callable[[int], AsyncIterator[bytes]]]:
    async def work(n: int) -> AsyncIterator[bytes]:
        yield bytes(n)

    yield work


def wrapped_stages_carry_their_types() -> None:
    assert_type(stage(parse, workers=4), Stage[bytes, str])
    assert_type(stage(parse, name="p", scaling=UtilizationScaling(), retries=2), Stage[bytes, str])
    assert_type(stage(keep_even, queue_size=0), Stage[int, int])
    assert_type(stage(until_ten), Stage[int, int])
    assert_type(stage(explode, ordered=True), Stage[int, float])
    assert_type(stage(pooled, workers=2), Stage[int, str])
    assert_type(stage(pooled_fan_out), Stage[int, bytes])
    assert_type(stage(stage(parse, workers=2), name="again"), Stage[bytes, str])
    assert_type(stage(flow(parse, length), name="sub"), Stage[bytes, int])
    assert_type(router(is_long, long=length, short=length), Stage[str, Any])
    assert_type(batched(10, max_wait=0.5), Stage[Any, list[Any]])


def flow_chains_through_wrapped_stages() -> None:
    assert_type(flow(stage(parse, workers=4)), Flow[bytes, str])
    assert_type(flow(stage(parse, workers=4), stage(length, ordered=True)), Flow[bytes, int])
    assert_type(flow(parse, stage(length, timeout=1.0), keep_even), Flow[bytes, int])
    assert_type(flow(stage(keep_even), stage(explode, ordered=True)), Flow[int, float])
    assert_type(flow(stage(pooled), stage(parse_str)), Flow[int, int])
    assert_type(flow(length, batched(3), total), Flow[str, int])
    assert_type(flow(length, batched(3)), Flow[str, list[Any]])
    assert_type(flow(parse, router(is_long, long=length)), Flow[bytes, Any])


async def parse_str(text: str) -> int:
    return int(text)


def mismatches_are_rejected() -> None:
    # str out of parse, bytes into parse
    flow(stage(parse, workers=4), stage(parse))  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
    flow(parse, parse)  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
    flow(stage(parse), stage(length), stage(parse))  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
    # a fan-out of floats into a stage of ints
    flow(stage(explode, ordered=True), keep_even)  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
    # a batch (a list) into a stage of str
    flow(length, batched(3), length)  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
    # a router classifying str behind a stage of ints
    flow(keep_even, router(is_long, long=length))  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
    # a wrapped sub-flow from bytes behind a stage of ints
    flow(keep_even, stage(flow(parse, length)))  # type: ignore[misc]  # pyright: ignore[reportArgumentType]
