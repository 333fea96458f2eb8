"""Throttle basics: execute/wrap/acquire, S10 progress, S11 close/drain, snapshot, loops."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest

from headrace_core import Closed, GuardTimeout
from headrace_core.testing import VirtualClock
from headrace_throttle import (
    Slot,
    Throttle,
    ThrottleClosed,
    ThrottleEvent,
    ThrottleSnapshot,
    ThrottleState,
)


async def test_execute_returns_and_passes_a_slot() -> None:
    t = Throttle(2)

    async def fn(slot: Slot) -> tuple[int, int]:
        return slot.attempt, slot.tokens

    assert await t.execute(fn, tokens=0) == (0, 0)
    snap = t.snapshot()
    assert snap.completed == 1
    assert snap.in_flight == 0
    assert snap.state is ThrottleState.RUNNING


async def test_wrap_keeps_signature_and_runs_through_the_throttle() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(1)
        running = [0]
        peak = [0]

        @t.wrap
        async def call_api(item: int, *, scale: int = 2) -> int:
            """Doc."""
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(1)
            running[0] -= 1
            return item * scale

        assert call_api.__name__ == "call_api"
        assert call_api.__doc__ == "Doc."
        assert list(inspect.signature(call_api).parameters) == ["item", "scale"]
        assert await asyncio.gather(*(call_api(i) for i in range(3))) == [0, 2, 4]
        assert peak[0] == 1

        @t.wrap(tokens=3)
        async def other() -> str:
            return "x"

        assert await other() == "x"
        with pytest.raises(TypeError):
            t.wrap(3)  # type: ignore[call-overload]


async def test_acquire_body_runs_once_and_counts() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(1, failure_threshold=1)
        async with t.acquire() as slot:
            slot.record_tokens(3)
            assert t.snapshot().in_flight == 1
        assert t.snapshot().completed == 1
        with pytest.raises(KeyError):
            async with t.acquire():
                raise KeyError
        assert t.snapshot().failed == 1
        assert t.snapshot().concurrency == 1


async def test_progress_and_eta_from_throughput() -> None:
    """Concurrency 10, 1 s tasks: after 20 of 100 the ETA is 8 s (not 80 s)."""
    with VirtualClock(start=0.0) as clock:
        snaps: list[ThrottleSnapshot] = []
        t = Throttle(10, total=100, on_progress=snaps.append)

        async def task(slot: Slot) -> None:
            await asyncio.sleep(1)

        jobs = [asyncio.create_task(t.execute(task)) for _ in range(100)]
        await asyncio.sleep(2.5)
        snap = t.snapshot()
        assert snap.completed == 20
        assert snap.percentage == 20.0
        assert snap.rate == pytest.approx(20 / 2.5)
        assert snap.eta_seconds == pytest.approx(80 / 8.0)
        await asyncio.gather(*jobs)
        assert clock.now() == 10.0
        assert [s.percentage for s in snaps] == [float(p) for p in range(10, 101, 10)]
        assert snaps[1].eta_seconds == pytest.approx(8.0)
        final = t.snapshot()
        assert final.eta_seconds == 0.0
        assert final.completed_tasks == 100
        assert final.total_tasks == 100


async def test_failures_count_as_finished_for_progress() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(4, total=4, failure_threshold=100)

        async def bad(slot: Slot) -> None:
            raise RuntimeError

        for _ in range(2):
            with pytest.raises(RuntimeError):
                await t.execute(bad)
        snap = t.snapshot()
        assert snap.failed == 2
        assert snap.percentage == 50.0


async def test_progress_callback_failure_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):

        def broken(snap: ThrottleSnapshot) -> None:
            raise RuntimeError("listener bug")

        t = Throttle(2, total=2, on_progress=broken, progress_step=50)
        with caplog.at_level(logging.ERROR, "headrace.throttle"):
            assert await t.execute(lambda s: asyncio.sleep(0, 1)) == 1
        assert "listener" in caplog.text


async def test_snapshot_without_total() -> None:
    t = Throttle(3)
    snap = t.snapshot()
    assert snap.percentage is None
    assert snap.eta_seconds is None
    assert snap.tokens_used is None
    assert snap.tokens_remaining is None
    assert snap.total_tasks == 0


async def test_close_rejects_new_and_queued_calls() -> None:
    with VirtualClock(start=0.0):
        events: list[ThrottleEvent] = []
        t = Throttle(1, on_event=events.append)
        ran: list[int] = []

        async def work(slot: Slot) -> None:
            await asyncio.sleep(1)
            ran.append(1)

        running = asyncio.create_task(t.execute(work))
        queued = [asyncio.create_task(t.execute(work)) for _ in range(3)]
        await asyncio.sleep(0)
        assert t.snapshot().waiting == 3
        t.close()
        assert t.snapshot().state is ThrottleState.DRAINING
        await t.drain()
        await running
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(r, ThrottleClosed) for r in results)
        assert isinstance(results[0], Closed)
        assert ran == [1]
        with pytest.raises(ThrottleClosed):
            await t.execute(work)
        with pytest.raises(ThrottleClosed):
            async with t.acquire():
                pass
        assert t.snapshot().state is ThrottleState.CLOSED
        kinds = [e.kind for e in events]
        assert kinds == ["closed", "drained"]
        t.close()  # idempotent


async def test_drain_waits_event_based_and_times_out() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(2)
        task = asyncio.create_task(t.execute(lambda s: asyncio.sleep(10)))
        await asyncio.sleep(0)
        with pytest.raises(GuardTimeout) as info:
            await t.drain(timeout=3)
        assert isinstance(info.value, TimeoutError)
        assert clock.now() == 3.0
        await t.drain()
        assert clock.now() == 10.0  # returned exactly when the call finished
        await task


async def test_async_with_closes_and_drains() -> None:
    with VirtualClock(start=0.0) as clock:
        async with Throttle(2) as t:
            task = asyncio.create_task(t.execute(lambda s: asyncio.sleep(5)))
            await asyncio.sleep(0)
        assert clock.now() == 5.0
        assert t.closed
        await task


async def test_async_listeners_are_awaited_by_drain() -> None:
    with VirtualClock(start=0.0):
        seen: list[str] = []

        async def listener(event: ThrottleEvent) -> None:
            await asyncio.sleep(1)
            seen.append(event.kind)

        t = Throttle(2, on_event=listener)
        t.record_failure()
        t.record_failure()
        t.record_failure()
        await t.drain()
        assert seen == ["decreased", "closed", "drained"]


async def test_event_fields_and_aliases() -> None:
    with VirtualClock(start=5.0):
        events: list[ThrottleEvent] = []
        t = Throttle(4, failure_threshold=1, name="api", on_event=events.append)
        t.record_failure()
        event = events[0]
        assert event.kind == "decreased"
        assert event.kind_legacy == "decelerated"
        assert event.at == event.timestamp == 5.0
        assert event.name == "api"
        assert event.data["concurrency"] == (4, 2)
        assert event.data["dispatch_interval"] == (0.0, 0.0)
        remove = t.add_listener(events.append)
        remove()


async def test_listener_exception_never_reaches_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def bad(event: ThrottleEvent) -> None:
        raise RuntimeError("boom")

    t = Throttle(2, failure_threshold=1, on_event=bad)

    async def fail(slot: Slot) -> None:
        raise KeyError

    with pytest.raises(KeyError):
        await t.execute(fail)
    assert t.snapshot().concurrency == 1
    assert "boom" in caplog.text


def test_created_at_import_time_works_in_successive_loops() -> None:
    t = Throttle(1)

    async def main() -> int:
        task = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0.001, 1)))
        second = await t.execute(lambda s: asyncio.sleep(0, 2))
        return await task + second

    assert asyncio.run(main()) == 3
    assert asyncio.run(main()) == 3


async def test_stress_mixed_cancellations_leave_consistent_state() -> None:
    import random

    rng = random.Random(42)
    with VirtualClock(start=0.0):
        t = Throttle(5, min_dispatch_interval=0.01, failure_threshold=5)
        tasks = []

        async def work(slot: Slot) -> None:
            await asyncio.sleep(rng.random())
            if rng.random() < 0.2:
                raise RuntimeError

        for _ in range(300):
            tasks.append(asyncio.create_task(t.execute(work)))
        for _ in range(60):
            await asyncio.sleep(rng.random() * 0.2)
            rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        snap = t.snapshot()
        assert snap.in_flight == 0
        assert snap.waiting == 0
        cancelled = sum(task.cancelled() for task in tasks)
        assert snap.completed + snap.failed + cancelled == 300
        assert len(t._queue) == 0


def test_event_accepts_gentlify_timestamp_keyword() -> None:
    event = ThrottleEvent(kind="decreased", timestamp=2.5, data={"concurrency": (4, 2)})
    assert event.at == 2.5
    assert event.timestamp == 2.5
    assert ThrottleEvent("closed", 1.0).data == {}
    with pytest.raises(TypeError):
        ThrottleEvent("closed")
    assert ThrottleEvent("retry", 1.0) == ThrottleEvent("retry", at=1.0)


async def test_uncontended_path_costs_no_loop_turn_no_future_and_no_task() -> None:
    loop = asyncio.get_running_loop()
    t = Throttle(4, budgets=[], min_dispatch_interval=0.0)
    turns = [0]
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            turns[0] += 1
            await asyncio.sleep(0)

    async def trivial(slot: Slot) -> int:
        assert len(asyncio.all_tasks()) == tasks_before
        return 1

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    tasks_before = len(asyncio.all_tasks())
    created = [0]
    real_create_future = loop.create_future

    def counting_create_future() -> asyncio.Future[object]:
        created[0] += 1
        return real_create_future()

    loop.create_future = counting_create_future  # type: ignore[method-assign]
    try:
        before = turns[0]
        for _ in range(100):
            assert await t.execute(trivial) == 1
        assert turns[0] == before  # the loop never turned: no await yielded
        assert created[0] == 0
    finally:
        del loop.create_future
        stop.set()
        await ticking


async def test_record_success_counts_and_can_raise_the_limit() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(4, initial_concurrency=2, cooling_period=1.0, total=4)
        await t.execute(lambda s: asyncio.sleep(0))  # the first admission starts the clock
        await asyncio.sleep(1)
        t.record_success()
        snap = t.snapshot()
        assert snap.completed == 2
        assert snap.concurrency == 3
        assert snap.percentage == 50.0


async def test_acquire_queues_in_fifo_and_is_not_reentrant() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(1)
        order: list[tuple[str, float]] = []

        async def holder(label: str) -> None:
            async with t.acquire() as slot:
                assert slot.attempt == 0
                order.append((label, clock.now()))
                await asyncio.sleep(1)

        await asyncio.gather(holder("a"), holder("b"), holder("c"))
        assert order == [("a", 0.0), ("b", 1.0), ("c", 2.0)]
        manager = t.acquire()
        async with manager:
            with pytest.raises(RuntimeError):
                await manager.__aenter__()


async def test_acquire_applies_server_hints_once_with_a_retry_configured() -> None:
    from headrace_throttle import RetryConfig, ServerBusy

    with VirtualClock(start=0.0):
        t = Throttle(8, retry=RetryConfig(max_attempts=2, backoff="fixed", base_delay=0.0))
        with pytest.raises(ServerBusy):
            async with t.acquire():
                raise ServerBusy(retry_after=3.0)
        snap = t.snapshot()
        assert snap.concurrency == 4
        assert snap.paused_until == 3.0


async def test_aclose_and_drain_after_errors() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(2)
        gate = asyncio.Event()

        async def fail(slot: Slot) -> None:
            await gate.wait()
            raise KeyError

        task = asyncio.create_task(t.execute(fail))
        await asyncio.sleep(0)
        t.close()
        assert t.snapshot().state is ThrottleState.DRAINING
        gate.set()
        with pytest.raises(KeyError):
            await task
        assert t.snapshot().state is ThrottleState.CLOSED
        await t.aclose()


def test_use_from_a_second_running_loop_raises() -> None:
    import threading

    t = Throttle(2)
    started = threading.Event()
    handles: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def hold_in_thread() -> None:
        release = asyncio.Event()
        handles.append((asyncio.get_running_loop(), release))

        async def wait(slot: Slot) -> None:
            started.set()
            await release.wait()

        await t.execute(wait)

    thread = threading.Thread(target=lambda: asyncio.run(hold_in_thread()))
    thread.start()
    try:
        assert started.wait(5)

        async def other() -> None:
            with pytest.raises(RuntimeError, match="another thread"):
                await t.execute(lambda s: asyncio.sleep(0))

        asyncio.run(other())
    finally:
        loop, release = handles[0]
        loop.call_soon_threadsafe(release.set)
        thread.join(5)
    assert not thread.is_alive()


async def test_failing_user_hooks_never_stall_the_queue(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
            raise RuntimeError("limit bug")

    def predicate(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    with VirtualClock(start=0.0):
        t = Throttle(1, limit=Broken(), is_failure=predicate)

        async def fail(slot: Slot) -> None:
            await asyncio.sleep(1)
            raise KeyError

        results = await asyncio.gather(*(t.execute(fail) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, KeyError) for r in results)
        assert await t.execute(lambda s: asyncio.sleep(0, "ok")) == "ok"
        snap = t.snapshot()
        assert snap.in_flight == 0
        assert snap.waiting == 0
        assert snap.concurrency == 1
        assert "limit bug" in caplog.text
        assert "predicate bug" in caplog.text


async def test_release_skips_waiters_cancelled_in_the_queue() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(1)
        started: list[tuple[str, float]] = []

        async def work(label: str) -> None:
            async def body(slot: Slot) -> None:
                started.append((label, clock.now()))
                await asyncio.sleep(1)

            await t.execute(body)

        first = asyncio.create_task(work("first"))
        await asyncio.sleep(0)
        gone = asyncio.create_task(work("gone"))
        last = asyncio.create_task(work("last"))
        await asyncio.sleep(0.5)
        gone.cancel()
        await asyncio.gather(first, last)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert started == [("first", 0.0), ("last", 1.0)]
        assert t.snapshot().waiting == 0


async def test_acquire_waits_for_pacing() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4, min_dispatch_interval=2.0)
        starts: list[float] = []
        for _ in range(3):
            async with t.acquire():
                starts.append(clock.now())
        assert starts == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_seeded_stress_with_budgets_hints_cancels_and_close(seed: int) -> None:
    import random

    from headrace_throttle import RequestBudget, ServerBusy, TokenBudget

    rng = random.Random(seed)
    with VirtualClock(start=0.0):
        tpm = TokenBudget(500, 10.0)
        rpm = RequestBudget(40, 10.0)
        t = Throttle(
            8,
            budgets=[tpm, rpm],
            min_dispatch_interval=0.01,
            failure_threshold=2,
            cooling_period=1.0,
        )
        running = [0]
        peak = [0]

        async def work(slot: Slot) -> None:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            try:
                await asyncio.sleep(rng.random())
                slot.record_tokens(rng.randint(0, slot.tokens))
                roll = rng.random()
                if roll < 0.1:
                    raise ServerBusy(retry_after=rng.random())
                if roll < 0.25:
                    raise RuntimeError("flaky")
            finally:
                running[0] -= 1

        tasks = [
            asyncio.create_task(t.execute(work, tokens=rng.randint(0, 100))) for _ in range(200)
        ]
        for _ in range(40):
            await asyncio.sleep(rng.random() * 0.5)
            rng.choice(tasks).cancel()
            if rng.random() < 0.2:
                t.set_concurrency(rng.randint(1, 8))
        await asyncio.sleep(5)
        t.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await t.drain()
        snap = t.snapshot()
        assert snap.in_flight == 0
        assert snap.waiting == 0
        assert running[0] == 0
        assert peak[0] <= 8
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        closed = sum(isinstance(r, ThrottleClosed) for r in results)
        assert snap.completed + snap.failed + cancelled + closed == 200
        assert snap.state is ThrottleState.CLOSED


def test_wrap_refuses_a_sync_function_at_decoration() -> None:
    t = Throttle(2)

    def sync(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="async"):
        t.wrap(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        t.wrap(tokens=3)(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        t.wrap(lambda: asyncio.sleep(0))  # a sync callable, even if it returns a coroutine


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan"), "3", True, [1]])
async def test_drain_validates_its_timeout(timeout: object) -> None:
    from headrace_core import ConfigurationError

    t = Throttle(2)
    with pytest.raises(ConfigurationError, match="timeout") as info:
        await t.drain(timeout=timeout)  # type: ignore[arg-type]
    assert info.value.argument == "timeout"
    assert not t.closed  # nothing happened
    await t.drain(timeout=float("inf"))  # no limit
    await t.drain(timeout=0)


async def test_drain_timeout_bounds_async_listeners_too() -> None:
    with VirtualClock(start=0.0) as clock:
        finished: list[str] = []

        async def slow_listener(event: ThrottleEvent) -> None:
            await asyncio.sleep(3600)
            finished.append(event.kind)

        t = Throttle(2, on_event=slow_listener)
        await t.drain(timeout=5)  # the listeners are cancelled at the deadline
        assert clock.now() == 5.0
        assert finished == []


async def test_a_queued_call_whose_coroutine_is_closed_holds_nothing() -> None:
    """A waiter that leaves without being cancelled (its coroutine closed) is skipped."""
    with VirtualClock(start=0.0):
        t = Throttle(1)
        gate = asyncio.Event()
        running = asyncio.create_task(t.execute(lambda s: gate.wait()))
        await asyncio.sleep(0)
        waiter = t.execute(lambda s: asyncio.sleep(0, "never"))
        waiter.send(None)  # queued: it waits on its future
        assert t.snapshot().waiting == 1
        waiter.close()  # GeneratorExit at the await, its future still pending
        assert t.snapshot().waiting == 0
        gate.set()
        await running
        assert await t.execute(lambda s: asyncio.sleep(0, "next")) == "next"
        snap = t.snapshot()
        assert snap.in_flight == snap.waiting == 0
