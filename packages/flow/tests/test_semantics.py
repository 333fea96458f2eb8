"""One test (at least) per row of the spec's semantics table."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_flow import (
    DROP,
    ConfigurationError,
    Dropped,
    FixedScaling,
    FlowClosed,
    HeadraceError,
    SourceError,
    StageTimeout,
    TransformerError,
    UtilizationScaling,
    batched,
    flow,
    stage,
)


class Tracker:
    """A per-worker context manager factory that counts entries and exits."""

    def __init__(self, fn: Any = None) -> None:
        self.opened = 0
        self.closed = 0
        self.fn = fn

    def __call__(self) -> Tracker._CM:
        return Tracker._CM(self)

    class _CM:
        def __init__(self, owner: Tracker) -> None:
            self.owner = owner

        async def __aenter__(self) -> Any:
            self.owner.opened += 1
            if self.owner.fn is not None:
                return self.owner.fn

            async def work(x: Any) -> Any:
                await asyncio.sleep(0.01)
                return x

            return work

        async def __aexit__(self, *exc: object) -> None:
            self.owner.closed += 1


def invariant(stats: Any) -> None:
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded, (
        stats
    )


async def endless() -> AsyncIterator[int]:
    i = 0
    while True:
        yield i
        i += 1
        await asyncio.sleep(0.001)


async def blocked_source() -> AsyncIterator[int]:
    yield 1
    yield 2
    await asyncio.Event().wait()  # never yields again
    yield 3


# -- row 1: cancellation of run() -------------------------------------------------------
async def test_cancel_run_leaves_no_task_and_exits_every_cm() -> None:
    tracker = Tracker()
    closed_source = asyncio.Event()

    async def src() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed_source.set()

    async def sink(x: Any) -> None:
        await asyncio.sleep(0.01)

    f = flow(stage(tracker, workers=4), stage(sink, workers=2))
    with VirtualClock():
        task = asyncio.create_task(f.run(src))
        await asyncio.sleep(0.5)
        assert tracker.opened == 4
        before = len(asyncio.all_tasks())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert tracker.closed == 4
    assert closed_source.is_set()
    assert len(asyncio.all_tasks()) < before
    assert not f.running
    invariant(f.stats())


async def test_closing_iterate_stops_the_flow() -> None:
    tracker = Tracker()
    f = flow(stage(tracker, workers=3))
    with VirtualClock():
        got = []
        async with contextlib.aclosing(f.iterate(endless())) as items:
            async for x in items:
                got.append(x)
                if len(got) == 5:
                    break
    assert got[:5] == sorted(got[:5])
    assert tracker.opened == tracker.closed == 3
    invariant(f.stats())


# -- row 2: stop() -----------------------------------------------------------------------
async def test_stop_returns_promptly_with_a_blocked_source() -> None:
    f = flow(stage(Tracker(), workers=2))
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run(blocked_source))
        await asyncio.sleep(1)
        start = clock.now()
        await f.stop()
        assert clock.now() - start < 0.001
        stats = await task
    assert stats.accepted == 2
    assert stats.completed == 2
    invariant(stats)


async def test_stop_counts_discarded() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(10)
        return x

    f = flow(stage(slow, workers=3, queue_size=5))
    with VirtualClock():
        task = asyncio.create_task(f.run(range(100)))
        await asyncio.sleep(1)
        await f.stop()
        stats = await task
    assert stats.completed == 0
    assert stats.discarded == stats.accepted > 0
    assert stats.accepted <= 5 + 3 + 1
    invariant(stats)


# -- row 3: drain() ----------------------------------------------------------------------
async def test_drain_with_blocked_source_loses_nothing() -> None:
    seen: list[int] = []

    async def sink(x: int) -> None:
        await asyncio.sleep(0.1)
        seen.append(x)

    f = flow(stage(sink, workers=1))
    with VirtualClock():
        task = asyncio.create_task(f.run(blocked_source))
        await asyncio.sleep(0.05)
        stats = await f.drain()
        assert await task == stats
    assert seen == [1, 2]
    assert stats.completed == 2
    assert stats.discarded == 0
    invariant(stats)


async def test_drain_keeps_an_item_already_yielded() -> None:
    seen: list[int] = []

    async def sink(x: int) -> None:
        seen.append(x)

    async def stubborn() -> AsyncIterator[int]:
        yield 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            yield 2  # yields once more although cancelled

    f = flow(sink)
    with VirtualClock():
        task = asyncio.create_task(f.run(stubborn))
        await asyncio.sleep(0.05)
        stats = await f.drain()
        await task
    assert seen == [1, 2]
    invariant(stats)


async def test_drain_and_stop_without_a_run_return() -> None:
    f = flow(Tracker())
    assert (await f.drain()).accepted == 0
    await f.stop()


# -- row 4: error policy -----------------------------------------------------------------
async def test_no_handler_fails_fast_with_the_original_error() -> None:
    tracker = Tracker()

    async def boom(x: int) -> int:
        if x == 3:
            raise ValueError("bad item")
        return x

    f = flow(boom, stage(tracker, workers=2))
    with pytest.raises(ValueError, match="bad item") as info:
        await f.run(range(100))
    assert any("boom" in n and "3" in n for n in info.value.__notes__)
    assert tracker.opened == tracker.closed == 2
    stats = f.stats()
    assert stats.failed == 1
    invariant(stats)


async def test_handler_returning_continues() -> None:
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def boom(x: int) -> int:
        if x % 3 == 0:
            raise KeyError(x)
        return x

    out: list[int] = []

    async def sink(x: int) -> None:
        out.append(x)

    stats = await flow(boom, sink, on_error=handler).run(range(9))
    assert out == [1, 2, 4, 5, 7, 8]
    assert [e.item for e in events] == [0, 3, 6]
    assert all(isinstance(e, TransformerError) and e.stage == "boom" for e in events)
    assert stats.failed == 3
    assert stats.completed == 6
    assert stats.stages["boom"].errors == 3
    invariant(stats)


async def test_handler_raising_aborts_with_the_handlers_error() -> None:
    async def handler(event: Any) -> None:
        raise RuntimeError("handler says stop")

    async def boom(x: int) -> int:
        raise ValueError(x)

    tracker = Tracker()
    f = flow(boom, stage(tracker, workers=2), on_error=handler)
    with pytest.raises(RuntimeError, match="handler says stop"):
        await f.run(range(10))
    assert tracker.opened == tracker.closed == 2
    invariant(f.stats())


async def test_cancelled_error_is_not_routed_to_the_handler() -> None:
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def slow(x: int) -> int:
        await asyncio.sleep(10)
        return x

    f = flow(slow, on_error=handler)
    with VirtualClock():
        task = asyncio.create_task(f.run(range(3)))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert events == []


# -- row 5: CM enter failure ---------------------------------------------------------------
async def test_cm_enter_failure_aborts_cleanly() -> None:
    class Broken:
        async def __aenter__(self) -> Any:
            raise OSError("no connection")

        async def __aexit__(self, *exc: object) -> None:
            raise AssertionError("never entered, never exited")

    tracker = Tracker()
    f = flow(stage(tracker, workers=2), Broken)
    with VirtualClock(), pytest.raises(OSError, match="no connection"):
        await f.run(range(10))
    assert tracker.opened == tracker.closed == 2


async def test_cm_enter_failure_with_handler_still_aborts_when_no_worker_is_left() -> None:
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    @contextlib.asynccontextmanager
    async def broken() -> AsyncIterator[Any]:
        if not events:
            raise OSError("down")
        yield lambda x: x

    f = flow(broken, on_error=handler)
    with pytest.raises(OSError, match="down"):
        await f.run(range(3))
    assert len(events) == 1
    assert events[0].item is None


# -- row 6: source errors ------------------------------------------------------------------
async def bad_source() -> AsyncIterator[int]:
    yield 1
    yield 2
    raise LookupError("source broke")


async def test_source_error_without_handler_raises() -> None:
    with pytest.raises(LookupError, match="source broke"):
        await flow(Tracker()).run(bad_source)


async def test_source_error_with_handler_drains_and_returns() -> None:
    events: list[Any] = []
    out: list[int] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def sink(x: int) -> None:
        out.append(x)

    stats = await flow(sink, on_error=handler).run(bad_source)
    assert out == [1, 2]
    assert len(events) == 1
    assert isinstance(events[0], SourceError)
    invariant(stats)


# -- row 7: ordering -----------------------------------------------------------------------
async def test_ordered_keeps_order_and_runs_n_wide() -> None:
    running = 0
    peak = 0

    async def jitter(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep((x * 7919) % 13 / 100)
        running -= 1
        return x

    out: list[int] = []

    async def sink(x: int) -> None:
        out.append(x)

    with VirtualClock():
        await flow(stage(jitter, workers=8, ordered=True), sink).run(range(60))
    assert out == list(range(60))
    assert peak == 8


async def test_ordered_holes_for_drop_and_errors() -> None:
    async def handler(event: Any) -> None:
        pass

    async def work(x: int) -> int | Any:
        await asyncio.sleep((x * 31) % 7 / 100)
        if x % 5 == 0:
            raise ValueError(x)
        if x % 3 == 0:
            return DROP
        return x

    with VirtualClock():
        out = [
            x
            async for x in flow(stage(work, workers=4, ordered=True), on_error=handler).iterate(
                range(30)
            )
        ]
    assert out == [x for x in range(30) if x % 5 and x % 3]


async def test_unordered_is_completion_order() -> None:
    async def wait(x: int) -> int:
        await asyncio.sleep(1 - x / 10)
        return x

    with VirtualClock():
        out = [x async for x in flow(stage(wait, workers=4)).iterate(range(4))]
    assert out == [3, 2, 1, 0]


# -- row 8: backpressure ---------------------------------------------------------------------
@pytest.mark.parametrize(("workers", "queue_size"), [(1, 1), (3, 2), (2, 5)])
async def test_backpressure_bound(workers: int, queue_size: int) -> None:
    pulled = 0
    finished = 0
    worst = 0

    async def src() -> AsyncIterator[int]:
        nonlocal pulled, worst
        for i in range(200):
            pulled += 1
            worst = max(worst, pulled - finished)
            yield i

    async def a(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async def b(x: int) -> None:
        nonlocal finished
        await asyncio.sleep(0.03)
        finished += 1

    f = flow(
        stage(a, workers=workers, queue_size=queue_size),
        stage(b, workers=workers, queue_size=queue_size),
    )
    with VirtualClock():
        await f.run(src)
    assert worst <= 2 * (queue_size + workers) + 1


async def test_queue_size_zero_is_unbounded() -> None:
    gate = asyncio.Event()

    async def held(x: int) -> None:
        await gate.wait()

    f = flow(stage(held, queue_size=0))
    task = asyncio.create_task(f.run(range(500)))
    for _ in range(50):  # the source yields to the loop now and then, never blocks
        await asyncio.sleep(0)
    assert f.stats().stages["held"].queue_length == 499
    gate.set()
    assert (await task).completed == 500


# -- row 9: autoscaling ----------------------------------------------------------------------
async def test_scale_from_zero_and_back() -> None:
    scaling = UtilizationScaling(
        min_workers=0, max_workers=4, cooldown_seconds=0.5, sampling_period=0.25
    )

    async def work(x: int) -> None:
        await asyncio.sleep(0.1)

    f = flow(stage(work, scaling=scaling))
    seen: list[int] = []
    with VirtualClock():
        async with f.push() as h:
            assert f.stats().stages["work"].workers == 0
            for i in range(40):
                await h.send(i)
                seen.append(f.stats().stages["work"].workers)
            await asyncio.sleep(10)
            assert f.stats().stages["work"].workers == 0
    assert max(seen) == 4
    assert all(0 <= w <= 4 for w in seen)


# -- row 10: stats ---------------------------------------------------------------------------
async def test_stats_live_and_after() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(1)
        return x

    f = flow(stage(slow, workers=2, queue_size=3))
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run(range(10)))
        await asyncio.sleep(0.5)
        live = f.stats()
        s = live.stages["slow"]
        assert live.running
        assert s.busy_workers == 2
        assert s.idle_workers == 0
        assert s.utilization == 1.0
        assert s.queue_length == 3
        assert s.oldest_item_age == pytest.approx(0.5)
        assert s.last_enqueue_at is not None
        assert s.last_enqueue_at <= clock.now()
        final = await task
    assert not final.running
    assert final.stages["slow"].processed == 10
    assert final.stages["slow"].peak_workers == 2
    assert f.snapshot() == f.stats() == final


# -- row 11: validation ----------------------------------------------------------------------
async def test_configure_unknown_stage_raises() -> None:
    f = flow(Tracker())
    with pytest.raises(ConfigurationError, match="typo"):
        f.configure("typo", scaling=FixedScaling(2))


# -- row 12: fan-out / batched ---------------------------------------------------------------
async def test_fan_out_and_batched() -> None:
    async def explode(x: int) -> AsyncIterator[int]:
        for i in range(x):
            yield i

    out: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        out.append(batch)

    with VirtualClock():
        await flow(explode, batched(4), sink).run([1, 2, 3, 4])
    assert [x for b in out for x in b] == [0, 0, 1, 0, 1, 2, 0, 1, 2, 3]
    assert [len(b) for b in out] == [4, 4, 2]


async def test_batched_max_wait_from_first_item() -> None:
    times: list[tuple[float, list[int]]] = []

    async def src() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.6)
        yield 2
        await asyncio.sleep(0.6)  # [1, 2] flushed at 1.0 (from the first item), not 1.6
        yield 3

    with VirtualClock() as clock:
        start = clock.now()

        async def sink(b: list[int]) -> None:
            times.append((round(clock.now() - start, 6), b))

        await flow(batched(10, max_wait=1.0), sink).run(src)
    assert times == [(1.0, [1, 2]), (1.2, [3])]


# -- row 13: one run at a time ---------------------------------------------------------------
async def test_second_concurrent_run_raises_and_rerun_is_fresh() -> None:
    gate = asyncio.Event()

    async def held(x: int) -> None:
        await gate.wait()

    f = flow(held)
    task = asyncio.create_task(f.run(range(3)))
    await asyncio.sleep(0)
    with pytest.raises(HeadraceError):
        await f.run(range(3))
    with pytest.raises(HeadraceError):
        async with f.push():
            pass  # pragma: no cover
    gate.set()
    assert (await task).completed == 3
    assert (await f.run(range(2))).completed == 2


# -- row 14: hygiene --------------------------------------------------------------------------
async def test_base_exceptions_are_not_swallowed() -> None:
    class Fatal(BaseException):
        pass

    async def fatal(x: int) -> int:
        raise Fatal

    with pytest.raises(Fatal):
        await flow(fatal).run(range(3))


# -- timeouts and retries -----------------------------------------------------------------------
async def test_timeout_is_a_stage_error_and_retried() -> None:
    calls = 0

    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return x

    out: list[int] = []

    async def sink(x: int) -> None:
        out.append(x)

    with VirtualClock() as clock:
        start = clock.now()
        await flow(stage(flaky, timeout=1.0, retries=1, retry_on=TimeoutError), sink).run([7])
        assert clock.now() - start == pytest.approx(1.0)
    assert out == [7]


async def test_timeout_without_retry_raises_stage_timeout() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(5)
        return x

    with VirtualClock(), pytest.raises(StageTimeout) as info:
        await flow(stage(slow, timeout=0.5)).run([1])
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.5


async def test_retries_with_backoff_on_loop_time() -> None:
    stamps: list[float] = []

    async def flaky(x: int) -> int:
        stamps.append(asyncio.get_running_loop().time())
        if len(stamps) < 3:
            raise ConnectionError
        return x

    with VirtualClock():
        stats = await flow(
            stage(flaky, retries=3, retry_on=ConnectionError, initial_delay=0.5, backoff_factor=2)
        ).run([1])
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(stamps)]
    assert gaps == [0.5, 1.0]
    assert stats.completed == 1


async def test_retries_exhausted_is_a_failure() -> None:
    calls = 0

    async def always(x: int) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await flow(stage(always, retries=2)).run([1])
    assert calls == 3


async def test_push_send_after_complete_raises_closed() -> None:
    f = flow(Tracker())
    with VirtualClock():
        async with f.push() as h:
            await h.send(1)
            await h.complete()
            with pytest.raises(FlowClosed):
                await h.send(2)
    with pytest.raises(FlowClosed):
        await h.send(3)
    assert f.stats().completed == 1


async def test_push_block_error_stops_the_run() -> None:
    tracker = Tracker()
    f = flow(stage(tracker, workers=2))

    async def body() -> None:
        async with f.push() as h:
            await h.send(1)
            await asyncio.sleep(0.001)
            raise KeyError("user")

    with VirtualClock(), pytest.raises(KeyError):
        await body()
    assert tracker.opened == tracker.closed == 2
    invariant(f.stats())


async def test_dropped_router_miss_reaches_handler() -> None:
    from headrace_flow import DropReason, router

    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def label(x: int) -> str:
        return "even" if x % 2 == 0 else "odd"

    async def even(x: int) -> int:
        return x

    stats = await flow(router(label, even=even), on_error=handler).run(range(4))
    assert [e.item for e in events] == [1, 3]
    assert all(isinstance(e, Dropped) and e.reason is DropReason.ROUTER_MISS for e in events)
    assert stats.filtered == 2
    assert stats.completed == 2
    invariant(stats)


async def test_concurrent_cm_failures_with_handler_abort_not_hang() -> None:
    async def handler(event: Any) -> None:
        await asyncio.sleep(0.01)  # every failing worker waits here at once

    class Broken:
        async def __aenter__(self) -> Any:
            await asyncio.sleep(0)
            raise OSError("pool exhausted")

        async def __aexit__(self, *exc: object) -> None:
            pass

    f = flow(stage(Broken, workers=3), on_error=handler)
    with VirtualClock(), pytest.raises(OSError, match="pool exhausted"):
        await f.run(range(10))
    assert f.stats().stages["Broken"].errors == 3


async def test_retired_workers_exit_their_cm_at_once() -> None:
    live = 0
    peak = 0

    @contextlib.asynccontextmanager
    async def pooled() -> AsyncIterator[Any]:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:

            async def work(x: int) -> None:
                await asyncio.sleep(0.05)

            yield work
        finally:
            live -= 1

    scaling = UtilizationScaling(
        min_workers=1, max_workers=5, cooldown_seconds=0.1, sampling_period=0.1
    )
    f = flow(stage(pooled, scaling=scaling, queue_size=5))
    with VirtualClock():
        async with f.push() as h:
            for i in range(200):
                await h.send(i)
            await asyncio.sleep(3)
            assert f.stats().stages["pooled"].workers == 1
            assert live == 1
    assert peak == 5
    assert live == 0


async def test_source_base_exception_ends_the_run() -> None:
    class Fatal(BaseException):
        pass

    async def src() -> AsyncIterator[int]:
        yield 1
        raise Fatal

    async def sink(x: int) -> None:
        pass

    with pytest.raises(Fatal):
        await flow(sink).run(src)


@pytest.mark.parametrize("queue", ["fifo", "lifo"])
async def test_oldest_item_age_follows_the_queue(queue: str) -> None:
    from headrace_flow import fifo_queue, lifo_queue

    gate = asyncio.Event()

    async def held(x: int) -> None:
        await gate.wait()

    async def src() -> AsyncIterator[int]:
        for i in range(4):
            yield i
            await asyncio.sleep(1)

    factory = fifo_queue if queue == "fifo" else lifo_queue
    f = flow(stage(held, queue=factory, queue_size=0))
    with VirtualClock():
        task = asyncio.create_task(f.run(src))
        await asyncio.sleep(3.5)  # item 0 is being held; 1, 2, 3 wait (entered at 1, 2, 3)
        assert f.stats().stages["held"].oldest_item_age == pytest.approx(2.5)
        gate.set()
        await task
    assert f.stats().stages["held"].oldest_item_age == 0.0
