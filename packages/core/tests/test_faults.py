"""Fault injection at every point where headrace-core calls user code."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import pytest

import headrace_core
import headrace_core.backoff
import headrace_core.stats
from headrace_core import BackoffError
from headrace_core.backoff import next_delay
from headrace_core.lowlevel import PerLoop
from headrace_core.stats import EwmaRate, Listeners
from shared.faults import (
    ITERATOR_FAULTS,
    SYNC_FAULTS,
    Fault,
    FaultError,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    missing_points,
    run_injection,
)


async def drive_sync_listener(fault: Fault) -> None:
    seen: list[int] = []
    listeners: Listeners[int] = Listeners("headrace.core", "test")
    listeners.add(lambda event: inject(fault, wrong=object()) if event == 1 else None)
    listeners.add(seen.append)  # a later listener still hears the event
    error = expected_error(fault)
    if error in (KeyboardInterrupt, SystemExit):
        with pytest.raises(error):
            listeners.emit(1)
    else:
        listeners.emit(1)  # isolated: logged, never raised (CancelledError included)
    assert seen == [1]
    listeners.emit(2)
    assert seen == [1, 2]
    await listeners.aclose()


async def drive_async_listener(fault: Fault) -> None:
    seen: list[int] = []
    listeners: Listeners[int] = Listeners("headrace.core", "test")

    async def bad(event: int) -> None:
        await ainject(fault, wrong=object())

    listeners.add(bad)
    listeners.add(seen.append)
    listeners.emit(1)  # never raises: the listener runs in its own task
    assert seen == [1]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # A hanging listener is cancelled by aclose(timeout=); every other one has ended.
    await listeners.aclose(timeout=1.0)
    assert listeners.pending == 0


async def drive_per_loop_factory(fault: Fault) -> None:
    calls: list[int] = []

    def factory() -> list[int]:
        calls.append(1)
        if len(calls) == 1:
            return inject(fault, wrong=None)  # type: ignore[no-any-return]
        return [42]

    state: PerLoop[list[int] | None] = PerLoop(factory)
    error = expected_error(fault)
    if error is None:
        assert state.get() is None  # a wrong value is the user's value: returned, kept
        return
    with pytest.raises(error):
        state.get()
    assert state.peek() is None  # nothing half-registered
    assert state.get() == [42]  # the next call works


async def drive_ewma_clock(fault: Fault) -> None:
    readings = iter([0.0, 1.0])

    def clock() -> float:
        value = next(readings, None)
        if value is None:
            return inject(fault, wrong=math.nan)  # type: ignore[no-any-return]
        return value

    rate = EwmaRate(tau=1.0, clock=clock)
    rate.mark()
    rate.mark()
    error = expected_error(fault)
    if error is None:
        rate.mark()  # a NaN reading counts the event and corrupts nothing
        value = rate.rate()
        assert math.isfinite(value)
        assert value > 0
        return
    with pytest.raises(error):
        rate.mark()
    assert math.isfinite(rate._rate)


@dataclass(frozen=True)
class _Counts:
    calls: int
    rejected: int


class _Component:
    def __init__(self, name: str, fault: Fault | None = None) -> None:
        self.name = name
        self.fault = fault

    def snapshot(self) -> object:
        if self.fault is not None:
            return inject(self.fault, wrong=None)
        return _Counts(calls=3, rejected=1)


async def drive_prometheus_snapshot(fault: Fault) -> None:
    # A component's snapshot() runs at scrape time, on the exporter's thread: a broken one
    # leaves only its own samples out (its CancelledError too: a scrape is no task);
    # KeyboardInterrupt and SystemExit reach the scraper.
    prometheus = pytest.importorskip("headrace_core.prometheus")
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    good = prometheus.instrument(_Component("good"), registry=registry)
    bad_component = _Component("bad", fault)
    bad = prometheus.instrument(bad_component, registry=registry)
    error = expected_error(fault)
    if error in (KeyboardInterrupt, SystemExit):
        with pytest.raises(error):
            generate_latest(registry)
    else:
        text = generate_latest(registry).decode()
        assert 'headrace_component="good"' in text
        assert 'headrace_component="bad"' not in text
    bad_component.fault = None  # it works again: its samples come back
    assert 'headrace_component="bad"' in generate_latest(registry).decode()
    bad.close()
    good.close()
    assert generate_latest(registry) == b""


async def drive_backoff_delays(fault: Fault) -> None:
    def schedule() -> object:
        yield 0.5
        if fault is Fault.EARLY_END:
            return
        if fault is Fault.WRONG:
            yield math.nan
        if fault is Fault.HANG:  # a sync iterator cannot hang the loop: it would freeze it
            yield -1.0
        inject(fault)

    delays = schedule()
    assert next_delay(delays) == 0.5  # type: ignore[arg-type]
    error = expected_error(fault)
    cause = FaultError("the retried call's error")
    if error is None:
        with pytest.raises(BackoffError) as info:
            next_delay(delays, owner="custom", cause=cause)  # type: ignore[arg-type]
        assert info.value.__cause__ is cause
    else:
        with pytest.raises(error):
            next_delay(delays, owner="custom", cause=cause)  # type: ignore[arg-type]


POINTS = [
    Point("Listeners.add.callback", SYNC_FAULTS, drive_sync_listener),
    Point("Listeners.add.callback (async)", (*SYNC_FAULTS, Fault.HANG), drive_async_listener),
    Point("PerLoop.factory", SYNC_FAULTS, drive_per_loop_factory),
    Point("EwmaRate.clock", SYNC_FAULTS, drive_ewma_clock),
    Point("next_delay.delays", ITERATOR_FAULTS, drive_backoff_delays),
    Point(
        "prometheus.instrument.component (snapshot at scrape)",
        SYNC_FAULTS,
        drive_prometheus_snapshot,
    ),
]

_RNG = "a random.Random used as given: its own errors propagate unchanged"
EXCLUDE = {
    "Backoff.delays.rng": _RNG,
    "decorrelated_jitter.delays.rng": _RNG,
    "exponential.delays.rng": _RNG,
    "fixed.delays.rng": _RNG,
    "full_jitter.delays.rng": _RNG,
}


def test_every_callable_parameter_is_in_the_table() -> None:
    missing: list[str] = []
    for module in (headrace_core, headrace_core.stats, headrace_core.backoff):
        missing += missing_points(
            module,
            POINTS,
            exclude={k: v for k, v in EXCLUDE.items() if module is headrace_core.backoff},
        )
    assert missing == []


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="headrace.core"):
        run_injection(point.drive, fault, start=start)
