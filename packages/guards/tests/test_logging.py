"""What the guards log on ``headrace.guards``: levels, messages and ``extra`` fields."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from headrace_core import BulkheadFull, CircuitOpenError, GuardTimeout, RateLimited
from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import Bulkhead, CircuitBreaker, RateLimiter, Retry, Timeout

LOGGER = "headrace.guards"


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "headrace_event", None) == event]


class Boom(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr must not be called")


def test_package_logger_is_silent_by_default() -> None:
    logger = logging.getLogger(LOGGER)
    assert logger.parent is not None
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("headrace").handlers)


async def test_retry_logs_each_retry_and_the_exhaustion(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):
        retry = Retry(3, backoff=fixed(0.5), name="fetch")

        async def fail() -> None:
            raise Boom

        with pytest.raises(Boom):
            await retry.call(fail)
    retries = records(caplog, "retry")
    assert [(r.levelno, r.getMessage()) for r in retries] == [
        (logging.DEBUG, "Retry 'fetch': attempt 1 failed (Boom), retrying in 0.500s"),
        (logging.DEBUG, "Retry 'fetch': attempt 2 failed (Boom), retrying in 0.500s"),
    ]
    assert [(r.headrace_attempt, r.headrace_delay) for r in retries] == [(1, 0.5), (2, 0.5)]
    assert {r.headrace_error_type for r in retries} == {"Boom"}
    assert {(r.headrace_kind, r.headrace_component) for r in retries} == {("Retry", "fetch")}
    (gave_up,) = records(caplog, "exhausted")
    assert gave_up.levelno == logging.INFO
    assert gave_up.getMessage() == "Retry 'fetch': giving up after 3 attempts (Boom)"
    assert gave_up.headrace_attempt == 3


async def test_retry_on_result_names_no_error(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):
        retry = Retry(2, backoff=fixed(0.1), retry_on_result=lambda v: v is None)

        async def none() -> int | None:
            return None

        assert await retry.call(none) is None
    (retried,) = records(caplog, "retry")
    assert retried.headrace_error_type is None
    assert retried.getMessage() == "Retry: attempt 1 failed (result rejected), retrying in 0.100s"


async def test_breaker_transitions_and_rejections(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):
        breaker = CircuitBreaker("svc-log", failure_threshold=1, recovery_timeout=5)

        async def fail() -> None:
            raise Boom

        async def ok() -> int:
            return 1

        with pytest.raises(Boom):
            await breaker.call(fail)
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        await asyncio.sleep(5)
        assert await breaker.call(ok) == 1
    opened, half_open, closed = (records(caplog, e) for e in ("opened", "half-open", "closed"))
    assert [r.levelno for r in opened + half_open + closed] == [
        logging.WARNING,
        logging.INFO,
        logging.INFO,
    ]
    message = opened[0].getMessage()
    assert message == "CircuitBreaker 'svc-log': opened (was closed, reason: failures)"
    assert (opened[0].headrace_state, opened[0].headrace_old_state) == ("open", "closed")
    assert closed[0].headrace_reason == "probes_succeeded"
    (rejected,) = records(caplog, "rejected")
    assert rejected.levelno == logging.DEBUG
    assert rejected.headrace_state == "open"
    assert rejected.headrace_retry_after == pytest.approx(5.0)


async def test_a_flood_of_rejections_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):
        breaker = CircuitBreaker("svc-flood", failure_threshold=1, recovery_timeout=3600)
        await breaker.force_open()

        async def ok() -> int:
            return 1

        for _ in range(1000):
            with pytest.raises(CircuitOpenError):
                await breaker.call(ok)
    assert 1 <= len(records(caplog, "rejected")) <= 10


async def test_bulkhead_logs_the_start_of_each_run_of_rejections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with VirtualClock(start=0.0):
        bulkhead = Bulkhead(1, max_wait=0, name="bulkhead-log")
        await bulkhead.acquire()
        for _ in range(1000):
            with pytest.raises(BulkheadFull):
                await bulkhead.acquire()
        bulkhead.release()
        await bulkhead.acquire()  # an admission ends the run
        with pytest.raises(BulkheadFull):
            await bulkhead.acquire()
        bulkhead.release()
    starts = records(caplog, "rejecting")
    assert [r.levelno for r in starts] == [logging.INFO, logging.INFO]
    assert starts[0].getMessage() == "Bulkhead 'bulkhead-log': started rejecting calls"
    assert starts[0].headrace_limit == 1
    assert 1 <= len(records(caplog, "rejected")) <= 10
    assert len(caplog.records) <= 12


async def test_rate_limiter_logs_rejections(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):
        limiter = RateLimiter(1, per=10.0, max_wait=0, name="rate-log")
        await limiter.acquire()
        for _ in range(1000):
            with pytest.raises(RateLimited):
                await limiter.acquire()
    (start,) = records(caplog, "rejecting")
    assert start.levelno == logging.INFO
    assert start.headrace_kind == "RateLimiter"
    rejected = records(caplog, "rejected")
    assert 1 <= len(rejected) <= 10
    assert rejected[0].headrace_retry_after == pytest.approx(10.0)


async def test_timeout_logs_its_expiry(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):
        timeout = Timeout(2.0, name="slow")
        with pytest.raises(GuardTimeout):
            await timeout.call(asyncio.sleep, 10)
    (expired,) = records(caplog, "timeout")
    assert expired.levelno == logging.DEBUG
    assert expired.getMessage() == "Timeout 'slow': timed out after 2.000s"
    assert expired.headrace_delay == 2.0


async def test_nothing_is_logged_or_counted_when_disabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    with VirtualClock(start=0.0):
        breaker = CircuitBreaker("svc-quiet", failure_threshold=1)

        async def fail() -> None:
            raise Boom

        for _ in range(3):
            with pytest.raises((Boom, CircuitOpenError)):
                await breaker.call(fail)
    assert caplog.records == []
