"""Regression tests: whatever user code does, a run ends, accounts for every item, and
reports the user's own error."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from headrace_core import BackoffError, GuardTimeout
from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_flow import (
    ConfigurationError,
    HeadraceError,
    Last,
    StageStats,
    StageTimeout,
    TransformerError,
    UtilizationScaling,
    flow,
    router,
    stage,
)
from shared.faults import Fault, run_injection


def invariant(stats: Any) -> None:
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded, (
        stats
    )


async def cancelled_by_someone_else() -> None:
    """Await a future another party cancelled: CancelledError, the task is not cancelled."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


# -- a stage that raises CancelledError by itself ---------------------------------------
async def test_a_stage_raising_cancelled_error_itself_is_the_items_failure() -> None:
    events: list[Any] = []
    out: list[int] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def work(x: int) -> int:
        if x == 1:
            await cancelled_by_someone_else()
        return x

    async def sink(x: int) -> None:
        out.append(x)

    with VirtualClock():
        async with asyncio.timeout(60):
            stats = await flow(work, sink, on_error=handler).run(range(4))
    assert out == [0, 2, 3]
    assert len(events) == 1
    assert isinstance(events[0], TransformerError)
    assert events[0].item == 1
    assert isinstance(events[0].exception, asyncio.CancelledError)
    assert stats.failed == 1
    invariant(stats)


async def test_a_stage_cancelled_error_without_handler_aborts_with_a_headrace_error() -> None:
    async def work(x: int) -> int:
        if x == 1:
            await cancelled_by_someone_else()
        return x

    with VirtualClock():
        async with asyncio.timeout(60):
            with pytest.raises(HeadraceError) as info:
                await flow(stage(work, workers=2)).run(range(4))
    # the caller was not cancelled: it gets an error that chains the CancelledError
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert "'work'" in str(info.value)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_non_cancelling_cancelled_error_is_retried_when_retry_on_lists_it() -> None:
    calls = 0

    async def work(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await cancelled_by_someone_else()
        return x

    with VirtualClock():
        stats = await flow(stage(work, retries=1, retry_on=asyncio.CancelledError)).run([1])
    assert calls == 2
    assert stats.completed == 1


async def test_a_context_manager_raising_cancelled_error_on_enter_is_a_stage_error() -> None:
    class Enter:
        async def __aenter__(self) -> Any:
            await cancelled_by_someone_else()

        async def __aexit__(self, *exc: object) -> None:
            raise AssertionError("never entered")

    with VirtualClock():
        async with asyncio.timeout(60):
            with pytest.raises(HeadraceError) as info:
                await flow(Enter).run(range(3))
    assert isinstance(info.value.__cause__, asyncio.CancelledError)


# -- Last, whatever the topology ---------------------------------------------------------
async def test_last_from_a_router_arm_ends_the_run() -> None:
    async def classify(x: int) -> str:
        return "fast" if x % 2 == 0 else "slow"

    async def fast(x: int) -> Any:
        return Last("FINAL") if x == 0 else x

    async def slow(x: int) -> int:
        await asyncio.sleep(1)
        return x

    out: list[Any] = []

    async def collect(x: Any) -> None:
        out.append(x)

    with VirtualClock():
        async with asyncio.timeout(60):
            stats = await flow(router(classify, fast=fast, slow=slow), collect).run(range(20))
    assert out[-1] == "FINAL"
    invariant(stats)


@pytest.mark.parametrize(("threshold", "pause"), [(0, 0.0), (3, 0.0), (6, 1.0)])
async def test_last_from_several_arms_at_once(threshold: int, pause: float) -> None:
    async def classify(x: int) -> str:
        return "a" if x % 2 == 0 else "b"

    async def a(x: int) -> Any:
        await asyncio.sleep(pause)
        return Last(("a", x)) if x >= threshold else x

    async def b(x: int) -> Any:
        await asyncio.sleep(pause)
        return Last(("b", x)) if x >= threshold else x

    out: list[Any] = []

    async def collect(x: Any) -> None:
        out.append(x)

    with VirtualClock():
        async with asyncio.timeout(60):
            stats = await flow(
                router(classify, a=stage(a, workers=2), b=stage(b, workers=2)),
                stage(collect, workers=2),
            ).run(range(40))
    finals = [i for i, v in enumerate(out) if isinstance(v, tuple)]
    assert finals
    assert finals == list(range(finals[0], len(out)))  # nothing after a final value
    invariant(stats)


async def test_last_from_the_middle_of_a_sub_flow_inside_an_arm() -> None:
    async def classify(x: int) -> str:
        return "a" if x % 2 == 0 else "b"

    async def first(x: int) -> int:
        return x

    async def stopper(x: int) -> Any:
        return Last("END") if x == 6 else x

    async def then(x: Any) -> Any:
        await asyncio.sleep(0.5)
        return x

    async def b(x: int) -> int:
        await asyncio.sleep(5)  # still busy with earlier items when END passes
        return x

    out: list[Any] = []

    async def collect(x: Any) -> None:
        out.append(x)

    inner = flow(first, stopper, then)
    with VirtualClock():
        async with asyncio.timeout(600):
            stats = await flow(router(classify, a=inner, b=stage(b, workers=4)), collect).run(
                range(40)
            )
    assert out[-1] == "END"
    assert out.count("END") == 1
    invariant(stats)


async def test_last_stays_last_through_a_wide_stage_below() -> None:
    rng = random.Random(7)

    async def stopper(x: int) -> Any:
        return Last(-1) if x == 10 else x

    async def wide(x: int) -> int:
        await asyncio.sleep(rng.random())
        return x

    out: list[int] = []

    async def collect(x: int) -> None:
        out.append(x)

    with VirtualClock():
        async with asyncio.timeout(600):
            stats = await flow(stopper, stage(wide, workers=4), stage(collect, workers=3)).run(
                range(100)
            )
    assert out[-1] == -1
    assert sorted(out[:-1]) == list(range(10))
    invariant(stats)


async def test_last_from_a_router_arm_with_iterate() -> None:
    async def classify(x: int) -> str:
        return "a" if x % 3 == 0 else "b"

    async def a(x: int) -> Any:
        return Last("DONE") if x == 9 else x

    async def b(x: int) -> int:
        await asyncio.sleep(2)
        return x

    with VirtualClock():
        async with asyncio.timeout(600):
            f = flow(router(classify, a=a, b=stage(b, workers=3)))
            out = [x async for x in f.iterate(range(30))]
    assert out[-1] == "DONE"
    invariant(f.stats())


# -- scale from zero -----------------------------------------------------------------------
@pytest.mark.parametrize("cooldown", [0, 0.01, 0.5, 5.0])
@pytest.mark.parametrize("start", [0.0, 1e3, 1e6])
async def test_scale_from_zero_for_every_cooldown(cooldown: float, start: float) -> None:
    scaling = UtilizationScaling(min_workers=0, max_workers=3, cooldown_seconds=cooldown)

    async def work(x: int) -> int:
        if x % 3 == 0:
            await asyncio.sleep(0.05)
        return x

    async def source() -> AsyncIterator[int]:
        for i in range(60):
            yield i
            if i % 10 == 9:
                await asyncio.sleep(3)  # idle long enough to scale down to zero

    peaks: list[int] = []

    def listen(event: Any) -> None:
        peaks.append(event.after)

    f = flow(stage(work, scaling=scaling))
    f.add_listener(listen)
    with VirtualClock(start=start):
        async with asyncio.timeout(600):
            stats = await f.run(range(5))
            assert stats.completed == 5
            stats = await f.run(source)
    assert stats.completed == 60
    assert all(0 <= p <= 3 for p in peaks)
    invariant(stats)


# -- a source that never waits ---------------------------------------------------------------
def counting(limit: int, seen: list[int]) -> Iterator[int]:
    for i in itertools.islice(itertools.count(), limit):
        seen.append(i)
        yield i


async def test_a_sync_source_with_an_unbounded_queue_lets_stop_run() -> None:
    seen: list[int] = []

    async def work(x: int) -> int:
        return x

    f = flow(stage(work, queue_size=0))
    with VirtualClock():
        task = asyncio.create_task(f.run(counting(300_000, seen)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await f.stop()
        stats = await task
    assert len(seen) < 300_000
    invariant(stats)


async def test_a_sync_source_with_an_unbounded_queue_lets_drain_run() -> None:
    seen: list[int] = []

    async def work(x: int) -> int:
        return x

    f = flow(stage(work, queue_size=0))
    with VirtualClock():
        task = asyncio.create_task(f.run(counting(300_000, seen)))
        while not seen:
            await asyncio.sleep(0)
        drained = await f.drain()
        stats = await task
    assert len(seen) < 300_000
    assert stats.completed == stats.accepted == drained.completed
    invariant(stats)


async def test_an_endless_sync_source_lets_a_timeout_fire() -> None:
    async def work(x: int) -> int:
        return x

    f = flow(stage(work, queue_size=0), default_queue_size=0)
    with VirtualClock(), pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await f.run(itertools.islice(itertools.count(), 300_000))
    assert f.stats().accepted < 300_000
    invariant(f.stats())


async def test_an_async_source_that_never_waits_lets_stop_run() -> None:
    seen: list[int] = []

    async def numbers() -> AsyncIterator[int]:
        for i in range(300_000):
            seen.append(i)
            yield i

    async def work(x: int) -> int:
        return x

    f = flow(stage(work, queue_size=0))
    with VirtualClock():
        task = asyncio.create_task(f.run(numbers))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await f.stop()
        stats = await task
    assert len(seen) < 300_000
    invariant(stats)


# -- nested stage() keeps the inner options -----------------------------------------------------
async def test_nested_stage_keeps_the_inner_retries() -> None:
    calls = 0

    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError("flaky")
        return x

    nested = stage(stage(flaky, retries=2, retry_on=OSError), workers=2)
    with VirtualClock():
        stats = await flow(nested).run([1])
    assert calls == 3
    assert stats.completed == 1
    assert stats.stages["flaky"].workers == 0  # ended; ran with the outer worker count
    assert stats.stages["flaky"].peak_workers == 2


async def test_nested_stage_keeps_the_inner_timeout_and_backoff() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(10)
        return x

    with VirtualClock(), pytest.raises(StageTimeout):
        await flow(stage(stage(slow, timeout=1), workers=2)).run([1])

    times: list[float] = []

    async def failing(x: int) -> int:
        times.append(asyncio.get_running_loop().time())
        raise OSError("down")

    with VirtualClock(), pytest.raises(OSError, match="down"):
        await flow(stage(stage(failing, retries=2, backoff=fixed(3.0)), name="n")).run([1])
    assert [t - times[0] for t in times] == [0.0, 3.0, 6.0]


async def test_nested_stage_outer_options_override_what_they_set() -> None:
    calls = 0

    async def failing(x: int) -> int:
        nonlocal calls
        calls += 1
        raise OSError("down")

    with VirtualClock(), pytest.raises(OSError, match="down"):
        await flow(stage(stage(failing, retries=3, timeout=5), retries=1)).run([1])
    assert calls == 2

    times: list[float] = []

    async def timed(x: int) -> int:
        times.append(asyncio.get_running_loop().time())
        raise OSError("down")

    with VirtualClock(), pytest.raises(OSError, match="down"):
        await flow(stage(stage(timed, retries=1, backoff=fixed(3.0)), initial_delay=1)).run([1])
    assert [t - times[0] for t in times] == [0.0, 1.0]


# -- retries never catch an interrupt ----------------------------------------------------------
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
async def test_retry_on_base_exception_never_retries_an_interrupt(
    interrupt: type[BaseException],
) -> None:
    calls = 0

    async def work(x: int) -> int:
        nonlocal calls
        calls += 1
        raise interrupt

    with VirtualClock(), pytest.raises(interrupt):
        await flow(stage(work, retries=3, retry_on=BaseException)).run([1])
    assert calls == 1


async def test_retry_on_base_exception_never_retries_the_runs_own_cancellation() -> None:
    calls = 0

    async def work(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)
        return x

    f = flow(stage(work, retries=3, retry_on=BaseException))
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run([1]))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.now() == 1.0
    assert calls == 1


# -- annotating an error never replaces it ------------------------------------------------------
class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


async def test_an_item_whose_repr_raises_keeps_the_users_error() -> None:
    async def boom(x: Any) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info:
        await flow(boom).run([BadRepr()])
    assert any("BadRepr" in note for note in info.value.__notes__)


async def test_an_exception_whose_add_note_raises_is_still_raised() -> None:
    class Stubborn(Exception):
        def add_note(self, note: str) -> None:
            raise RuntimeError("no notes here")

    async def boom(x: int) -> None:
        raise Stubborn("mine")

    with pytest.raises(Stubborn, match="mine"):
        await flow(boom).run([1])


async def test_an_exception_raised_again_gains_no_note_per_run() -> None:
    error = ValueError("the same object every time")

    async def boom(x: int) -> None:
        raise error

    f = flow(boom)
    for i in range(3):
        with pytest.raises(ValueError, match="the same object"):
            await f.run([i])
    assert len(error.__notes__) == 1
    assert "2" in error.__notes__[0]


# -- a custom backoff that misbehaves -----------------------------------------------------------
class Short:
    """A custom schedule with one delay only."""

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        return iter([0.5])


class Garbage:
    def delays(self, rng: random.Random | None = None) -> Iterator[Any]:
        return iter([math.nan])


@pytest.mark.parametrize("backoff", [Short(), Garbage()])
async def test_a_custom_backoff_that_runs_out_raises_backoff_error(backoff: Any) -> None:
    async def failing(x: int) -> int:
        raise OSError("down")

    with VirtualClock(), pytest.raises(BackoffError) as info:
        await flow(stage(failing, retries=5, backoff=backoff)).run([1])
    assert isinstance(info.value.__cause__, OSError)


# -- drain(timeout=) ------------------------------------------------------------------------------
@pytest.mark.parametrize("timeout", [-1, math.nan, "1", True])
async def test_drain_timeout_is_validated(timeout: Any) -> None:
    f = flow(stage(asyncio.sleep))
    with pytest.raises(ConfigurationError, match="timeout"):
        await f.drain(timeout=timeout)


async def test_drain_timeout_expires_with_guard_timeout() -> None:
    async def slow(x: int) -> None:
        await asyncio.sleep(100)

    f = flow(slow)
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run(range(3)))
        await asyncio.sleep(1)
        with pytest.raises(GuardTimeout):
            await f.drain(timeout=5)
        assert clock.now() == 6.0
        stats = await f.drain(timeout=1000)
        assert stats.completed == stats.accepted
        await task


# -- interrupts never escape into the loop -------------------------------------------------------
class InterruptingStrategy:
    """A custom strategy whose periodic decision raises KeyboardInterrupt."""

    min_workers = 1
    max_workers = 2
    sampling_period = 0.5

    def initial_workers(self) -> int:
        return 1

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        if tick:
            raise KeyboardInterrupt
        return 0


async def drive_interrupting_tick(_: Any) -> None:
    async def slow(x: int) -> None:
        await asyncio.sleep(10)

    f = flow(stage(slow, scaling=InterruptingStrategy()))
    with pytest.raises(KeyboardInterrupt):
        await f.run(range(3))
    assert not f.running
    invariant(f.stats())


def test_a_strategy_interrupting_on_the_tick_stops_the_run() -> None:
    run_injection(drive_interrupting_tick, Fault.KEYBOARD_INTERRUPT)


async def drive_interrupt_after_start(_: Any) -> None:
    async def work(x: int) -> None:
        if x == 2:
            raise SystemExit(3)

    f = flow(work)
    f.set_producer(range(5))
    await f.start()
    with pytest.raises(SystemExit):
        await f.wait()
    assert not f.running


def test_an_interrupt_in_a_started_run_reaches_wait() -> None:
    run_injection(drive_interrupt_after_start, Fault.SYSTEM_EXIT)


async def test_a_sync_listener_interrupt_stops_the_run() -> None:
    async def fail(x: int) -> None:
        raise OSError("down")

    async def handler(event: Any) -> None:
        pass

    def listener(event: Any) -> None:
        raise KeyboardInterrupt

    f = flow(fail, on_error=handler)
    f.add_listener(listener)
    with pytest.raises(KeyboardInterrupt):
        await f.run(range(3))
    assert not f.running
    invariant(f.stats())


async def test_push_raises_the_stage_error_with_its_own_cause() -> None:
    async def work(x: int) -> int:
        try:
            raise KeyError(x)
        except KeyError as exc:
            raise ValueError("bad item") from exc

    async def feed() -> None:
        async with f.push() as handle:
            for i in range(5):
                await handle.send(i)

    f = flow(work)
    with pytest.raises(ValueError, match="bad item") as info:
        await feed()
    assert isinstance(info.value.__cause__, KeyError)
    invariant(f.stats())


async def test_last_while_a_sibling_arm_waits_to_put_into_an_ordered_stage() -> None:
    # the sibling arm's workers are cancelled while they wait for room in the ordered
    # stage: no sequence number may be lost, or the ordered stage waits for ever
    async def classify(x: int) -> str:
        return "a" if x % 3 == 0 else "b"

    async def stop(x: int) -> Any:
        return Last("L") if x == 9 else x

    async def tail(x: Any) -> Any:
        await asyncio.sleep(2)  # still delivers earlier items after the cut
        return x

    async def b(x: int) -> int:
        return x

    async def merge(x: Any) -> Any:
        await asyncio.sleep(1)
        return x

    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    f = flow(
        router(classify, a=flow(stop, stage(tail, workers=3)), b=stage(b, workers=3)),
        stage(merge, workers=2, ordered=True),
        sink,
    )
    with VirtualClock():
        async with asyncio.timeout(600):
            stats = await f.run(range(40))
    assert out[-1] == "L"
    invariant(stats)


async def test_last_right_as_a_stage_scaled_to_zero_starts_a_worker() -> None:
    # the new worker is cancelled by the cut before it ever runs: it is counted out all
    # the same, or the stage never finishes
    scaling = UtilizationScaling(
        min_workers=0, max_workers=2, cooldown_seconds=0, sampling_period=0.05
    )

    async def source() -> AsyncIterator[int]:
        for i in range(10):
            yield i
            await asyncio.sleep(1)

    async def middle(x: int) -> int:
        return x

    async def end(x: int) -> Any:
        await asyncio.sleep(1)  # returns just as the next item reaches the idle stage
        return Last(x) if x == 1 else x

    with VirtualClock():
        async with asyncio.timeout(600):
            stats = await flow(stage(middle, name="idle", scaling=scaling), end).run(source)
    assert stats.completed == 2
    invariant(stats)
