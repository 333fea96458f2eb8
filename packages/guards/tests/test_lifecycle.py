"""Closing a guard: new and queued calls are refused, calls in flight finish and are awaited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_core import Closed
from headrace_core.testing import VirtualClock
from headrace_guards import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    RateLimiter,
    Retry,
    Timeout,
    pipeline,
)
from headrace_guards.backoff import fixed


async def _wait(gate: asyncio.Event) -> str:
    await gate.wait()
    return "done"


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_queued_bulkhead_caller_is_refused_and_holds_nothing() -> None:
    bulkhead = Bulkhead(1)
    gate = asyncio.Event()
    running = asyncio.create_task(bulkhead.call(_wait, gate))
    queued = asyncio.create_task(bulkhead.call(_wait, gate))
    await _settle()
    assert bulkhead.snapshot().waiting == 1
    closing = asyncio.create_task(bulkhead.aclose())
    await _settle()
    with pytest.raises(Closed):
        await queued  # refused, not left waiting for a slot
    assert not closing.done()
    snap = bulkhead.snapshot()
    assert (snap.in_flight, snap.waiting) == (1, 0)
    gate.set()
    assert await running == "done"
    await closing
    assert bulkhead.snapshot().in_flight == 0
    with pytest.raises(Closed):
        await bulkhead.acquire()
    with pytest.raises(Closed):
        async with bulkhead:
            pass


async def test_closing_one_instance_of_a_named_bulkhead_leaves_the_others_open() -> None:
    first = Bulkhead(2, name="lifecycle-shared")
    second = Bulkhead(2, name="lifecycle-shared")
    await first.aclose()
    assert await second.call(asyncio.sleep, 0, "ok") == "ok"
    assert not second.closed
    await second.aclose()


async def test_acquire_counts_until_release() -> None:
    bulkhead = Bulkhead(1, max_wait=0)
    await bulkhead.acquire()
    closing = asyncio.create_task(bulkhead.aclose())
    await _settle()
    assert not closing.done()  # the slot taken with acquire() is a call in flight
    bulkhead.release()
    await closing


async def test_a_full_bulkhead_still_says_full_before_it_is_closed() -> None:
    bulkhead = Bulkhead(1, max_wait=0)
    gate = asyncio.Event()
    running = asyncio.create_task(bulkhead.call(_wait, gate))
    await _settle()
    with pytest.raises(BulkheadFull):
        await bulkhead.call(_wait, gate)
    gate.set()
    await running
    await bulkhead.aclose()


@pytest.mark.virtual_clock
async def test_a_sleeping_rate_limiter_reservation_is_refused_and_given_back(
    virtual_clock: VirtualClock,
) -> None:
    limiter = RateLimiter(1, burst=1)
    await limiter.acquire()
    sleeper = asyncio.create_task(limiter.call(asyncio.sleep, 0, "late"))
    await _settle()
    assert limiter.snapshot().waiting == 1
    await limiter.aclose()
    with pytest.raises(Closed):
        await sleeper
    assert virtual_clock.now() < 1.0  # refused at once, not after its wait
    assert limiter.snapshot().waiting == 0
    assert limiter.would_wait() == pytest.approx(1.0 - virtual_clock.now())  # refunded


@pytest.mark.virtual_clock
async def test_retry_never_retries_a_closed_component() -> None:
    inner = Timeout(10)
    await inner.aclose()
    retry = Retry(5, backoff=fixed(1.0))
    with pytest.raises(Closed):
        await retry.call(inner.call, asyncio.sleep, 0)
    assert retry.snapshot().attempts == 1


async def test_a_closed_breaker_refuses_on_the_fast_path_and_in_the_decorator() -> None:
    breaker = CircuitBreaker()

    @breaker
    async def work() -> str:
        return "ok"

    assert await work() == "ok"
    await breaker.aclose()
    with pytest.raises(Closed):
        await work()
    with pytest.raises(Closed):
        await breaker.call(work)
    with pytest.raises(Closed):
        async with breaker:
            pass
    assert breaker.snapshot().successes == 1


@pytest.mark.parametrize("how", ["raise", "cancel"])
async def test_calls_that_fail_or_are_cancelled_leave_nothing_counted(how: str) -> None:
    breaker, timeout, bulkhead = CircuitBreaker(), Timeout(10), Bulkhead(3)
    guards: list[Any] = [breaker, timeout, bulkhead]
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()
        raise KeyError("down")

    tasks = [asyncio.create_task(g.call(work)) for g in guards]
    await _settle()
    if how == "cancel":
        for task in tasks:
            task.cancel()
    gate.set()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError if how == "cancel" else KeyError):
            await task
    for guard in guards:
        assert guard._life.running == 0
        await guard.aclose()  # returns: nothing is counted as running


async def test_a_pipeline_refuses_and_closes_its_guards() -> None:
    breaker, timeout = CircuitBreaker(), Timeout(10)
    guarded = pipeline(breaker, timeout)
    gate = asyncio.Event()
    running = asyncio.create_task(guarded.call(_wait, gate))
    await _settle()
    closing = asyncio.create_task(guarded.aclose())
    await _settle()
    assert guarded.closed
    with pytest.raises(Closed):
        await guarded.call(_wait, gate)
    assert not closing.done()
    gate.set()
    assert await running == "done"
    await closing
    assert breaker.closed
    assert timeout.closed
