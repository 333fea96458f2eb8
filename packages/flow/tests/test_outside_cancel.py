"""A task of a run cancelled by someone else (a shutdown sweep over ``asyncio.all_tasks()``,
a test harness): no caller hangs, no item is lost silently, the flow runs again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from headrace_core import HeadraceError
from headrace_core.testing import VirtualClock
from headrace_flow import Flow, SourceError, TransformerError, flow, router, stage

STEPS = 200  # loop steps a test waits at most for something that takes a few


def invariant(stats: Any) -> None:
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded, (
        stats
    )


def named(base: set[asyncio.Task[Any]], qualname: str) -> list[asyncio.Task[Any]]:
    """The tasks started since ``base`` whose coroutine is ``qualname``."""
    return [
        t
        for t in asyncio.all_tasks() - base
        if getattr(t.get_coro(), "__qualname__", None) == qualname and not t.done()
    ]


async def steps_until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds, a bounded number of steps."""
    for _ in range(STEPS):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition(), "the condition did not hold in time"


async def finished(task: asyncio.Task[Any]) -> None:
    """Wait a bounded number of loop steps for ``task`` to end (a hang fails, never blocks)."""
    await steps_until(task.done)


def sweep_after_first_step(base: set[asyncio.Task[Any]], qualname: str) -> asyncio.Task[None]:
    """A task that cancels the run's tasks named ``qualname`` in the loop step in which
    the task created just before it takes its first step: before their own first step."""

    async def sweep() -> None:
        for task in named(base, qualname):
            task.cancel()

    return asyncio.create_task(sweep())


async def check_runs_again(pipeline: Flow[Any, Any]) -> None:
    async with asyncio.timeout(60):
        stats = await pipeline.run([10, 11])
    assert stats.accepted == 2, stats
    assert stats.completed == 2, stats
    assert not pipeline.running


# -- Flow.start(): its background task ----------------------------------------------------
async def test_start_task_cancelled_before_its_first_step_ends_the_run() -> None:
    done: list[int] = []

    async def work(x: int) -> None:
        done.append(x)

    pipeline = flow(work)
    pipeline.set_producer([1, 2, 3])
    base = asyncio.all_tasks()
    caller = asyncio.create_task(pipeline.start())
    sweep_after_first_step(base, "Flow._background")
    with VirtualClock():
        async with asyncio.timeout(60):
            await caller
            with pytest.raises(asyncio.CancelledError):
                await pipeline.wait()
            assert not pipeline.running
            assert (await pipeline.drain()).running is False
            await check_runs_again(pipeline)
            await pipeline.aclose()
    assert done == [10, 11]


async def test_aclose_after_a_start_task_cancelled_before_its_first_step() -> None:
    async def work(x: int) -> None:
        pass

    pipeline = flow(work)
    pipeline.set_producer([1, 2, 3])
    base = asyncio.all_tasks()
    caller = asyncio.create_task(pipeline.start())
    sweep_after_first_step(base, "Flow._background")
    await caller
    closer = asyncio.create_task(pipeline.aclose())
    try:
        await finished(closer)
    finally:
        closer.cancel()
    assert pipeline.closed
    assert not pipeline.running
    with pytest.raises(asyncio.CancelledError):
        await pipeline.wait()


# -- a worker --------------------------------------------------------------------------------
#: The tasks that entered ``slow`` (the stage's call), in order.
BUSY: list[asyncio.Task[Any]] = []


async def slow(x: int) -> int:
    task = asyncio.current_task()
    assert task is not None
    BUSY.append(task)
    for _ in range(5):
        await asyncio.sleep(0)  # a few loop steps of work
    return x


async def slow_fan_out(x: int) -> AsyncIterator[int]:
    yield await slow(x)


async def classify(x: int) -> str:
    await slow(x)
    return "a"


async def ident(x: int) -> int:
    return x


@contextlib.asynccontextmanager
async def per_worker() -> AsyncIterator[Callable[[int], Any]]:
    yield slow


STAGES: dict[str, Callable[[], Any]] = {
    "map": lambda: stage(slow, name="s"),
    "fan-out": lambda: stage(slow_fan_out, name="s"),
    "router": lambda: router(classify, name="s", a=ident),
    "context manager": lambda: stage(per_worker, name="s"),
    "ordered": lambda: stage(slow, name="s", workers=2, ordered=True),
}


async def cancel_a_busy_worker() -> None:
    """Cancel the first worker that entered ``slow``, while it is in there."""
    BUSY.clear()
    await steps_until(lambda: bool(BUSY))
    BUSY[0].cancel()


@pytest.mark.parametrize("kind", list(STAGES))
async def test_a_worker_cancelled_from_outside_in_the_stage_call_fails_its_item(
    kind: str,
) -> None:
    events: list[Any] = []

    async def sink(x: int) -> None:
        pass

    pipeline = flow(STAGES[kind](), sink)
    pipeline.add_listener(events.append)
    run = asyncio.create_task(pipeline.run([1, 2, 3]))
    await cancel_a_busy_worker()
    try:
        await finished(run)
    finally:
        run.cancel()
    error = run.exception()
    assert isinstance(error, HeadraceError), error
    assert "a worker of flow stage 's' was cancelled from outside the run" in str(error)
    assert isinstance(error.__cause__, asyncio.CancelledError)
    stats = pipeline.stats()
    assert stats.failed == 1, stats
    assert stats.stages["s"].errors == 1, stats
    invariant(stats)
    failures = [e for e in events if isinstance(e, TransformerError)]
    assert len(failures) == 1
    assert failures[0].stage == "s"
    assert failures[0].exception is error
    assert failures[0].item == 1
    with VirtualClock():
        await check_runs_again(pipeline)


async def test_the_handler_is_not_asked_and_the_run_ends() -> None:
    handled: list[Any] = []

    async def handler(event: Any) -> None:
        handled.append(event)

    pipeline = flow(slow, on_error=handler)
    run = asyncio.create_task(pipeline.run([1, 2, 3]))
    await cancel_a_busy_worker()
    try:
        await finished(run)
    finally:
        run.cancel()
    assert isinstance(run.exception(), HeadraceError)
    assert "while it processed item 1" in str(run.exception())
    assert handled == []
    assert pipeline.stats().failed == 1


async def test_a_worker_cancelled_from_outside_while_it_waits_ends_the_run() -> None:
    gate = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        await gate.wait()
        yield 1

    pipeline = flow(slow)
    base = asyncio.all_tasks()
    run = asyncio.create_task(pipeline.run(source))
    await steps_until(lambda: bool(named(base, "Worker.run")))
    await asyncio.sleep(0)
    named(base, "Worker.run")[0].cancel()  # idle: waiting for its first item
    try:
        await finished(run)
    finally:
        run.cancel()
    error = run.exception()
    assert isinstance(error, HeadraceError), error
    assert str(error) == "a worker of flow stage 'slow' was cancelled from outside the run"
    stats = pipeline.stats()
    assert stats.failed == 0
    assert stats.accepted == 0
    with VirtualClock():
        await check_runs_again(pipeline)


async def test_a_worker_cancelled_from_outside_before_its_first_step_ends_the_run() -> None:
    pipeline = flow(slow)
    base = asyncio.all_tasks()
    run = asyncio.create_task(pipeline.run([1, 2, 3]))
    sweep_after_first_step(base, "Worker.run")
    try:
        await finished(run)
    finally:
        run.cancel()
    error = run.exception()
    assert isinstance(error, HeadraceError), error
    assert "cancelled from outside the run" in str(error)
    invariant(pipeline.stats())
    with VirtualClock():
        await check_runs_again(pipeline)


# -- the source task ----------------------------------------------------------------------
async def test_the_source_cancelled_before_its_first_step_ends_the_run() -> None:
    pulled: list[int] = []
    events: list[Any] = []

    async def source() -> AsyncIterator[int]:
        for i in range(1, 6):
            pulled.append(i)
            yield i

    pipeline = flow(slow)
    pipeline.add_listener(events.append)
    base = asyncio.all_tasks()
    run = asyncio.create_task(pipeline.run(source))
    sweep_after_first_step(base, "Source._run")
    try:
        await finished(run)
    finally:
        run.cancel()
    error = run.exception()
    assert isinstance(error, HeadraceError), error
    assert str(error) == "the flow run's source task was cancelled from outside the run"
    assert isinstance(error.__cause__, asyncio.CancelledError)
    assert pulled == []
    stats = pipeline.stats()
    assert stats.source_errors == 1
    assert stats.accepted == 0
    assert [type(e) for e in events] == [SourceError]
    assert events[0].exception is error
    with VirtualClock():
        await check_runs_again(pipeline)


async def test_the_source_cancelled_from_outside_at_its_put_reports_the_item() -> None:
    pulled: list[int] = []
    release = asyncio.Event()

    async def work(x: int) -> None:
        await release.wait()

    async def source() -> AsyncIterator[int]:
        for i in range(1, 6):
            pulled.append(i)
            yield i

    pipeline = flow(stage(work, workers=1))
    pipeline.configure_default(queue_size=1)
    base = asyncio.all_tasks()
    run = asyncio.create_task(pipeline.run(source))
    # one item in the worker, one in the queue, the third in the source's hands
    await steps_until(lambda: len(pulled) >= 3)
    for _ in range(5):
        await asyncio.sleep(0)
    assert pulled == [1, 2, 3]
    named(base, "Source._run")[0].cancel()
    release.set()
    try:
        await finished(run)
    finally:
        run.cancel()
    error = run.exception()
    assert isinstance(error, HeadraceError), error
    assert "while it held item 3, which is discarded" in str(error)
    stats = pipeline.stats()
    assert stats.accepted == 3
    assert stats.source_errors == 1
    assert stats.discarded >= 1
    invariant(stats)
    with VirtualClock():
        await check_runs_again(pipeline)


async def test_the_source_cancelled_from_outside_while_it_pulls_ends_the_run() -> None:
    gate = asyncio.Event()
    closed: list[bool] = []

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await gate.wait()  # the source waits for its next item
            yield 2
        finally:
            closed.append(True)

    pipeline = flow(ident)
    base = asyncio.all_tasks()
    run = asyncio.create_task(pipeline.run(source))
    await steps_until(lambda: pipeline.stats().completed == 1)
    named(base, "Source._run")[0].cancel()
    try:
        await finished(run)
    finally:
        run.cancel()
    error = run.exception()
    assert isinstance(error, HeadraceError), error
    assert str(error) == "the flow run's source task was cancelled from outside the run"
    assert closed == [True]  # the source was closed
    invariant(pipeline.stats())


# -- the run's own cancellations stay its own ---------------------------------------------
async def test_a_sweep_of_every_task_cancels_the_caller_and_leaves_nothing() -> None:
    pipeline = flow(slow)
    base = asyncio.all_tasks()
    run = asyncio.create_task(pipeline.run(range(100)))
    await steps_until(lambda: pipeline.stats().completed >= 3)
    for task in asyncio.all_tasks() - base:
        task.cancel()
    try:
        await finished(run)
    finally:
        run.cancel()
    assert run.cancelled()  # the caller's own cancellation wins
    assert not pipeline.running
    invariant(pipeline.stats())
    with VirtualClock():
        await check_runs_again(pipeline)


async def test_drain_and_stop_are_not_outside_cancellations() -> None:
    gate = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        yield 1
        await gate.wait()
        yield 2

    pipeline = flow(slow)
    with VirtualClock():
        async with asyncio.timeout(60):
            run = asyncio.create_task(pipeline.run(source))
            await steps_until(lambda: pipeline.stats().completed == 1)
            await pipeline.drain()
            stats = await run
            assert stats.completed == 1
            assert stats.source_errors == 0
            run = asyncio.create_task(pipeline.run(range(100)))
            await steps_until(lambda: pipeline.stats().completed >= 1)
            await pipeline.stop()
            stats = await run
            assert stats.failed == 0
            assert stats.source_errors == 0
