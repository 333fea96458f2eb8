"""Checked by mypy only: the guards keep the wrapped signatures."""

from __future__ import annotations

from typing import Any, assert_type

import headrace_core
import headrace_guards
from headrace_guards import (
    BreakerSnapshot,
    Bulkhead,
    BulkheadSnapshot,
    CircuitBreaker,
    CircuitState,
    Fallback,
    Hedge,
    Pipeline,
    PipelineSnapshot,
    RateLimiter,
    Retry,
    RetrySnapshot,
    Timeout,
    TimeoutSnapshot,
    pipeline,
)
from headrace_guards.compat import AsyncCircuitBreaker, circuit_breaker


async def fetch(key: str, *, retries: int = 0) -> bytes:
    return key.encode()


async def check() -> None:
    assert_type(await Timeout(1).call(fetch, "a"), bytes)
    assert_type(await Retry(3).call(fetch, "a", retries=2), bytes)
    assert_type(await CircuitBreaker().call(fetch, "a"), bytes)
    assert_type(await Bulkhead(2).call(fetch, "a"), bytes)
    assert_type(await RateLimiter(5).call(fetch, "a"), bytes)
    assert_type(await Fallback(lambda e, k: b"").call(fetch, "a"), bytes)
    assert_type(await Hedge(0.1).call(fetch, "a"), bytes)
    stack = pipeline(Retry(2), Timeout(1))
    assert_type(stack, Pipeline)
    assert_type(await stack.call(fetch, "a"), bytes)

    decorated = CircuitBreaker()(fetch)
    assert_type(await decorated("k", retries=1), bytes)

    assert_type(CircuitBreaker().snapshot(), BreakerSnapshot)
    assert_type(CircuitBreaker().state, CircuitState)
    assert_type(Bulkhead(1).snapshot(), BulkheadSnapshot)
    assert_type(Timeout(1).snapshot(), TimeoutSnapshot)
    assert_type(Retry().snapshot(), RetrySnapshot)
    assert_type(stack.snapshot(), PipelineSnapshot)
    assert_type(circuit_breaker(fetch), AsyncCircuitBreaker[Any])

    async with Timeout(1) as t:
        assert_type(t, Timeout)
    async with Bulkhead(1) as b:
        assert_type(b, Bulkhead)
    async with CircuitBreaker() as c:
        assert_type(c, CircuitBreaker)
    async with RateLimiter(1) as r:
        assert_type(r, RateLimiter)

    assert_type(headrace_guards.CircuitOpenError, type[headrace_core.CircuitOpenError])
    assert_type(headrace_guards.backoff.full_jitter(), headrace_core.backoff.full_jitter)
