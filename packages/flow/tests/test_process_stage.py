"""Process and thread stages: work off the loop, with flow's guarantees kept."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from headrace_flow import (
    ErrorEvent,
    ProcessStageError,
    StageTimeout,
    TransformerError,
    flow,
    process_stage,
    thread_stage,
)
from shared import flow_workers


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    assert multiprocessing.active_children() == []  # every worker process was shut down


def _collect() -> tuple[list[Any], Any]:
    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    return out, sink


def _errors() -> tuple[list[TransformerError], Any]:
    seen: list[TransformerError] = []

    async def handler(event: ErrorEvent) -> None:
        assert isinstance(event, TransformerError)
        seen.append(event)

    return seen, handler


async def test_items_run_in_worker_processes() -> None:
    out, sink = _collect()
    stats = await flow(process_stage(flow_workers.pid_of, workers=2), sink).run(range(20))
    assert stats.completed == 20
    assert sorted(x for x, _ in out) == list(range(20))
    pids = {pid for _, pid in out}
    assert 1 <= len(pids) <= 2
    assert multiprocessing.current_process().pid not in pids


async def test_the_items_own_error_reaches_the_policy_with_the_item() -> None:
    seen, handler = _errors()
    out, sink = _collect()
    stage = process_stage(flow_workers.fail_on_three, workers=2, name="check")
    stats = await flow(stage, sink, on_error=handler).run(range(6))
    assert sorted(out) == [0, 1, 2, 4, 5]
    assert stats.failed == 1
    (event,) = seen
    assert (event.item, event.stage) == (3, "check")
    assert isinstance(event.exception, ValueError)


async def test_a_dead_process_fails_its_item_and_is_replaced() -> None:
    seen, handler = _errors()
    out, sink = _collect()
    stage = process_stage(flow_workers.die_on_three, workers=1, name="fragile")
    stats = await flow(stage, sink, on_error=handler).run(range(6))
    assert sorted(out) == [0, 1, 2, 4, 5]  # the next items ran in a new process
    assert stats.completed + stats.failed == stats.accepted == 6
    (event,) = seen
    assert event.item == 3
    assert isinstance(event.exception, ProcessStageError)
    assert "exit code 7" in str(event.exception)
    assert event.exception.stage == "fragile"


async def test_without_a_handler_the_first_failure_fails_the_run() -> None:
    with pytest.raises(ValueError, match="three"):
        await flow(process_stage(flow_workers.fail_on_three, workers=2)).run(range(6))


async def test_a_timed_out_item_kills_its_process_and_the_next_runs() -> None:
    # A real process on the real clock: the first call would block for an hour.
    seen, handler = _errors()
    out, sink = _collect()
    stage = process_stage(flow_workers.sleepy, workers=1, timeout=0.5, name="slow")
    stats = await flow(stage, sink, on_error=handler).run([3600.0, 0.0])
    assert out == [0.0]  # the second item got a fresh process at once
    assert stats.failed == 1
    assert isinstance(seen[0].exception, StageTimeout)


async def test_stop_ends_a_long_item_promptly() -> None:
    pipeline = flow(process_stage(flow_workers.sleepy, workers=2))
    run = asyncio.create_task(pipeline.run([3600.0, 3600.0, 3600.0]))
    while pipeline.stats().accepted < 2:
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pipeline.stop()
    stats = await run
    assert loop.time() - started < 5.0  # not the hour the calls would take
    assert stats.completed == 0
    assert stats.discarded + stats.failed == stats.accepted


def test_a_function_that_cannot_be_pickled_is_refused_at_build_time() -> None:
    with pytest.raises(TypeError, match=r"'inline'.*cannot be pickled"):
        process_stage(lambda x: x, name="inline")


@pytest.mark.parametrize("fn", [asyncio.sleep, 3], ids=["coroutine function", "not callable"])
def test_only_sync_functions_make_a_process_or_thread_stage(fn: Any) -> None:
    with pytest.raises(TypeError):
        process_stage(fn)
    with pytest.raises(TypeError):
        thread_stage(fn)


async def test_an_item_or_result_that_cannot_be_sent_is_a_clear_error() -> None:
    seen, handler = _errors()
    item = threading.Lock()  # cannot be pickled
    await flow(process_stage(flow_workers.double, name="send"), on_error=handler).run([item])
    await flow(process_stage(flow_workers.unpicklable_result, name="back"), on_error=handler).run(
        [1]
    )
    assert [type(e.exception) for e in seen] == [ProcessStageError, ProcessStageError]
    assert "'send': the item cannot be sent" in str(seen[0].exception)
    assert "'back': the result cannot be sent back" in str(seen[1].exception)


async def test_thread_stage_runs_at_most_workers_calls_at_once() -> None:
    lock = threading.Lock()
    running = peak = 0
    release = threading.Event()

    def blocking(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return x * 10

    out, sink = _collect()
    run = asyncio.create_task(flow(thread_stage(blocking, workers=3), sink).run(range(9)))
    while peak < 3:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)
    assert peak == 3
    release.set()
    stats = await run
    assert stats.completed == 9
    assert sorted(out) == [x * 10 for x in range(9)]


async def test_stop_does_not_wait_for_a_blocked_thread() -> None:
    release = threading.Event()

    def blocked(x: int) -> int:
        release.wait(10)
        return x

    pipeline = flow(thread_stage(blocked, workers=1))
    run = asyncio.create_task(pipeline.run([1, 2]))
    while pipeline.stats().accepted < 1:
        await asyncio.sleep(0.005)
    await pipeline.stop()
    stats = await run
    assert stats.completed == 0
    release.set()  # the abandoned call ends on its own
