"""One adaptive limit shared by several throttles (processes) through a ThrottleStore."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from headrace_core import ConfigurationError
from headrace_core.testing import VirtualClock
from headrace_throttle import (
    ServerBusy,
    SharedSnapshot,
    Slot,
    Throttle,
    ThrottleClosed,
    ThrottleEvent,
)
from shared.throttle_store import MemoryThrottleStore

pytestmark = pytest.mark.virtual_clock()


def pair(store: MemoryThrottleStore, **kw: Any) -> tuple[Throttle, Throttle]:
    """Two throttles of one name: two processes behind one API key."""
    return Throttle(name="api", store=store, **kw), Throttle(name="api", store=store, **kw)


async def test_the_ceiling_holds_across_throttles() -> None:
    store = MemoryThrottleStore()
    a, b = pair(store, max_concurrency=3)
    running = peak = 0

    async def work(slot: Slot) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1.0)
        running -= 1

    await asyncio.gather(*(t.execute(work) for t in (a, b) for _ in range(6)))
    assert peak == 3  # never more than the shared limit, though each could run 3
    assert store.leases["api"] == set()
    snap = a.snapshot().shared
    assert isinstance(snap, SharedSnapshot)
    assert snap.concurrency == 3
    await a.aclose()
    await b.aclose()


async def test_one_congestion_event_lowers_every_throttle_once() -> None:
    store = MemoryThrottleStore()
    heard: list[ThrottleEvent] = []
    a, b = pair(store, max_concurrency=8, failure_threshold=2)
    b.add_listener(heard.append)
    gate = asyncio.Event()

    async def fail(slot: Slot) -> None:
        await gate.wait()
        raise ConnectionError("overloaded")

    calls = [t.execute(fail) for t in (a, b, a, b)]
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0.1)
    gate.set()
    for task in tasks:
        with pytest.raises(ConnectionError):
            await task
    await asyncio.sleep(0.1)  # the outcomes reach the store
    assert store.state["api"]["limit"] == 4  # 8 halved once, not once per failure
    assert store.state["api"]["decreases"] == 1
    assert a.snapshot().concurrency == b.snapshot().concurrency == 4  # both follow
    assert [(e.kind, e.data["reason"]) for e in heard] == [("decreased", "shared")]
    await a.aclose()
    await b.aclose()


async def test_a_servers_hint_holds_every_throttle(virtual_clock: VirtualClock) -> None:
    store = MemoryThrottleStore()
    a, b = pair(store, max_concurrency=4)

    async def busy(slot: Slot) -> None:
        raise ServerBusy(retry_after=30.0)

    with pytest.raises(ServerBusy):
        await a.execute(busy)
    await asyncio.sleep(0)
    started = virtual_clock.now()
    assert await b.execute(lambda slot: asyncio.sleep(0, "ok")) == "ok"
    assert virtual_clock.now() - started == pytest.approx(30.0, abs=0.5)  # b waited too
    assert store.state["api"]["decreases"] == 1  # and the hint lowered the limit once
    await a.aclose()
    await b.aclose()


async def test_pacing_spaces_every_throttles_dispatches(virtual_clock: VirtualClock) -> None:
    store = MemoryThrottleStore()
    a, b = pair(store, max_concurrency=4, min_dispatch_interval=2.0)
    times: list[float] = []

    async def stamp(slot: Slot) -> None:
        times.append(virtual_clock.now())

    await asyncio.gather(*(t.execute(stamp) for t in (a, b, a, b)))
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 2.0 - 1e-6 for gap in gaps), gaps
    await a.aclose()
    await b.aclose()


async def test_one_round_trip_in_and_one_out() -> None:
    store = MemoryThrottleStore()
    t = Throttle(name="api", store=store)
    assert await t.execute(lambda slot: asyncio.sleep(0, "ok")) == "ok"
    await t.drain()
    assert store.calls == 2  # throttle_admit, then throttle_done (sent without waiting)


async def test_cancelled_and_refused_calls_give_their_lease_back() -> None:
    store = MemoryThrottleStore()
    t = Throttle(1, name="api", store=store)
    release = asyncio.Event()
    first = asyncio.ensure_future(t.execute(lambda slot: release.wait()))
    await asyncio.sleep(0.1)
    waiting = asyncio.ensure_future(t.execute(lambda slot: asyncio.sleep(0)))
    await asyncio.sleep(0.5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await first
    await t.drain()
    assert store.leases["api"] == set()


async def test_a_store_needs_a_name_and_a_store() -> None:
    with pytest.raises(ConfigurationError, match="store"):
        Throttle(store=MemoryThrottleStore())
    with pytest.raises(ConfigurationError, match="store"):
        Throttle(name="api", store=object())  # type: ignore[arg-type]
    assert Throttle().snapshot().shared is None


async def test_a_call_waiting_for_a_shared_lease_is_refused_at_close() -> None:
    store = MemoryThrottleStore()
    holder, waiter = pair(store, max_concurrency=1)
    release = asyncio.Event()
    held = asyncio.ensure_future(holder.execute(lambda slot: release.wait()))
    await asyncio.sleep(0.1)
    waiting = asyncio.ensure_future(waiter.execute(lambda slot: asyncio.sleep(0)))
    await asyncio.sleep(0.5)  # polling the store: the shared limit is full
    waiter.close()
    with pytest.raises(ThrottleClosed):
        await waiting  # refused at its next look, not left polling
    release.set()
    await held
    await holder.aclose()
    await waiter.aclose()
    assert store.leases["api"] == set()
