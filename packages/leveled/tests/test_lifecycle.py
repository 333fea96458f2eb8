"""A ``Processor``'s runs: counted, reported to listeners, awaited by ``aclose()``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from headrace_core import Closed
from headrace_leveled import Processor, ProcessorError, ProcessorEvent, Task


async def _ok(ctx: Any) -> None:
    return None


async def _boom(ctx: Any) -> None:
    raise KeyError("down")


def _processor(execute: Any = _ok) -> Processor[Any, str]:
    return Processor.builder().add_task(Task("A", _ok, execute, _ok), level=1).build()


async def test_runs_are_counted_and_reported() -> None:
    p = _processor()
    events: list[ProcessorEvent] = []
    p.add_listener(events.append)
    await p.process_tasks(None)
    failing = _processor(_boom)
    failing.add_listener(events.append)
    with pytest.raises(ProcessorError):
        await failing.process_tasks(None)
    assert [e.kind for e in events] == ["started", "succeeded", "started", "failed"]
    assert events[1].report is not None
    assert events[1].report.succeeded
    assert isinstance(events[3].error, ProcessorError)
    assert p.snapshot().succeeded == 1
    snap = failing.snapshot()
    assert (snap.runs, snap.failed, snap.running, snap.tasks) == (1, 1, 0, 1)


async def test_a_cancelled_run_is_counted_as_cancelled() -> None:
    gate = asyncio.Event()

    async def wait(ctx: Any) -> None:
        await gate.wait()

    p = _processor(wait)
    run = asyncio.create_task(p.process_tasks(None))
    await asyncio.sleep(0)
    assert p.snapshot().running == 1
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    snap = p.snapshot()
    assert (snap.cancelled, snap.running) == (1, 0)


async def test_a_phase_runner_counts_from_its_first_phase_to_its_last() -> None:
    p = _processor()
    kinds: list[str] = []
    p.add_listener(lambda event: kinds.append(event.kind))
    async with p.open(None) as runner:
        assert p.snapshot().runs == 0  # nothing ran yet
        await runner.run_next()
        assert p.snapshot().running == 1
        closing = asyncio.create_task(p.aclose())
        await asyncio.sleep(0)
        assert not closing.done()  # waits for the runner's run
        while await runner.run_next():
            pass
    await closing
    assert kinds == ["started", "succeeded"]
    with pytest.raises(Closed):
        p.open(None)
    with pytest.raises(Closed):
        await p.process_tasks(None)


async def test_a_runner_left_early_ends_its_run_with_cleanup() -> None:
    p = _processor()
    async with p.open(None) as runner:
        await runner.run_next()  # pre only: leaving runs post
    snap = p.snapshot()
    assert (snap.running, snap.succeeded) == (0, 1)
    await p.aclose()


async def test_a_dropped_runner_does_not_hold_aclose() -> None:
    p = _processor()
    runner = p.open(None)
    await runner.run_next()
    assert p.snapshot().running == 1
    del runner
    assert p.snapshot().running == 0
    await p.aclose()


async def test_runs_and_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    from headrace_leveled import TaskFunction

    calls = 0

    async def flaky(ctx: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("once")

    p = _processor(TaskFunction(flaky, retries=1, retry_on=(KeyError,), initial_delay=0.0))
    failing = _processor(_boom)
    with caplog.at_level(logging.DEBUG, logger="headrace.leveled"):
        await p.process_tasks(None)
        with pytest.raises(ProcessorError):
            await failing.process_tasks(None)
    records: list[Any] = caplog.records
    by_event = {r.headrace_event: r for r in records if hasattr(r, "headrace_event")}
    retry = by_event["retry"]
    assert (retry.levelno, retry.headrace_attempt, retry.headrace_phase) == (
        logging.DEBUG,
        1,
        "execute",
    )
    assert retry.headrace_error_type == "KeyError"
    failed = by_event["run_failed"]
    assert failed.levelno == logging.WARNING
    assert failed.headrace_failures == 1
    assert "execute of 'A'" in failed.getMessage()
    assert by_event["run_succeeded"].levelno == logging.DEBUG


async def test_nothing_is_logged_when_logging_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.CRITICAL, logger="headrace.leveled"),
        pytest.raises(ProcessorError),
    ):
        await _processor(_boom).process_tasks(None)
    assert [r for r in caplog.records if r.name == "headrace.leveled"] == []
