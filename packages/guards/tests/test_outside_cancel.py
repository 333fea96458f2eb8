"""A store call a guard sends in a task of its own, cancelled by someone else.

A shutdown sweep (``for t in asyncio.all_tasks(): t.cancel()``) may cancel the task that
releases a bulkhead's lease or refunds a limiter's reservation before its first step (its
coroutine then never runs a line) or while it runs. The call is still sent (within its
bound) when nothing was sent yet, a caller that is not cancelled gets its own outcome,
and an interrupted call is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence

import pytest

from headrace_core.testing import VirtualClock
from headrace_guards import Bulkhead, RateLimiter

# Loop turns a test lets pass; far more than any scenario needs, so a regression fails.
_TURNS = 50


class LeaseStore:
    """A plain bulkhead store in memory (no ``release=`` on acquire)."""

    def __init__(self) -> None:
        self.leases: set[str] = set()
        self.release_turns = 0  # loop turns a release takes

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        if lease_id in self.leases or len(self.leases) < limit:
            self.leases.add(lease_id)
            return True
        return False

    async def release(self, name: str, lease_id: str) -> None:
        for _ in range(self.release_turns):
            await asyncio.sleep(0)
        self.leases.discard(lease_id)

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        return lease_id in self.leases

    async def in_flight(self, name: str) -> int:
        return len(self.leases)


class CarryingLeaseStore(LeaseStore):
    """A bulkhead store whose acquire gives back the leases of ``release=`` first."""

    async def acquire(
        self, name: str, limit: int, lease_id: str, ttl: float, *, release: Sequence[str] = ()
    ) -> bool:
        self.leases.difference_update(release)
        return await super().acquire(name, limit, lease_id, ttl)


class ChargingRateStore:
    """A rate store that reserves every request with a wait of 5 s and counts charges."""

    def __init__(self) -> None:
        self.charged = 0

    async def reserve(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> tuple[bool, float]:
        self.charged += cost
        return True, 5.0

    async def refund(self, name: str, rate: float, per: float, cost: int) -> None:
        self.charged -= cost


async def sweep_until(
    done: asyncio.Future[object], targets: Collection[asyncio.Task[object]], after: int = 5
) -> None:
    """Every loop turn, cancel each task of ``targets`` (read again each turn) until
    ``after`` turns past ``done``."""
    for _ in range(_TURNS):
        if done.done():
            after -= 1
            if after < 0:
                return
        for task in tuple(targets):
            if not task.done():
                task.cancel()
        await asyncio.sleep(0)
    pytest.fail("the call never ended")


async def settled() -> None:
    me = asyncio.current_task()
    for _ in range(_TURNS):
        if all(t is me or t.done() for t in asyncio.all_tasks()):
            return
        await asyncio.sleep(0)


@pytest.mark.parametrize("store_type", [LeaseStore, CarryingLeaseStore])
@pytest.mark.parametrize("outcome", ["result", "error"])
async def test_a_release_cancelled_before_its_first_step_still_frees_the_lease(
    store_type: type[LeaseStore], outcome: str
) -> None:
    store = store_type()
    with VirtualClock():
        bulkhead = Bulkhead(1, name="db", store=store, max_wait=0)

        async def fn() -> str:
            if outcome == "error":
                raise ValueError("fn failed")
            return "result"

        caller = asyncio.ensure_future(bulkhead.call(fn))
        await sweep_until(caller, bulkhead._background.tasks)  # type: ignore[arg-type]
        assert not caller.cancelled(), "the caller got the release task's cancellation"
        if outcome == "error":
            with pytest.raises(ValueError, match="fn failed"):
                caller.result()
        else:
            assert caller.result() == "result"
        await settled()
        assert store.leases == set()  # released, not held until the lease's TTL
        async with asyncio.timeout(1):
            assert await bulkhead.call(asyncio.sleep, 0, "next") == "next"
        await bulkhead.aclose()
        assert store.leases == set()


async def test_a_release_cancelled_while_it_runs_is_logged_and_the_caller_gets_its_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LeaseStore()
    store.release_turns = 3
    with VirtualClock():
        bulkhead = Bulkhead(1, name="db", store=store, max_wait=0)
        caller = asyncio.ensure_future(bulkhead.call(asyncio.sleep, 0, "result"))
        for _ in range(_TURNS):
            await asyncio.sleep(0)
            if bulkhead._background.tasks:
                break
        await asyncio.sleep(0)  # the release task is inside the store's release
        (release,) = bulkhead._background.tasks
        with caplog.at_level(logging.WARNING, logger="headrace.guards"):
            release.cancel()
            async with asyncio.timeout(1):
                assert await caller == "result"
        assert release.cancelled()
        assert "releasing a lease was cancelled while it ran" in caplog.text
        await bulkhead.aclose()


async def test_a_refund_cancelled_with_its_caller_by_a_sweep_still_reaches_the_store() -> None:
    store = ChargingRateStore()
    with VirtualClock():
        limiter = RateLimiter(1, name="api", store=store)
        caller = asyncio.ensure_future(limiter.call(asyncio.sleep, 0, "x"))
        for _ in range(5):
            await asyncio.sleep(0)  # reserved: it waits its 5 s
        assert store.charged == 1
        # the sweep: the caller, then the refund task its cancellation sent
        targets: set[asyncio.Task[object]] = {caller}
        for _ in range(5):
            targets.update(limiter._background.tasks)
            for task in targets:
                if not task.done():
                    task.cancel()
            await asyncio.sleep(0)
        assert caller.cancelled()
        await settled()
        assert store.charged == 0  # refunded: no budget leaks
        assert limiter.snapshot().acquired == 0  # the refunded wait was never granted
        assert not limiter._background.tasks
        await limiter.aclose()
