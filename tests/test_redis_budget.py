"""Throttle token budgets shared across workers through headrace-guards' RedisStore."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from headrace_guards.redis import RedisStore

pytestmark = pytest.mark.redis

Maker = Callable[..., RedisStore]


@pytest.fixture
async def make(redis_url: str) -> AsyncIterator[Maker]:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    stores: list[RedisStore] = []

    def build(**kw: Any) -> RedisStore:
        kw.setdefault("prefix", prefix)
        kw.setdefault("timeout", 5.0)
        store = RedisStore.from_url(redis_url, **kw)
        stores.append(store)
        return store

    yield build
    if stores:
        await stores[0].delete_all()
    for store in stores:
        await store.aclose()


async def test_throttle_token_budget_is_shared_between_workers(make: Maker) -> None:
    from headrace_throttle import Throttle, TokenBudget

    a, b = make(), make()
    first = Throttle(4, budgets=[TokenBudget(100, 0.4, name="llm", store=a)])
    second = Throttle(4, budgets=[TokenBudget(100, 0.4, name="llm", store=b)])

    async def spend(slot: Any) -> str:
        slot.record_tokens(80)  # the estimate was 60; the call used 80
        return "done"

    async def small(slot: Any) -> str:
        return "small"

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await first.execute(spend, tokens=60) == "done"
    assert await second.execute(small, tokens=30) == "small"  # 80 + 30 > 100: waits
    assert loop.time() - start >= 0.3
    await first.aclose()
    await second.aclose()


class Counting:
    """A BudgetStore that forwards to a RedisStore and counts the calls."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.reserves = 0
        self.adjusts: list[float] = []

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        self.reserves += 1
        granted, retry_after, entry = await self.store.reserve(name, amount, cap, window)
        return granted, retry_after, entry

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        self.adjusts.append(amount)
        await self.store.adjust(name, entry, amount)


async def test_a_refused_worker_waits_the_relative_retry_after(make: Maker) -> None:
    """The store's ``retry_after`` is seconds from now: the worker asks again once, then."""
    from headrace_throttle import RequestBudget, Throttle

    a, b = make(), Counting(make())
    first = Throttle(4, budgets=[RequestBudget(1, 0.5, name="rpm", store=a)])
    second = Throttle(4, budgets=[RequestBudget(1, 0.5, name="rpm", store=b)])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await first.execute(lambda slot: asyncio.sleep(0))
    await second.execute(lambda slot: asyncio.sleep(0))
    assert 0.4 <= loop.time() - start < 2.0
    assert b.reserves <= 3  # asked, was refused, slept the hint, asked again
    await first.aclose()
    await second.aclose()


async def test_a_cancelled_waiter_gives_its_granted_request_back(make: Maker) -> None:
    from headrace_throttle import RequestBudget, Throttle, TokenBudget

    store = Counting(make())
    rpm = RequestBudget(2, 30.0, name="rpm", store=store)
    tpm = TokenBudget(100, 30.0, name="tpm", store=store)
    t = Throttle(4, budgets=[rpm, tpm])
    await t.execute(lambda slot: asyncio.sleep(0), tokens=100)  # 1 request, all tokens
    waiter = asyncio.create_task(t.execute(lambda slot: asyncio.sleep(0), tokens=10))
    await asyncio.sleep(0.2)
    assert t.snapshot().in_flight == 0  # granted a request, refused tokens: no local slot
    assert t.snapshot().waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await t.drain()
    assert store.adjusts == [0]  # its request was given back
    other = Throttle(4, budgets=[RequestBudget(2, 30.0, name="rpm", store=store)])
    async with asyncio.timeout(2.0):  # a second request fits at once: only one is held
        await other.execute(lambda slot: asyncio.sleep(0))
    await other.aclose()


async def test_acquire_goes_through_a_redis_breaker_and_shared_budgets(make: Maker) -> None:
    from headrace_guards import CircuitBreaker
    from headrace_throttle import CircuitOpenError, RequestBudget, Throttle

    store = make()
    budget = Counting(store)
    t = Throttle(
        2,
        circuit_breaker=CircuitBreaker("svc", failure_threshold=1, store=store),
        budgets=[RequestBudget(10, 30.0, name="rpm", store=budget)],
    )
    async with t.acquire() as slot:
        assert slot.attempt == 0
    assert budget.reserves == 1
    with pytest.raises(KeyError):
        async with t.acquire():
            raise KeyError("the service failed")
    with pytest.raises(CircuitOpenError):  # the failure opened the shared breaker
        async with t.acquire():
            pytest.fail("the body must not run")
    snap = t.snapshot()
    assert snap.in_flight == snap.waiting == 0
    await t.aclose()
