"""gentlify's README, with only the import changed, runs on headrace-throttle."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import (
    CircuitBreakerConfig,
    CircuitOpenError,
    RetryConfig,
    Throttle,
    ThrottleClosed,
    ThrottleConfig,
    ThrottleEvent,
    ThrottleSnapshot,
    ThrottleState,
    TokenBudget,
)


class RateLimitError(Exception):
    pass


calls: list[Any] = []


async def call_api(item: Any, idempotency_key: str | None = None) -> str:
    calls.append(item)
    await asyncio.sleep(0.01)
    return f"done {item}"


async def call_llm(prompt: str) -> Any:
    await asyncio.sleep(0.01)
    return SimpleNamespace(text=prompt.upper(), usage=SimpleNamespace(total_tokens=42))


async def test_quick_start_execute_and_decorator() -> None:
    with VirtualClock():
        throttle = Throttle(max_concurrency=5)
        for item in range(20):
            await throttle.execute(lambda slot: call_api(item))  # noqa: B023 (as written)
        result = await throttle.execute(lambda slot: call_api(1))
        assert result == "done 1"
        prompt = "hi"

        async def my_task(slot: Any) -> str:
            result = await call_llm(prompt)
            slot.record_tokens(result.usage.total_tokens)
            return str(result.text)

        assert await throttle.execute(my_task) == "HI"

        @throttle.wrap
        async def call_api_wrapped(item: Any) -> str:
            return await call_api(item)

        assert await call_api_wrapped({"id": 1}) == "done {'id': 1}"


async def test_token_budget_section() -> None:
    with VirtualClock():
        throttle = Throttle(
            max_concurrency=10,
            token_budget=TokenBudget(max_tokens=100_000, window_seconds=60.0),
        )
        prompt = "x"

        async def task(slot: Any) -> Any:
            result = await call_llm(prompt)
            slot.record_tokens(result.usage.total_tokens)
            return result

        await throttle.execute(task)
        snap = throttle.snapshot()
        assert snap.tokens_remaining == 100_000 - 42
        assert snap.tokens_used == 42


async def test_circuit_breaker_and_retry_sections() -> None:
    with VirtualClock():
        throttle = Throttle(
            max_concurrency=10,
            circuit_breaker=CircuitBreakerConfig(
                consecutive_failures=5,
                open_duration=30.0,
                half_open_max_calls=2,
            ),
        )

        async def down(slot: Any) -> None:
            raise ConnectionError

        for _ in range(5):
            with pytest.raises(ConnectionError):
                await throttle.execute(down)
        with pytest.raises(CircuitOpenError):
            await throttle.execute(down)
        assert throttle.snapshot().state is ThrottleState.CIRCUIT_OPEN

        throttle = Throttle(
            max_concurrency=5,
            retry=RetryConfig(
                max_attempts=3,
                backoff="exponential_jitter",
                base_delay=1.0,
                max_delay=60.0,
            ),
        )
        item = "a"
        result = await throttle.execute(lambda slot: call_api(item))
        assert result == "done a"
        retry = RetryConfig(
            max_attempts=3,
            retryable=lambda exc: isinstance(exc, (TimeoutError, RateLimitError)),
        )
        throttle = Throttle(max_concurrency=5, retry=retry)
        item_obj = SimpleNamespace(id=7)

        async def safe_write(slot: Any) -> Any:
            if slot.attempt == 0:
                raise RateLimitError
            return await call_api(item_obj, idempotency_key=f"{item_obj.id}-{slot.attempt}")

        assert await throttle.execute(safe_write) == f"done {item_obj}"


async def test_configuration_callbacks_and_snapshot() -> None:
    with VirtualClock():
        printed: list[str] = []
        throttle = Throttle(
            max_concurrency=10,
            initial_concurrency=3,
            min_dispatch_interval=0.2,
            failure_threshold=3,
            cooling_period=10.0,
            total_tasks=1000,
            on_progress=lambda snap: printed.append(f"{snap.percentage:.0f}%"),
        )
        assert throttle.snapshot().concurrency == 3
        throttle = Throttle.from_dict(
            {
                "max_concurrency": 10,
                "token_budget": {"max_tokens": 50000, "window_seconds": 60.0},
            }
        )
        assert throttle.snapshot().tokens_remaining == 50000
        throttle = Throttle.from_env()
        throttle = Throttle.from_env(prefix="MYAPP")

        def on_change(event: ThrottleEvent) -> None:
            printed.append(f"[{event.kind}] {event.data}")

        throttle = Throttle(max_concurrency=10, on_state_change=on_change)
        for _ in range(3):
            throttle.record_failure()
        # The README's "Prints: [decelerated] {'concurrency': (10, 5), ...}", word for word.
        assert printed[-2].startswith("[decelerated] {'concurrency': (10, 5)")
        assert printed[-1].startswith("[cooling_started] {'cooling_period'")

        throttle = Throttle(
            max_concurrency=10,
            total_tasks=100,
            on_progress=lambda snap: printed.append(
                f"{snap.percentage:.0f}% done, ETA {snap.eta_seconds:.0f}s"
            ),
        )
        await asyncio.gather(*(throttle.execute(lambda slot: call_api(1)) for _ in range(100)))
        assert printed[-1] == "100% done, ETA 0s"


async def test_manual_control_shutdown_and_snapshot() -> None:
    with VirtualClock():
        throttle = Throttle(max_concurrency=2, token_budget=TokenBudget(1000, 60.0))
        item = 1
        async with throttle.acquire() as slot:
            result = await call_llm(str(item))
            slot.record_tokens(result.usage.total_tokens)
        snap = throttle.snapshot()
        print(snap.concurrency)
        print(snap.dispatch_interval)
        print(snap.state)
        print(snap.tokens_remaining)
        print(snap.eta_seconds)
        assert snap.tokens_remaining == 1000 - 42
        throttle.close()
        await throttle.drain()
        with pytest.raises(ThrottleClosed):
            await throttle.execute(lambda slot: call_api(1))


def test_types_table_names_exist() -> None:
    for kind in (
        ThrottleConfig,
        TokenBudget,
        CircuitBreakerConfig,
        RetryConfig,
        ThrottleSnapshot,
        ThrottleState,
        ThrottleEvent,
        CircuitOpenError,
        ThrottleClosed,
    ):
        assert kind.__module__ == "headrace_throttle" or kind is CircuitOpenError
    for member in ("RUNNING", "COOLING", "CIRCUIT_OPEN", "CLOSED", "DRAINING", "PAUSED"):
        assert hasattr(ThrottleState, member)
