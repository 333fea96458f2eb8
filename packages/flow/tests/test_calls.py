"""Stage deadlines (``StageTimeout``) and ``drain(timeout=)`` (``GuardTimeout``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace_core import GuardTimeout
from headrace_core.testing import VirtualClock
from headrace_flow import StageTimeout, TransformerError, flow, stage


async def test_an_expired_item_deadline_is_a_stage_timeout_chaining_the_timeout() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(10)
        return x

    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(StageTimeout) as info:
            await flow(stage(slow, timeout=2)).run([1])
        assert clock.now() - start == 2
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert info.value.timeout == 2
    assert info.value.name == "slow"


async def test_a_call_that_swallows_the_cancellation_and_ends_late_still_timed_out() -> None:
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def stubborn(x: int) -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # finishes late instead of giving up
        return x

    with VirtualClock():
        stats = await flow(stage(stubborn, timeout=2), on_error=handler).run([1, 2])
    assert stats.completed == 0
    assert stats.failed == 2
    assert all(isinstance(e, TransformerError) for e in events)
    assert all(isinstance(e.exception, StageTimeout) for e in events)


async def test_a_timeout_error_of_the_stage_itself_is_not_the_deadline() -> None:
    async def own(x: int) -> int:
        raise TimeoutError("the remote side timed out")

    with VirtualClock(), pytest.raises(TimeoutError, match="remote side") as info:
        await flow(stage(own, timeout=5)).run([1])
    assert not isinstance(info.value, StageTimeout)


async def test_an_expired_deadline_is_retried_when_retry_on_covers_it() -> None:
    tries = 0

    async def flaky(x: int) -> int:
        nonlocal tries
        tries += 1
        if tries < 3:
            await asyncio.sleep(10)
        return x

    with VirtualClock() as clock:
        start = clock.now()
        stats = await flow(stage(flaky, timeout=1, retries=2, retry_on=TimeoutError)).run([7])
    assert stats.completed == 1
    assert tries == 3
    assert clock.now() - start == 2


async def test_drain_timeout_is_a_guard_timeout_and_the_run_goes_on_draining() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1

    async def slow(x: int) -> int:
        await asyncio.sleep(30)
        return x

    f = flow(slow)
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run(source))
        await asyncio.sleep(1)
        start = clock.now()
        with pytest.raises(GuardTimeout, match="did not finish within 5s") as info:
            await f.drain(timeout=5)
        assert clock.now() - start == 5
        assert isinstance(info.value.__cause__, TimeoutError)
        assert info.value.timeout == 5
        assert f.running
        stats = await task
    assert stats.completed == 1


async def test_cancelling_a_drain_with_a_timeout_is_not_a_guard_timeout() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(30)
        return x

    f = flow(slow)
    with VirtualClock():
        task = asyncio.create_task(f.run([1]))
        await asyncio.sleep(1)
        waiter = asyncio.create_task(f.drain(timeout=10))
        await asyncio.sleep(2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not f.running
