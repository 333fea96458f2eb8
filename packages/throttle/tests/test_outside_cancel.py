"""A store call a throttle sends in a task of its own, cancelled by someone else.

A shutdown sweep (``for t in asyncio.all_tasks(): t.cancel()``) may cancel the task that
gives a shared lease back, or gives a shared budget's charge back, before its first step:
its coroutine then never runs a line. The call is sent all the same (bounded).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import Slot, Throttle, TokenBudget
from shared.throttle_store import MemoryThrottleStore

_TURNS = 50


class BudgetStore:
    """A shared budget store in memory: the charges of the entries it granted."""

    def __init__(self) -> None:
        self.entries: dict[str, float] = {}
        self.ids = itertools.count()

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        entry = str(next(self.ids))
        self.entries[entry] = amount
        return True, None, entry

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        self.entries[entry] = amount


async def settled() -> None:
    me = asyncio.current_task()
    for _ in range(_TURNS):
        if all(t is me or t.done() for t in asyncio.all_tasks()):
            return
        await asyncio.sleep(0)


async def test_a_shared_lease_given_back_by_a_task_cancelled_before_its_first_step() -> None:
    store = MemoryThrottleStore()
    with VirtualClock():
        throttle = Throttle(name="api", store=store, max_concurrency=1)
        shared = throttle._shared_limit
        assert shared is not None
        assert await throttle.execute(lambda slot: asyncio.sleep(0, "first")) == "first"
        assert shared._tasks  # the lease goes back in a task not started yet
        for task in shared._tasks:
            task.cancel()  # a shutdown sweep, before the task's first step
        await settled()
        assert store.leases["api"] == set()  # given back, not held until its TTL
        async with asyncio.timeout(1):
            assert await throttle.execute(lambda slot: asyncio.sleep(0, "next")) == "next"
        await throttle.aclose()
        assert store.leases["api"] == set()


async def test_a_shared_lease_given_back_by_a_task_cancelled_while_it_runs_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryThrottleStore()
    with VirtualClock():
        throttle = Throttle(name="api", store=store, max_concurrency=1)
        shared = throttle._shared_limit
        assert shared is not None
        await throttle.execute(lambda slot: asyncio.sleep(0))
        (task,) = shared._tasks
        await asyncio.sleep(0)  # inside the store's throttle_done
        with caplog.at_level(logging.WARNING, logger="headrace.throttle"):
            task.cancel()
            await settled()
        assert task.cancelled()
        assert "cancelled while it ran" in caplog.text
        await throttle.aclose()


async def test_a_budget_refund_cancelled_before_its_first_step_still_reaches_the_store() -> None:
    store = BudgetStore()
    with VirtualClock():
        tpm = TokenBudget(1000, 60.0, name="tpm", store=store)
        throttle = Throttle(1, budgets=[tpm])
        shared = throttle._shared
        assert shared is not None
        gate = asyncio.Event()

        async def hold(slot: Slot) -> None:
            await gate.wait()

        running = asyncio.create_task(throttle.execute(hold, tokens=10))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(throttle.execute(lambda s: asyncio.sleep(0), tokens=300))
        for _ in range(5):
            await asyncio.sleep(0)  # granted, it queues for the local slot
        assert sorted(store.entries.values()) == [10, 300]
        # the sweep: the waiter, then the refund task its cancellation sent
        targets: set[asyncio.Task[object]] = {waiter}
        for _ in range(5):
            targets.update(shared._tasks)
            for task in targets:
                if not task.done():
                    task.cancel()
            await asyncio.sleep(0)
        assert waiter.cancelled()
        await settled()
        assert sorted(store.entries.values()) == [0, 10]  # given back: nothing leaks
        gate.set()
        await running
        await throttle.aclose()
