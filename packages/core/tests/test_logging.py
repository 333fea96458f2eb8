"""The event log every package writes its records through."""

from __future__ import annotations

import asyncio
import logging

import pytest

import headrace_core
from headrace_core.lowlevel import EventLog
from headrace_core.testing import VirtualClock

LOGGER = "headrace.core.test_logging"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> EventLog:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return EventLog(LOGGER, limit=3, window=10.0)


def test_headrace_logger_has_a_null_handler() -> None:
    assert headrace_core.lowlevel.EventLog is EventLog
    handlers = logging.getLogger("headrace").handlers
    assert sum(isinstance(h, logging.NullHandler) for h in handlers) == 1
    for name in ("headrace.core", "headrace.guards", "headrace.throttle", "headrace.flow"):
        assert logging.getLogger(name).parent is logging.getLogger("headrace")


def test_fields_are_prefixed_and_never_clash(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    log.info(
        "retrying in %.1fs",
        1.5,
        kind="Retry",
        component="fetch",
        name="x",
        msg="y",
        args="z",
        delay=1.5,
        attempt=2,
    )
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "Retry 'fetch': retrying in 1.5s"
    assert record.name == LOGGER
    extra = {k: v for k, v in vars(record).items() if k.startswith("headrace_")}
    assert extra == {
        "headrace_kind": "Retry",
        "headrace_component": "fetch",
        "headrace_event": "retrying in %.1fs",
        "headrace_name": "x",
        "headrace_msg": "y",
        "headrace_args": "z",
        "headrace_delay": 1.5,
        "headrace_attempt": 2,
    }
    # makeRecord raises KeyError for an extra key that is a LogRecord attribute.
    plain = logging.LogRecord("n", logging.INFO, __file__, 1, "m", None, None)
    assert not set(extra) & set(vars(plain))
    logging.getLogger(LOGGER).makeRecord(
        LOGGER, logging.INFO, __file__, 1, "m", (), None, extra=extra
    )


def test_unnamed_component_and_levels(log: EventLog, caplog: pytest.LogCaptureFixture) -> None:
    log.debug("a", kind="Bulkhead", component=None)
    log.warning("b", kind="Bulkhead", component=None)
    log.log(logging.ERROR, "c", kind="Bulkhead", component=None)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "Bulkhead: a"),
        (logging.WARNING, "Bulkhead: b"),
        (logging.ERROR, "Bulkhead: c"),
    ]
    assert caplog.records[0].headrace_component is None  # type: ignore[attr-defined]


def test_disabled_logger_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    log = EventLog(LOGGER, limit=1)
    assert not log.enabled(logging.INFO)
    for _ in range(5):
        log.info("x", kind="K", component=None)
        log.debug("x", kind="K", component=None)
    assert caplog.records == []
    assert log._budgets == {}  # not even counted
    log.warning("x", kind="K", component=None)
    assert len(caplog.records) == 1


async def test_rate_limit_per_key_on_virtual_time(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    with VirtualClock(start=0.0):
        for _ in range(10):
            log.info("opened", kind="CircuitBreaker", component="a")
        log.info("opened", kind="CircuitBreaker", component="b")  # another key
        log.info("closed", kind="CircuitBreaker", component="a", event="closed")
        assert len(caplog.records) == 5
        await asyncio.sleep(5.0)
        log.info("opened", kind="CircuitBreaker", component="a")
        assert len(caplog.records) == 5  # same window
        await asyncio.sleep(5.0)
        log.info("opened", kind="CircuitBreaker", component="a")
        log.info("opened", kind="CircuitBreaker", component="a")
    records = [r for r in caplog.records if r.headrace_component == "a"]  # type: ignore[attr-defined]
    assert len(records) == 6
    summary = records[-2]
    assert summary.headrace_suppressed == 8  # type: ignore[attr-defined]
    assert summary.getMessage() == "CircuitBreaker 'a': opened (8 similar records suppressed)"
    assert not hasattr(records[-1], "headrace_suppressed")


def test_rate_limit_without_a_loop_counts_events(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    # Without a clock a window is limit * 100 = 300 events of the key.
    for _ in range(300):
        log.debug("rejected", kind="Bulkhead", component="db")
    assert len(caplog.records) == 3
    log.debug("rejected", kind="Bulkhead", component="db")
    assert len(caplog.records) == 4
    assert caplog.records[-1].headrace_suppressed == 297  # type: ignore[attr-defined]
    for _ in range(10_000):
        log.debug("rejected", kind="Bulkhead", component="db")
    assert len(caplog.records) <= 4 + 3 * (10_000 // 300 + 1)


def test_key_table_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log = EventLog(LOGGER)
    for i in range(5000):
        log.debug("x", kind="K", component=str(i))
    assert len(log._budgets) <= 4096
    assert len(caplog.records) == 5000


@pytest.mark.parametrize(("limit", "window"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_bad_arguments(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        EventLog(LOGGER, limit=limit, window=window)
