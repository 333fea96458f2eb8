"""start_task / first_step: a task's cleanup runs even if it is cancelled before it runs."""

import asyncio
from typing import Any

import pytest

from headrace_core.lowlevel import despite_cancel, first_step, start_task
from headrace_core.testing import VirtualClock


async def _job(log: list[str]) -> int:
    try:
        await first_step()
        log.append("ran")
        await asyncio.sleep(0)
        return 1
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    finally:
        log.append("finally")


async def test_a_task_cancelled_before_its_first_step_runs_its_cleanup() -> None:
    log: list[str] = []
    task = start_task(asyncio.get_running_loop(), _job(log))
    assert log == []  # stepped into its try, no further
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["cancelled", "finally"]


async def test_plain_create_task_skips_that_cleanup() -> None:
    """What start_task is for: an unstarted coroutine dies without running a line."""
    log: list[str] = []
    task = asyncio.get_running_loop().create_task(_job(log))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == []


async def test_a_started_task_runs_as_it_would_have_one_hop_later() -> None:
    log: list[str] = []
    task = start_task(asyncio.get_running_loop(), _job(log), name="job")
    assert task.get_name() == "job"
    assert not task.done()
    await asyncio.sleep(0)
    assert log == ["ran"]  # its first step came one hop after start_task
    assert await task == 1
    assert log == ["ran", "finally"]


async def test_first_step_elsewhere_is_one_hop() -> None:
    log: list[str] = []
    assert await _job(log) == 1
    assert log == ["ran", "finally"]


async def _no_first_step() -> None:
    await asyncio.get_running_loop().create_future()


async def _returns_at_once() -> int:
    return 1


@pytest.mark.parametrize("make", [_no_first_step, _returns_at_once])
async def test_a_coroutine_without_first_step_is_refused_and_closed(make: Any) -> None:
    coro = make()
    with pytest.raises(RuntimeError, match=r"first await .* must be `await first_step\(\)`"):
        start_task(asyncio.get_running_loop(), coro)
    assert coro.cr_frame is None  # closed: nothing of it is left suspended


async def _must(log: list[str], bound: float | None, delay: float) -> None:
    try:
        await first_step()
    except asyncio.CancelledError:
        try:
            await despite_cancel(lambda: _work(log, delay), bound)
        except TimeoutError:
            log.append("timed out")
        raise
    await _work(log, delay)


async def _work(log: list[str], delay: float) -> None:
    await asyncio.sleep(delay)
    log.append("done")


@pytest.mark.parametrize("bound", [5.0, None])
async def test_despite_cancel_does_the_job_of_a_task_cancelled_before_it_ran(
    bound: float | None,
) -> None:
    with VirtualClock():
        log: list[str] = []
        task = start_task(asyncio.get_running_loop(), _must(log, bound, 1.0))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["done"]  # its job, then the cancellation it was asked for
        assert task.cancelled()


async def test_despite_cancel_gives_up_past_its_bound() -> None:
    with VirtualClock():
        loop = asyncio.get_running_loop()
        log: list[str] = []
        start = loop.time()
        task = start_task(loop, _must(log, 2.0, 10.0))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["timed out"]
        assert loop.time() - start == pytest.approx(2.0)


async def test_despite_cancel_obeys_a_cancel_that_comes_while_it_runs() -> None:
    with VirtualClock():
        log: list[str] = []
        task = start_task(asyncio.get_running_loop(), _must(log, 5.0, 1.0))
        task.cancel()
        await asyncio.sleep(0.5)  # it is doing its job now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == []
