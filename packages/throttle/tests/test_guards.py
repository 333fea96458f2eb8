"""Retry and circuit breaker composed from headrace_guards (S4, S12)."""

from __future__ import annotations

import asyncio
import random

import pytest

import headrace_core
from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker, Retry, pipeline
from headrace_throttle import (
    CircuitBreakerConfig,
    CircuitOpenError,
    ConfigurationError,
    RetryConfig,
    ServerBusy,
    Slot,
    Throttle,
    ThrottleEvent,
    ThrottleSnapshot,
    ThrottleState,
)


class Flaky(Exception):
    pass


def test_circuit_open_error_is_cores() -> None:
    assert CircuitOpenError is headrace_core.CircuitOpenError


async def test_retry_runs_inside_the_slot_with_attempt_numbers() -> None:
    with VirtualClock(start=0.0) as clock:
        events: list[ThrottleEvent] = []
        t = Throttle(
            1,
            retry=Retry(3, backoff=fixed(2.0)),
            failure_threshold=1,
            on_event=events.append,
        )
        attempts: list[tuple[int, float]] = []

        async def flaky(slot: Slot) -> str:
            attempts.append((slot.attempt, clock.now()))
            if slot.attempt < 2:
                raise Flaky
            return "ok"

        assert await t.execute(flaky) == "ok"
        assert attempts == [(0, 0.0), (1, 2.0), (2, 4.0)]
        assert t.snapshot().concurrency == 1  # intermediate failures do not decelerate
        assert t.snapshot().completed == 1
        retries = [e for e in events if e.kind == "retry"]
        assert [e.data["attempt"] for e in retries] == [1, 2]
        assert [e.data["delay"] for e in retries] == [2.0, 2.0]
        assert all(isinstance(e.data["error"], Flaky) for e in retries)


async def test_only_the_final_failure_counts() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(
            8,
            retry=RetryConfig(max_attempts=3, backoff="fixed", base_delay=1.0),
            failure_threshold=1,
        )

        async def always(slot: Slot) -> None:
            raise Flaky

        with pytest.raises(Flaky):
            await t.execute(always)
        snap = t.snapshot()
        assert snap.concurrency == 4
        assert snap.failed == 1
        assert t.retry is not None
        assert t.retry.snapshot().attempts == 3


async def test_cancel_during_retry_is_never_retried_nor_a_failure() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(
            8,
            retry=RetryConfig(max_attempts=5, backoff="fixed", base_delay=1.0),
            failure_threshold=1,
        )
        calls = []

        async def slow(slot: Slot) -> str:
            calls.append(slot.attempt)
            await asyncio.sleep(10)
            return "done"

        task = asyncio.create_task(t.execute(slow))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert calls == [0]
        snap = t.snapshot()
        assert snap.concurrency == 8
        assert snap.failed == 0
        assert snap.in_flight == 0


async def test_breaker_rejection_is_checked_before_queueing_and_is_not_congestion() -> None:
    with VirtualClock(start=0.0):
        breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=30.0)
        t = Throttle(8, circuit_breaker=breaker, failure_threshold=100)

        async def fail(slot: Slot) -> None:
            raise Flaky

        for _ in range(2):
            with pytest.raises(Flaky):
                await t.execute(fail)
        assert t.snapshot().state is ThrottleState.CIRCUIT_OPEN
        called: list[int] = []

        async def record(slot: Slot) -> None:
            called.append(1)

        with pytest.raises(CircuitOpenError) as info:
            await t.execute(record)
        assert called == []
        assert info.value.retry_after == 30.0
        snap = t.snapshot()
        assert snap.concurrency == 8
        assert snap.waiting == 0
        assert snap.in_flight == 0
        await asyncio.sleep(30)
        assert await t.execute(lambda s: asyncio.sleep(0, "probe")) == "probe"
        assert t.snapshot().state is ThrottleState.RUNNING


async def test_retry_and_breaker_circuit_open_from_inside_retry_does_not_decelerate() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(
            4,
            retry=RetryConfig(max_attempts=4, backoff="fixed", base_delay=0.5),
            circuit_breaker=CircuitBreakerConfig(consecutive_failures=2, open_duration=30.0),
            failure_threshold=1,
        )

        async def fail(slot: Slot) -> None:
            raise Flaky

        with pytest.raises(CircuitOpenError):
            await t.execute(fail)
        assert t.snapshot().concurrency == 4
        assert t.snapshot().state is ThrottleState.CIRCUIT_OPEN


async def test_half_open_probe_ended_by_an_ignored_error_releases_the_probe() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(
            4,
            circuit_breaker=CircuitBreakerConfig(
                consecutive_failures=1, open_duration=10.0, half_open_max_calls=1
            ),
            is_failure=lambda e: not isinstance(e, KeyError),
        )

        async def fail(slot: Slot) -> None:
            raise Flaky

        async def ignored(slot: Slot) -> None:
            raise KeyError("not the service's fault")

        with pytest.raises(Flaky):
            await t.execute(fail)
        await asyncio.sleep(10)
        with pytest.raises(KeyError):
            await t.execute(ignored)  # the half-open probe ends with an ignored error
        assert await t.execute(lambda s: asyncio.sleep(0, "ok")) == "ok"
        assert t.snapshot().state is ThrottleState.RUNNING


async def test_breaker_config_reopens_with_doubling_delay_capped_at_five_times() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4, circuit_breaker=CircuitBreakerConfig(1, 10.0, 1))

        async def fail(slot: Slot) -> None:
            raise Flaky

        with pytest.raises(Flaky):
            await t.execute(fail)
        waits = []
        for _ in range(4):
            with pytest.raises(CircuitOpenError) as info:
                await t.execute(fail)
            waits.append(info.value.retry_after)
            await asyncio.sleep(info.value.retry_after)
            with pytest.raises(Flaky):
                await t.execute(fail)  # the probe fails: re-open
        assert waits == [10.0, 20.0, 40.0, 50.0]
        assert clock.now() == 120.0


async def test_server_busy_inside_retry_pauses_every_attempt() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(8, retry=Retry(3, backoff=fixed(0.0)))
        seen = []

        async def busy_then_ok(slot: Slot) -> str:
            seen.append(clock.now())
            if slot.attempt == 0:
                raise ServerBusy(retry_after=5.0)
            return "ok"

        assert await t.execute(busy_then_ok) == "ok"
        assert seen == [0.0, 5.0]  # the retry respected retry_after
        assert t.snapshot().concurrency == 4
        assert t.snapshot().paused_until is None  # the pause ended as the retry began


async def test_acquire_with_breaker_records_outcomes() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(2, circuit_breaker=CircuitBreaker(failure_threshold=1))
        with pytest.raises(Flaky):
            async with t.acquire():
                raise Flaky
        with pytest.raises(CircuitOpenError):
            async with t.acquire():
                pass
        assert t.snapshot().in_flight == 0


def test_retry_config_validation_and_mapping() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ConfigurationError, match="backoff"):
        RetryConfig(backoff="linear")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="base_delay"):
        RetryConfig(base_delay=-1)
    with pytest.raises(ConfigurationError, match="max_delay"):
        RetryConfig(base_delay=5, max_delay=1)
    with pytest.raises(ConfigurationError, match="retryable"):
        RetryConfig(retryable=3)  # type: ignore[arg-type]
    rng = random.Random(1)
    exp = RetryConfig(backoff="exponential", base_delay=1.0, max_delay=5.0).build()
    delays = exp.backoff.delays(rng)
    assert [next(delays) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    fix = RetryConfig(backoff="fixed", base_delay=0.3).build()
    assert next(fix.backoff.delays()) == 0.3
    jit = RetryConfig(backoff="exponential_jitter", base_delay=1.0, max_delay=4.0).build()
    values = [next(jit.backoff.delays(rng)) for _ in range(20)]
    assert all(0.0 <= v <= 1.0 for v in values)


def test_breaker_config_validation() -> None:
    with pytest.raises(ConfigurationError, match="consecutive_failures"):
        CircuitBreakerConfig(consecutive_failures=0)
    with pytest.raises(ConfigurationError, match="open_duration"):
        CircuitBreakerConfig(open_duration=-1)
    with pytest.raises(ConfigurationError, match="half_open_max_calls"):
        CircuitBreakerConfig(half_open_max_calls=0)
    breaker = CircuitBreakerConfig(3, 7.0, 2).build(name="svc")
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.recovery_timeout == 7.0
    assert CircuitBreakerConfig(open_duration=0).build().recovery_timeout > 0


async def test_retryable_predicate_stops_retries() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(
            2,
            retry=RetryConfig(
                max_attempts=3,
                retryable=lambda e: isinstance(e, Flaky),
                backoff="fixed",
                base_delay=0.1,
            ),
        )
        calls = []

        async def wrong(slot: Slot) -> None:
            calls.append(slot.attempt)
            raise KeyError("no")

        with pytest.raises(KeyError):
            await t.execute(wrong)
        assert calls == [0]


async def test_a_throttle_is_a_guard_in_a_pipeline() -> None:
    throttle = Throttle(4, failure_threshold=1, name="api")
    stack = pipeline(Retry(2, backoff=fixed(0)), throttle)
    seen: list[object] = []
    remove = stack.add_listener(seen.append)
    attempts = 0

    async def flaky(n: int, *, scale: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("reset")
        return n * scale

    with VirtualClock():
        assert await stack.call(flaky, 21, scale=2) == 42
    snap = stack.snapshot().guards[1]
    assert isinstance(snap, ThrottleSnapshot)
    assert (snap.completed, snap.failed, snap.in_flight) == (1, 1, 0)
    assert snap.concurrency == 2  # the failure lowered the limit (4 -> 2)
    assert any(isinstance(e, ThrottleEvent) and e.kind == "decreased" for e in seen)
    remove()
