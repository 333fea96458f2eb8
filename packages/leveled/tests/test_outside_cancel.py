"""The run's own tasks cancelled by someone else (a shutdown sweep), before or after they start.

A task cancelled before its first step runs no line of its coroutine, not even a ``try``.
Here a task factory cancels the chosen tasks the moment they are created, as a sweep
``for t in asyncio.all_tasks(): t.cancel()`` does when it lands between a task's creation
and its first step. No real sleeps: phases await ``asyncio.sleep(0)`` or virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from headrace_core import HeadraceError
from headrace_core.testing import VirtualClock
from headrace_leveled import (
    Phase,
    Processor,
    ProcessorError,
    Task,
    TaskFailure,
    TaskFunction,
    TaskState,
)

Fn = Callable[[Any], Awaitable[Any]]


def step(log: list[str], label: str) -> Fn:
    async def run(ctx: Any) -> str:
        log.append(label)
        await asyncio.sleep(0)
        return label

    run.__qualname__ = label
    return run


def two_tasks(log: list[str], wrap: Callable[[Fn], Any] = lambda fn: fn, **build: Any) -> Any:
    """A and B on one level (so each phase call runs in a task of its own)."""
    builder = Processor.builder()
    for name in "AB":
        phases = [wrap(step(log, f"{name}.{p}")) for p in ("pre", "exe", "post")]
        builder.add_task(Task(name, *phases), level=1)
    return builder.build(**build)


@contextlib.contextmanager
def cancel_at_creation(match: Callable[[Any], bool], *, times: int = 1) -> Iterator[list[str]]:
    """Cancel, right after its creation, each new task whose coroutine ``match``es.

    At most ``times`` tasks are cancelled; yields the names of their coroutines.
    """
    loop = asyncio.get_running_loop()
    old = loop.get_task_factory()
    hits: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if old is not None:
            task = old(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if len(hits) < times and not task.done() and match(coro):
            hits.append(coro.__qualname__)
            task.cancel()
        return task

    loop.set_task_factory(factory)
    try:
        yield hits
    finally:
        loop.set_task_factory(old)


def runs_phase(label: str) -> Callable[[Any], bool]:
    """Matches the task of the phase call whose function is called ``label``."""

    def match(coro: Any) -> bool:
        frame = getattr(coro, "cr_frame", None)
        if frame is None:
            return False
        for value in frame.f_locals.values():
            function = getattr(value, "function", value)  # a CallSpec, or the function
            if getattr(function, "__qualname__", None) == label:
                return True
        return False

    return match


def drives(body: str, phase: int | None = None) -> Callable[[Any], bool]:
    """Matches a run's driver task, whose body is ``Run.<body>`` (of ``phase``)."""

    def match(coro: Any) -> bool:
        frame = getattr(coro, "cr_frame", None)
        if frame is None or coro.__qualname__ not in ("_driver", "_restarted"):
            return False
        inner = frame.f_locals.get("body")
        if inner is None or inner.cr_code.co_name != body:
            return False
        return phase is None or inner.cr_frame.f_locals.get("phase") == phase

    return match


# -- L1: the driver ---------------------------------------------------------------------------
@pytest.mark.parametrize("times", [1, 2])
async def test_post_step_driver_cancelled_before_first_step_still_runs_every_post(
    times: int,
) -> None:
    # times=2: the driver started again is cancelled before its first step as well.
    log: list[str] = []
    async with two_tasks(log).open(None) as runner:
        assert await runner.run_next()  # pre
        assert await runner.run_next()  # execute
        with cancel_at_creation(drives("run_phase", 2), times=times) as hits:
            assert not await runner.run_next()  # post: no CancelledError for this caller
        me = asyncio.current_task()
        assert me is not None
        assert me.cancelling() == 0
    assert hits == ["_driver", "_restarted"][:times]
    assert sorted(e for e in log if e.endswith(".post")) == ["A.post", "B.post"]
    assert runner.next_phase_id() is None
    assert runner.report.tasks["A"].phases[Phase.POST_EXECUTE].state is TaskState.SUCCEEDED


async def test_execute_step_driver_cancelled_before_first_step_cancels_the_run() -> None:
    # As a cancel of the running driver: execute is skipped, cleanup runs on exit.
    log: list[str] = []
    async with two_tasks(log).open(None) as runner:
        assert await runner.run_next()  # pre
        with cancel_at_creation(drives("run_phase", 1)) as hits:
            assert await runner.run_next()
        assert runner.next_phase_id() is Phase.POST_EXECUTE
    assert hits == ["_driver"]
    assert not any(e.endswith(".exe") for e in log)
    assert sorted(e for e in log if e.endswith(".post")) == ["A.post", "B.post"]


async def test_process_tasks_driver_cancelled_before_first_step_cancels_the_run() -> None:
    log: list[str] = []
    processor = two_tasks(log)
    with cancel_at_creation(drives("run_all")) as hits, pytest.raises(asyncio.CancelledError):
        await processor.process_tasks(None)
    me = asyncio.current_task()
    assert me is not None
    assert me.cancelling() == 0
    assert hits == ["_driver"]
    assert log == []  # nothing was entered, so no post is due
    assert processor.snapshot().running == 0


# -- L2: a post task --------------------------------------------------------------------------
WRAPS: dict[str, Callable[[Fn], Any]] = {
    "plain": lambda fn: fn,
    "timed": lambda fn: TaskFunction(fn, timeout=5),  # the task is its call's scope
    "retried": lambda fn: TaskFunction(fn, retries=1),  # the task runs Run._call
}


@pytest.mark.parametrize("kind", list(WRAPS))
async def test_post_task_cancelled_before_first_step_runs_again(kind: str) -> None:
    log: list[str] = []
    seen: list[TaskFailure[str]] = []
    processor = two_tasks(log, WRAPS[kind], on_cleanup_error=seen.append)
    with VirtualClock(), cancel_at_creation(runs_phase("A.post")) as hits:
        async with processor.open(None) as runner:
            while await runner.run_next():
                pass
    assert len(hits) == 1
    assert sorted(e for e in log if e.endswith(".post")) == ["A.post", "B.post"]
    assert log.count("A.post") == 1
    assert seen == []
    assert runner.report.tasks["A"].phases[Phase.POST_EXECUTE].state is TaskState.SUCCEEDED


async def test_post_task_cancelled_before_first_step_cancels_process_tasks_after_cleanup() -> None:
    log: list[str] = []
    with cancel_at_creation(runs_phase("A.post")), pytest.raises(asyncio.CancelledError):
        await two_tasks(log).process_tasks(None)
    assert sorted(e for e in log if e.endswith(".post")) == ["A.post", "B.post"]


@pytest.mark.parametrize("kind", list(WRAPS))
async def test_post_task_cancelled_before_first_step_twice_is_a_cleanup_failure(
    kind: str,
) -> None:
    log: list[str] = []
    seen: list[TaskFailure[str]] = []
    processor = two_tasks(log, WRAPS[kind], on_cleanup_error=seen.append)
    with (
        VirtualClock(),
        cancel_at_creation(runs_phase("A.post"), times=2) as hits,
        pytest.raises(ProcessorError) as info,
    ):
        await processor.process_tasks(None)
    assert len(hits) == 2
    assert "A.post" not in log
    assert "B.post" in log
    ((task, phase),) = [(f.task, f.phase) for f in info.value.failures]
    assert (task, phase) == ("A", Phase.POST_EXECUTE)
    (error,) = info.value.exceptions
    assert isinstance(error, HeadraceError)
    assert "cancelled before it started" in str(error)
    assert [(f.task, f.phase) for f in seen] == [("A", Phase.POST_EXECUTE)]
    report = info.value.report
    assert report.tasks["A"].phases[Phase.POST_EXECUTE].state is TaskState.FAILED


# -- L3: a pre task ---------------------------------------------------------------------------
async def test_pre_task_cancelled_before_first_step_does_not_enter_its_task() -> None:
    log: list[str] = []
    with cancel_at_creation(runs_phase("A.pre")) as hits:
        async with two_tasks(log).open(None) as runner:
            while await runner.run_next():
                pass
    assert hits == ["Run._plain"]
    assert "A.pre" not in log
    assert "A.post" not in log  # A was never entered
    assert log == ["B.pre", "B.post"]
    a = runner.report.tasks["A"]
    assert not a.entered
    assert a.phases[Phase.PRE_EXECUTE].state is TaskState.CANCELLED
    assert runner.report.tasks["B"].entered


async def test_pre_task_cancelled_before_first_step_cancels_process_tasks() -> None:
    log: list[str] = []
    with cancel_at_creation(runs_phase("A.pre")), pytest.raises(asyncio.CancelledError):
        await two_tasks(log).process_tasks(None)
    assert log == ["B.pre", "B.post"]


async def test_execute_task_cancelled_before_first_step_cancels_the_run() -> None:
    log: list[str] = []
    with cancel_at_creation(runs_phase("A.exe")), pytest.raises(asyncio.CancelledError):
        await two_tasks(log).process_tasks(None)
    assert "A.exe" not in log
    assert sorted(e for e in log if e.endswith(".post")) == ["A.post", "B.post"]


# -- a phase task cancelled by someone else while it runs -------------------------------------
async def test_running_post_cancelled_from_outside_cancels_the_run_after_cleanup() -> None:
    # The post started: it is interrupted (reported cancelled), the other posts run, and
    # the run ends cancelled, as when a running pre or execute is cancelled.
    log: list[str] = []

    async def slow_close(ctx: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)  # someone else, while it runs
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append("A.post cancelled")
            raise

    processor = (
        Processor.builder()
        .add_task(Task("A", step(log, "A.pre"), None, slow_close), level=1)
        .add_task(Task("B", step(log, "B.pre"), None, step(log, "B.post")), level=1)
        .build()
    )
    with VirtualClock():
        async with processor.open(None) as runner:
            while await runner.run_next():
                pass
        with pytest.raises(asyncio.CancelledError):
            await processor.process_tasks(None)
    assert log.count("A.post cancelled") == 2
    assert log.count("B.post") == 2
    assert runner.report.tasks["A"].phases[Phase.POST_EXECUTE].state is TaskState.CANCELLED
