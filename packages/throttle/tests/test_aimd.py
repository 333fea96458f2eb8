"""AIMD: S1 (decrease enforced without cancelling), S2 (epoch rule), S3 (recovery)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import (
    AIMD,
    ConfigurationError,
    Slot,
    Throttle,
    ThrottleEvent,
    ThrottleState,
)


class Boom(Exception):
    pass


async def test_exact_trajectory_of_a_scripted_failure_pattern() -> None:
    """The service fails every call that ends by t=4, then recovers.

    16 calls start at t=0 and fail at t=1: one decrease (16 -> 8), although 16 failed.
    The 2 calls admitted at t=1 before that decrease belong to epoch 0; the 6 after it
    fail at t=2: one decrease (8 -> 4). At t=3 only one epoch-2 failure is seen, at t=4
    three more: 4 -> 2. Then pure success: +1 every cooling period (10 s) up to 16.
    """
    with VirtualClock(start=0.0) as clock:
        events: list[ThrottleEvent] = []
        t = Throttle(16, failure_threshold=3, cooling_period=10.0, on_event=events.append)
        starts: list[tuple[float, int]] = []

        async def call(slot: Slot) -> None:
            starts.append((clock.now(), t.snapshot().epoch))
            await asyncio.sleep(1)
            if clock.now() <= 4.0:
                raise Boom

        await asyncio.gather(*(t.execute(call) for _ in range(40)), return_exceptions=True)
        decreases = [(e.at, e.data["concurrency"]) for e in events if e.kind == "decreased"]
        assert decreases == [(1.0, (16, 8)), (2.0, (8, 4)), (4.0, (4, 2))]
        by_time = Counter(start for start, _ in starts)
        assert by_time[0.0] == 16
        assert by_time[1.0] == 8  # 2 admitted before the decrease, 6 after it
        while t.snapshot().concurrency < 16:
            await t.execute(call)
        increases = [(e.at, e.data["concurrency"]) for e in events if e.kind == "increased"]
        assert increases == [(14.0 + 10.0 * i, (n, n + 1)) for i, n in enumerate(range(2, 16))]
        snap = t.snapshot()
        assert snap.state is ThrottleState.RUNNING
        assert snap.epoch == 3
        assert snap.failed == 16 + 8 + 4 + 4  # every call that ended by t=4


async def test_one_burst_is_one_decrease_not_a_cascade() -> None:
    with VirtualClock(start=0.0):
        events: list[ThrottleEvent] = []
        t = Throttle(16, failure_threshold=1, on_event=events.append)

        async def fail(slot: object) -> None:
            await asyncio.sleep(1)
            raise Boom

        await asyncio.gather(*(t.execute(fail) for _ in range(16)), return_exceptions=True)
        assert [e.data["concurrency"] for e in events if e.kind == "decreased"] == [(16, 8)]
        assert t.snapshot().state is ThrottleState.COOLING


async def test_lowered_limit_is_enforced_without_cancelling_running_calls() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(16, failure_threshold=1)
        gate = asyncio.Event()
        finished: list[float] = []
        max_running = [0]
        running = [0]

        async def slow(slot: object) -> None:
            running[0] += 1
            max_running[0] = max(max_running[0], running[0])
            try:
                await gate.wait()
                await asyncio.sleep(1)
            finally:
                running[0] -= 1
                finished.append(clock.now())

        tasks = [asyncio.create_task(t.execute(slow)) for _ in range(16)]
        await asyncio.sleep(0)
        assert t.snapshot().in_flight == 16
        t.record_failure()  # the limit drops to 8 while 16 run
        assert t.snapshot().concurrency == 8
        late = [asyncio.create_task(t.execute(slow)) for _ in range(4)]
        await asyncio.sleep(0.5)
        assert t.snapshot().in_flight == 16  # nobody cancelled
        assert t.snapshot().waiting == 4
        gate.set()
        await asyncio.gather(*tasks)
        # after the 16 finish the 4 late calls run, and never more than 8 at a time
        await asyncio.gather(*late)
        assert len(finished) == 20
        assert t.snapshot().in_flight == 0


async def test_newcomers_wait_until_in_flight_is_below_the_new_limit() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4)
        starts: list[float] = []

        async def work(slot: object) -> None:
            starts.append(clock.now())
            await asyncio.sleep(10)

        first = [asyncio.create_task(t.execute(work)) for _ in range(4)]
        await asyncio.sleep(1)
        t.set_concurrency(2)
        more = [asyncio.create_task(t.execute(work)) for _ in range(2)]
        await asyncio.gather(*first, *more)
        # in_flight was 4; new calls start only once it fell below 2, i.e. at t=10
        assert starts[4:] == [10.0, 10.0]


async def test_failures_of_calls_admitted_before_a_decrease_do_not_count() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(8, failure_threshold=2)
        release = asyncio.Event()

        async def fail_later(slot: object) -> None:
            await release.wait()
            raise Boom

        old = [asyncio.create_task(t.execute(fail_later)) for _ in range(8)]
        await asyncio.sleep(0)
        t.record_failure()
        t.record_failure()  # epoch 1 now, limit 4
        assert t.snapshot().concurrency == 4
        release.set()
        await asyncio.gather(*old, return_exceptions=True)
        assert t.snapshot().concurrency == 4  # stale failures ignored
        assert t.snapshot().failed == 10


async def test_failure_window_forgets_old_failures() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(8, failure_threshold=3, failure_window=10.0)
        t.record_failure()
        t.record_failure()
        await asyncio.sleep(11)
        t.record_failure()
        assert t.snapshot().concurrency == 8
        t.record_failure()
        t.record_failure()
        assert t.snapshot().concurrency == 4


async def test_cancellation_is_never_a_failure() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(8, failure_threshold=1)

        async def forever(slot: object) -> None:
            await asyncio.sleep(3600)

        tasks = [asyncio.create_task(t.execute(forever)) for _ in range(8)]
        await asyncio.sleep(1)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        snap = t.snapshot()
        assert snap.concurrency == 8
        assert snap.failed == 0
        assert snap.in_flight == 0
        assert snap.state is ThrottleState.RUNNING


async def test_is_failure_filters_congestion() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(8, failure_threshold=1, is_failure=lambda e: not isinstance(e, KeyError))

        async def missing(slot: object) -> None:
            raise KeyError("x")

        with pytest.raises(KeyError):
            await t.execute(missing)
        assert t.snapshot().concurrency == 8
        assert t.snapshot().failed == 1


async def test_initial_concurrency_ramps_up() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(4, initial_concurrency=1, cooling_period=5.0)

        async def ok(slot: object) -> None:
            await asyncio.sleep(1)

        seen = []
        for _ in range(30):
            await t.execute(ok)
            seen.append(t.snapshot().concurrency)
        assert seen[0] == 1
        assert seen[-1] == 4
        assert sorted(seen) == seen


async def test_min_concurrency_is_a_floor_and_interval_recovers_at_the_ceiling() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(
            2,
            min_concurrency=1,
            failure_threshold=1,
            min_dispatch_interval=0.1,
            cooling_period=1.0,
        )
        for _ in range(4):
            t.record_failure()
        snap = t.snapshot()
        assert snap.concurrency == 1
        assert snap.dispatch_interval == pytest.approx(1.6)
        assert snap.epoch == 4

        async def ok(slot: object) -> None:
            await asyncio.sleep(1)

        for _ in range(20):
            await t.execute(ok)
        snap = t.snapshot()
        assert snap.concurrency == 2
        assert snap.dispatch_interval == pytest.approx(0.1)


async def test_set_concurrency_validates_and_grows_wakes_waiters() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4, initial_concurrency=1)
        with pytest.raises(ConfigurationError, match="n"):
            t.set_concurrency(5)
        with pytest.raises(ConfigurationError, match="n"):
            t.set_concurrency(0)
        starts: list[float] = []

        async def work(slot: object) -> None:
            starts.append(clock.now())
            await asyncio.sleep(10)

        tasks = [asyncio.create_task(t.execute(work)) for _ in range(3)]
        await asyncio.sleep(1)
        assert starts == [0.0]
        t.set_concurrency(3)
        await asyncio.sleep(0)
        assert starts == [0.0, 1.0, 1.0]
        await asyncio.gather(*tasks)


def test_aimd_validation() -> None:
    with pytest.raises(ConfigurationError, match="failure_threshold"):
        AIMD(failure_threshold=0)
    with pytest.raises(ConfigurationError, match="failure_window"):
        AIMD(failure_window=0)
    with pytest.raises(ConfigurationError, match="decrease_factor"):
        AIMD(decrease_factor=1.0)
    with pytest.raises(ConfigurationError, match="cooling_period"):
        AIMD(cooling_period=0)
    with pytest.raises(ConfigurationError, match="increase_by"):
        AIMD(increase_by=0)


async def test_explicit_aimd_limit_object() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(10, limit=AIMD(failure_threshold=1, decrease_factor=0.7))
        t.record_failure()
        assert t.snapshot().concurrency == 7
        assert isinstance(t.limit, AIMD)
