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
