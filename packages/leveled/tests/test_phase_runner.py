"""open(): phase-by-phase stepping, as sdax 0.7's AsyncPhaseRunner."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_leveled import Phase, PhaseId, Processor, ProcessorError, Task


def recorder(log: list[str], label: str, delay: float = 0, fail: bool = False) -> Any:
    async def run(ctx: Any) -> None:
        log.append(label)
        await asyncio.sleep(delay)
        if fail:
            raise ValueError(label)

    return run


def processor(
    log: list[str], *, fail_pre: bool = False, pre_delay: float = 0
) -> Processor[Any, Any]:
    return (
        Processor.builder()
        .add_task(
            Task(
                "A",
                recorder(log, "A.pre", pre_delay, fail_pre),
                recorder(log, "A.exe"),
                recorder(log, "A.post", 1),
            ),
            level=1,
        )
        .add_task(Task("B", recorder(log, "B.pre"), post_execute=recorder(log, "B.post")), level=2)
        .build()
    )


async def test_step_through_every_phase() -> None:
    log: list[str] = []
    seen: list[Phase | None] = []
    with VirtualClock():
        async with processor(log).open(None) as runner:
            assert runner.next_phase_id() is Phase.PRE_EXECUTE
            assert runner.last_phase_id() is None
            while await runner.run_next():
                seen.append(runner.last_phase_id())
                log.append("|")
            seen.append(runner.last_phase_id())
    assert seen == [PhaseId.PRE_EXEC, PhaseId.EXECUTE, PhaseId.POST_EXEC]
    assert log == ["A.pre", "B.pre", "|", "A.exe", "|", "B.post", "A.post"]
    assert runner.next_phase_id() is None
    assert not runner.has_failures()
    assert runner.report.succeeded
    with pytest.raises(RuntimeError):
        await runner.run_next()


async def test_failures_recorded_then_raised_at_exit() -> None:
    log: list[str] = []

    async def drive() -> None:
        async with processor(log, fail_pre=True).open(None) as runner:
            assert await runner.run_next() is True  # pre failed: only post is left
            assert runner.next_phase_id() is Phase.POST_EXECUTE
            assert runner.has_failures()
            assert [type(e) for e in runner.failures()] == [ValueError]
            while await runner.run_next():
                pass

    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await drive()
    assert log == ["A.pre", "A.post"]
    assert info.value.failures[0].task == "A"


async def test_exit_after_pre_skips_execute_and_runs_post() -> None:
    log: list[str] = []
    with VirtualClock():
        async with processor(log).open(None) as runner:
            await runner.run_next()
    assert log == ["A.pre", "B.pre", "B.post", "A.post"]


async def test_exit_before_any_phase_runs_nothing() -> None:
    log: list[str] = []
    async with processor(log).open(None):
        pass
    assert log == []


async def test_body_exception_still_cleans_up_and_propagates() -> None:
    log: list[str] = []

    async def drive() -> None:
        async with processor(log).open(None) as runner:
            await runner.run_next()
            raise LookupError("body")

    with VirtualClock(), pytest.raises(LookupError):
        await drive()
    assert log[-2:] == ["B.post", "A.post"]


async def test_cancel_during_pre_step_then_cleanup_on_exit() -> None:
    log: list[str] = []
    p = processor(log, pre_delay=100)

    async def drive() -> None:
        async with p.open(None) as runner:
            while await runner.run_next():
                pass

    with VirtualClock():
        task = asyncio.create_task(drive())
        await asyncio.sleep(1)
        task.cancel()
        await asyncio.sleep(0.5)
        task.cancel()  # a second cancel lands during A.post
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == ["A.pre", "A.post"]


async def test_raise_failures_explicitly() -> None:
    log: list[str] = []
    with VirtualClock():
        runner = processor(log, fail_pre=True).open(None)
        runner.raise_failures()  # nothing ran yet: nothing to raise
        await runner.run_next()
        with pytest.raises(ProcessorError):
            runner.raise_failures()
        await runner.aclose()
        await runner.aclose()  # idempotent
    assert log == ["A.pre", "A.post"]


async def test_cancel_during_post_step_completes_cleanup_then_raises() -> None:
    log: list[str] = []
    p = processor(log)

    async def drive() -> None:
        async with p.open(None) as runner:
            while await runner.run_next():
                pass

    with VirtualClock():
        task = asyncio.create_task(drive())
        await asyncio.sleep(0.5)  # inside A.post (1 s)
        task.cancel()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == ["A.pre", "B.pre", "A.exe", "B.post", "A.post"]


async def test_report_of_runner_after_the_run() -> None:
    log: list[str] = []
    with VirtualClock():
        async with processor(log).open(None) as runner:
            while await runner.run_next():
                pass
    report = runner.report
    assert set(report.tasks) == {"A", "B"}
    assert report.tasks["A"].phases[Phase.POST_EXECUTE].duration == 1
