"""A cancellation that lands while a Redis reply is read is never lost by RedisStore.

Some redis-py versions (8.0 to 8.2 on Python 3.11) return the reply and drop the
cancellation when it arrives as the reply is read: a deadline around a loop of commands
then never fires, and a cancelled task keeps running. The store re-raises it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from headrace_guards.redis import RedisStore
from shared.pytest_fixtures import background_settled

pytestmark = pytest.mark.redis

# Each loop stops by itself after this long, so a lost cancellation fails, not hangs.
_BOUND = 3.0
_DEADLINE = 0.3
_RUNS = 5


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, prefix=f"c{uuid.uuid4().hex[:10]}:", timeout=5.0)
    yield store
    await background_settled()
    await store.delete_all()
    await store.aclose()


def operations(store: RedisStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def bulkhead() -> None:
        lease = uuid.uuid4().hex
        if await store.acquire("pool", 1000, lease, 30):
            await store.release("pool", lease)

    async def breaker() -> None:
        _, gen, _, _ = await store.admit("svc", 0.0)
        await store.record("svc", gen, "success", 0.0)

    return {
        "in_flight": lambda: store.in_flight("pool"),
        "bulkhead": bulkhead,
        "rate": lambda: store.reserve("api", 1e9, 1.0, 1_000_000, 1, None),
        "budget": lambda: store.reserve("tok", 1, 1e12, 60.0),
        "breaker": breaker,
    }


@pytest.mark.parametrize("operation", ["in_flight", "bulkhead", "rate", "budget", "breaker"])
async def test_a_deadline_around_a_loop_of_store_calls_fires(
    store: RedisStore, operation: str
) -> None:
    call = operations(store)[operation]
    await call()  # connected, scripts loaded
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    async def loop_until_the_deadline() -> None:
        start = loop.time()
        async with asyncio.timeout(_DEADLINE):
            while loop.time() - start < _BOUND:
                await call()

    for _ in range(_RUNS):
        start = loop.time()
        with pytest.raises(TimeoutError):
            await loop_until_the_deadline()
        assert loop.time() - start < _DEADLINE + 0.5
        assert task.cancelling() == 0
    assert store.errors == 0  # the caller's deadline is not Redis's failure


async def test_a_cancelled_task_looping_on_the_store_ends(store: RedisStore) -> None:
    await store.in_flight("pool")
    loop = asyncio.get_running_loop()
    for _ in range(_RUNS):
        calls = 0

        async def spin() -> None:
            nonlocal calls
            start = loop.time()
            while loop.time() - start < _BOUND:
                await store.in_flight("pool")
                calls += 1

        task = asyncio.create_task(spin())
        while calls < 20:  # the loop is running
            await asyncio.sleep(0.001)
        start = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() - start < 0.5
        assert task.cancelling() == 1
