"""Checked by mypy only (not collected by pytest): the public signatures keep their types."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import assert_type

from headrace_throttle import (
    AIMD,
    CircuitBreakerConfig,
    Gradient,
    RequestBudget,
    RetryConfig,
    Slot,
    Throttle,
    ThrottleConfig,
    ThrottleEvent,
    ThrottleSnapshot,
    ThrottleState,
    TokenBudget,
    Vegas,
)


async def fetch(item: int, *, scale: float = 1.0) -> str:
    return str(item * scale)


async def with_slot(slot: Slot) -> int:
    slot.record_tokens(3)
    return slot.attempt


async def check() -> None:
    t = Throttle(
        10,
        budgets=[RequestBudget(500), TokenBudget(90_000)],
        retry=RetryConfig(max_attempts=3),
        circuit_breaker=CircuitBreakerConfig(consecutive_failures=5),
        limit=Gradient(),
    )
    assert_type(await t.execute(with_slot), int)
    assert_type(await t.execute(with_slot, tokens=50), int)
    wrapped = t.wrap(fetch)
    assert_type(await wrapped(3, scale=2.0), str)
    decorator = t.wrap(tokens=5)
    assert_type(await decorator(fetch)(1), str)
    manager = t.acquire(tokens=3)
    assert isinstance(manager, AbstractAsyncContextManager)
    async with t.acquire() as slot:
        assert_type(slot, Slot)
    snap = t.snapshot()
    assert_type(snap, ThrottleSnapshot)
    assert_type(snap.state, ThrottleState)
    assert_type(snap.eta_seconds, float | None)
    assert_type(snap.tokens_remaining, int | None)
    remove = t.add_listener(lambda event: print(event.kind))
    assert_type(remove, Callable[[], None])
    assert_type(Throttle.from_dict({"max_concurrency": 3}), Throttle)
    assert_type(Throttle.from_env(prefix="APP"), Throttle)
    assert_type(Throttle.from_config(ThrottleConfig()), Throttle)
    assert_type(AIMD().on_sample(0.1, 1, False), int)
    assert_type(Vegas().on_sample(0.1, 1, False), int)
    assert_type(Throttle(4, limit=Vegas()).snapshot().concurrency, int)
    event = ThrottleEvent("decreased", 1.0, {})
    assert_type(event.timestamp, float)

    def header(exc: BaseException) -> str | None:
        return "Wed, 21 Oct 2015 07:28:00 GMT"  # Retry-After as it is: an HTTP date

    def seconds(exc: BaseException) -> float | None:
        return 2.5

    Throttle(4, retry_after=header)
    Throttle(4, retry_after=seconds)
    t.hold(1.0)
    t.set_concurrency(3)
    t.record_failure()
    t.record_success()
    t.close()
    await t.drain(timeout=1.0)
