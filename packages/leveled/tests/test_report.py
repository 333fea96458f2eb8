"""RunReport, TaskReport and PhaseReport: states, timings, attempts, results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_leveled import (
    Phase,
    PhaseReport,
    Processor,
    ProcessorError,
    Task,
    TaskFunction,
    TaskState,
)


def sleeper(delay: float, result: Any = None, fail: BaseException | None = None) -> Any:
    async def run(ctx: Any) -> Any:
        await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        return result

    return run


async def test_report_timings_from_the_loop_clock() -> None:
    p = (
        Processor.builder()
        .add_task(Task("A", sleeper(1, "p"), sleeper(2, "e"), sleeper(3, "q")), level=0)
        .add_task(Task("B", execute=sleeper(4, 7)), level=1)
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        report = await p.process_tasks(None)
    a = report.tasks["A"]
    assert a.state is TaskState.SUCCEEDED
    assert list(a.phases) == [Phase.PRE_EXECUTE, Phase.EXECUTE, Phase.POST_EXECUTE]
    assert a.phases[Phase.PRE_EXECUTE] == PhaseReport(start, start + 1, 1, 1, "p", None)
    assert a.phases[Phase.EXECUTE] == PhaseReport(start + 1, start + 3, 2, 1, "e", None)
    assert a.phases[Phase.POST_EXECUTE].started == start + 5
    assert a.result == "e"
    assert report.results == {"A": "e", "B": 7}
    assert list(report.tasks["B"].phases) == [Phase.EXECUTE]
    assert report.started == start
    assert report.ended == start + 8
    assert report.duration == 8
    assert report.succeeded
    assert report.failures == ()


async def test_report_states_and_errors() -> None:
    boom = KeyError("boom")
    p = (
        Processor.builder()
        .add_task(Task("bad", sleeper(1, fail=boom), post_execute=sleeper(0)), level=0)
        .add_task(Task("cut", sleeper(5), post_execute=sleeper(0)), level=0)
        .add_task(Task("fine", sleeper(0.5), sleeper(1)), level=0)
        .add_task(Task("never", sleeper(1)), level=1)
        .build()
    )
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    report = info.value.report
    assert report is not None
    tasks = report.tasks
    assert tasks["bad"].state is TaskState.FAILED
    assert tasks["bad"].phases[Phase.PRE_EXECUTE].error is boom
    assert tasks["bad"].phases[Phase.PRE_EXECUTE].state is TaskState.FAILED
    assert tasks["cut"].state is TaskState.CANCELLED
    assert tasks["cut"].phases[Phase.PRE_EXECUTE].error is None
    assert tasks["cut"].phases[Phase.PRE_EXECUTE].duration == 1
    assert tasks["fine"].state is TaskState.SUCCEEDED  # its pre ran; execute was skipped
    assert Phase.EXECUTE not in tasks["fine"].phases
    assert tasks["never"].state is TaskState.SKIPPED
    assert tasks["never"].phases == {}
    assert report.results == {}
    assert not report.succeeded
    assert [f.task for f in report.failures] == ["bad"]
    assert "bad" in repr(report) or "failed" in repr(report)


async def test_attempts_counted_per_phase() -> None:
    calls = []

    async def flaky(ctx: Any) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError
        return "ok"

    p = (
        Processor.builder()
        .add_task(Task("A", execute=TaskFunction(flaky, retries=5, initial_delay=0.5)))
        .build()
    )
    with VirtualClock():
        report = await p.process_tasks(None)
    assert report.tasks["A"].phases[Phase.EXECUTE].attempts == 3


async def test_timeline_renders_every_phase() -> None:
    p = (
        Processor.builder()
        .add_task(Task("A", sleeper(1), sleeper(1), sleeper(1)), level=0)
        .add_task(Task("B", sleeper(1)), level=1)
        .build()
    )
    with VirtualClock():
        report = await p.process_tasks(None)
    text = report.timeline(width=20)
    lines = text.splitlines()
    assert len(lines) == 1 + 4
    assert lines[1].startswith("'A'")
    assert "pre_execute" in lines[1]
    assert "|#####" in lines[1]
    assert lines[-1].rstrip().endswith("#####|")


async def test_report_is_stable_after_materialization() -> None:
    p = Processor.builder().add_task(Task("A", execute=sleeper(0, 1))).build()
    report = await p.process_tasks(None)
    first = report.tasks
    assert report.tasks is first
    assert report.results == {"A": 1}
