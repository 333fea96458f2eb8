"""What a throttle logs on ``headrace.throttle``: decreases, recovery and pauses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from headrace_core import CircuitOpenError
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker
from headrace_throttle import ServerBusy, Slot, Throttle

LOGGER = "headrace.throttle"


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[Any]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and getattr(r, "headrace_event", None) == event
    ]


def test_package_logger_is_silent_by_default() -> None:
    assert logging.getLogger(LOGGER).parent is logging.getLogger("headrace")
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("headrace").handlers)


async def test_decrease_pause_resume_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with VirtualClock(start=0.0):
        t = Throttle(8, failure_threshold=100, name="api")

        async def busy(slot: Slot) -> None:
            raise ServerBusy(retry_after=5.0)

        with pytest.raises(ServerBusy):
            await t.execute(busy)
        await t.execute(lambda slot: asyncio.sleep(0))
        t.set_concurrency(8)
    (paused,) = records(caplog, "paused")
    assert paused.levelno == logging.INFO
    message = paused.getMessage()
    assert message == "Throttle 'api': admissions paused for 5.000s (reason: ServerBusy)"
    assert (paused.headrace_delay, paused.headrace_reason) == (5.0, "ServerBusy")
    assert paused.headrace_kind == "Throttle"
    assert paused.headrace_component == "api"
    (decreased,) = records(caplog, "decreased")
    assert decreased.levelno == logging.INFO
    assert (decreased.headrace_old_concurrency, decreased.headrace_concurrency) == (8, 4)
    assert decreased.headrace_reason == "server_busy"
    assert decreased.getMessage().startswith("Throttle 'api': concurrency decreased 8 -> 4")
    (resumed,) = records(caplog, "resumed")
    assert resumed.headrace_state == "running"
    (recovered,) = records(caplog, "recovered")
    assert recovered.levelno == logging.INFO
    assert (recovered.headrace_concurrency, recovered.headrace_reason) == (8, "manual")


async def test_silent_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with VirtualClock(start=0.0):
        t = Throttle(8, failure_threshold=100)

        async def busy(slot: Slot) -> None:
            raise ServerBusy(retry_after=1.0)

        with pytest.raises(ServerBusy):
            await t.execute(busy)
        await t.execute(lambda slot: asyncio.sleep(0))
    assert [r for r in caplog.records if r.name == LOGGER] == []


async def test_a_flood_of_decreases_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with VirtualClock(start=0.0):
        t = Throttle(1000, min_concurrency=1, name="flood")
        for n in range(999, 0, -1):
            t.set_concurrency(n)
    assert 1 <= len(records(caplog, "decreased")) <= 10


async def test_circuit_open_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="headrace")
    with VirtualClock(start=0.0):
        t = Throttle(4, name="svc", circuit_breaker=CircuitBreaker("svc", failure_threshold=1))

        async def fail(slot: Slot) -> None:
            raise OSError("down")

        with pytest.raises(OSError, match="down"):
            await t.execute(fail)
        with pytest.raises(CircuitOpenError):
            await t.execute(fail)
    opened = [
        (r.levelno, getattr(r, "headrace_component", None))
        for r in caplog.records
        if getattr(r, "headrace_event", None) == "opened"
    ]
    assert opened == [(logging.WARNING, "svc")]
