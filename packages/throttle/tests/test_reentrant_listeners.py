"""A ``resumed`` listener that calls back into its throttle (close, a new limit, a pause).

The listener runs when a pause ends, before the waiter at the head is admitted; whatever
it changes, admission looks again at the state it left: no slot is counted twice, no
waiter is lost, and nothing escapes into the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import Slot, Throttle, ThrottleClosed, ThrottleEvent


async def _quick(slot: Slot) -> str:
    return "q"


async def _paused_run(
    throttle: Throttle, on_resumed: Callable[[Throttle], None], calls: int = 3
) -> tuple[list[Any], list[str]]:
    loop_errors: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: loop_errors.append(str(context)))

    def listener(event: ThrottleEvent) -> None:
        if event.kind == "resumed":
            on_resumed(throttle)

    throttle.add_listener(listener)
    throttle.hold(0.01)  # every new call queues behind the pause
    tasks = [asyncio.create_task(throttle.execute(_quick)) for _ in range(calls)]
    await asyncio.sleep(0.05)  # the pause ends: the timer's dispatch fires `resumed`
    for _ in range(20):
        await asyncio.sleep(0)
    done = [task.done() for task in tasks]
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    loop.set_exception_handler(None)
    assert done == [True] * calls  # nobody was left waiting
    return outcomes, loop_errors


async def test_a_resumed_listener_that_closes_the_throttle_refuses_the_queue() -> None:
    with VirtualClock():
        throttle = Throttle(2, min_concurrency=1)
        outcomes, loop_errors = await _paused_run(throttle, lambda t: t.close())
        assert all(isinstance(o, ThrottleClosed) for o in outcomes)
        assert loop_errors == []
        snapshot = throttle.snapshot()
        assert (snapshot.in_flight, snapshot.waiting) == (0, 0)
        await asyncio.wait_for(throttle.drain(), 1.0)


async def test_a_resumed_listener_that_raises_the_limit_counts_each_call_once() -> None:
    with VirtualClock():
        throttle = Throttle(3, initial_concurrency=1, min_concurrency=1)
        outcomes, loop_errors = await _paused_run(throttle, lambda t: t.set_concurrency(3))
        assert outcomes == ["q", "q", "q"]
        assert loop_errors == []
        snapshot = throttle.snapshot()
        assert (snapshot.in_flight, snapshot.waiting, snapshot.completed) == (0, 0, 3)
        throttle.close()
        await asyncio.wait_for(throttle.drain(), 1.0)


async def test_the_held_head_starts_when_the_new_pause_ends() -> None:
    with VirtualClock():
        throttle = Throttle(2, min_concurrency=1)
        held: list[bool] = []
        started: list[float] = []

        def listener(event: ThrottleEvent) -> None:
            if event.kind == "resumed" and not held:
                held.append(True)
                throttle.hold(1.0)

        async def stamp(slot: Slot) -> None:
            started.append(asyncio.get_running_loop().time())

        throttle.add_listener(listener)
        start = asyncio.get_running_loop().time()
        throttle.hold(0.01)
        await throttle.execute(stamp)
        assert started[0] - start == pytest.approx(1.01)  # the listener's pause was kept
