"""start_task / first_step: a task's cleanup runs even if it is cancelled before it runs."""

import asyncio
from typing import Any

import pytest

from headrace_core.lowlevel import first_step, start_task


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
