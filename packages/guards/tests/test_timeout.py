from __future__ import annotations

import asyncio
import contextlib

import pytest

from headrace_core.testing import VirtualClock
from headrace_guards import ConfigurationError, GuardEvent, GuardTimeout, Timeout


async def test_timeout_fires_at_deadline() -> None:
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(GuardTimeout) as info:
            await Timeout(30, name="t").call(asyncio.sleep, 3600)
        assert clock.now() - start == 30
        assert info.value.timeout == 30
        assert info.value.name == "t"
        assert isinstance(info.value, TimeoutError)


async def test_result_passes_through() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(1)
        return 2 * x

    with VirtualClock():
        guard = Timeout(5)
        assert await guard.call(double, 21) == 42
        assert guard.snapshot().calls == 1
        assert guard.snapshot().timeouts == 0


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "1", True])
def test_seconds_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="seconds"):
        Timeout(bad)  # type: ignore[arg-type]


def test_on_timeout_and_clock_validated() -> None:
    with pytest.raises(ConfigurationError, match="on_timeout"):
        Timeout(1, on_timeout=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clock"):
        Timeout(1, clock=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name"):
        Timeout(1, name="")


async def test_inner_timeout_error_is_not_ours() -> None:
    inner = TimeoutError("the callee's own")

    async def raises() -> None:
        await asyncio.sleep(0)
        raise inner

    called: list[object] = []
    guard = Timeout(10, on_timeout=lambda: called.append(1))
    with pytest.raises(TimeoutError) as info:
        await guard.call(raises)
    assert info.value is inner
    assert not isinstance(info.value, GuardTimeout)
    assert called == []
    assert guard.snapshot().timeouts == 0


async def test_inner_asyncio_timeout_is_not_ours() -> None:
    async def inner() -> None:
        async with asyncio.timeout(1):
            await asyncio.sleep(10)

    with VirtualClock():
        with pytest.raises(TimeoutError) as info:
            await Timeout(100).call(inner)
        assert not isinstance(info.value, GuardTimeout)


async def test_on_timeout_sync_and_async_get_call_arguments() -> None:
    async def slow(x: int, *, y: int) -> int:
        await asyncio.sleep(100)
        return 0

    async def fallback_async(x: int, *, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    with VirtualClock():
        assert await Timeout(1, on_timeout=lambda x, y: x * y).call(slow, 3, y=4) == 12
        assert await Timeout(1, on_timeout=fallback_async).call(slow, 3, y=4) == 7


async def test_swallowed_cancellation_is_still_a_timeout() -> None:
    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(100)
        return "late"

    with VirtualClock():
        guard = Timeout(1)
        with pytest.raises(GuardTimeout):
            await guard.call(stubborn)
        assert guard.snapshot().timeouts == 1
        assert await Timeout(1, on_timeout=lambda: "fallback").call(stubborn) == "fallback"


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_caller_cancel_wins_over_deadline_in_same_iteration(cancel_first: bool) -> None:
    """The deadline and an external cancel land in the same loop iteration."""
    with VirtualClock():
        loop = asyncio.get_running_loop()
        called: list[int] = []
        guard = Timeout(5, on_timeout=lambda: called.append(1))
        observed: list[int] = []

        async def body() -> None:
            try:
                await guard.call(asyncio.sleep, 100)
            finally:
                task = asyncio.current_task()
                assert task is not None
                observed.append(task.cancelling())

        deadline = loop.time() + 5
        task = asyncio.create_task(body())
        if cancel_first:
            loop.call_at(deadline, task.cancel)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0)
            loop.call_at(deadline, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() == deadline
        assert called == []
        assert observed == [1]
        assert guard.snapshot().timeouts == 0


async def test_caller_cancel_after_deadline_fired_still_wins() -> None:
    with VirtualClock():
        guard = Timeout(5)
        observed: list[int] = []

        async def slow_cleanup() -> None:
            try:
                await asyncio.sleep(100)
            finally:
                # The deadline's cancel arrives; the caller is cancelled during cleanup.
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                await asyncio.sleep(0)

        async def body() -> None:
            try:
                await guard.call(slow_cleanup)
            finally:
                observed.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]

        task = asyncio.create_task(body())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert observed == [1]


async def test_cancelling_count_restored_after_own_timeout() -> None:
    with VirtualClock():
        task = asyncio.current_task()
        assert task is not None
        before = task.cancelling()
        with pytest.raises(GuardTimeout):
            await Timeout(1).call(asyncio.sleep, 10)
        assert task.cancelling() == before


async def test_async_with_raises_guard_timeout_and_ignores_on_timeout() -> None:
    with VirtualClock() as clock:
        guard = Timeout(2, on_timeout=lambda: "ignored")
        start = clock.now()

        async def body() -> None:
            async with guard as entered:
                assert entered is guard
                await asyncio.sleep(10)

        with pytest.raises(GuardTimeout):
            await body()
        assert clock.now() - start == 2
        async with guard:
            await asyncio.sleep(1)
        snap = guard.snapshot()
        assert (snap.calls, snap.timeouts) == (2, 1)


async def test_async_with_inner_timeout_error_propagates() -> None:
    inner = TimeoutError()
    with pytest.raises(TimeoutError) as info:
        async with Timeout(5):
            raise inner
    assert info.value is inner


async def test_async_with_per_task_state_under_concurrency() -> None:
    guard = Timeout(3)
    results: list[str] = []

    async def worker(delay: float) -> None:
        try:
            async with guard:
                await asyncio.sleep(delay)
            results.append("ok")
        except GuardTimeout:
            results.append("timeout")

    with VirtualClock():
        await asyncio.gather(*(worker(d) for d in (1, 5, 2, 10)))
    assert sorted(results) == ["ok", "ok", "timeout", "timeout"]


async def test_async_with_caller_cancel_propagates() -> None:
    with VirtualClock():
        guard = Timeout(10)

        async def body() -> None:
            async with guard:
                await asyncio.sleep(100)

        task = asyncio.create_task(body())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert guard.snapshot().timeouts == 0


async def test_timeout_event_and_failing_listener() -> None:
    events: list[GuardEvent] = []
    guard = Timeout(1, name="db")

    def bad(event: GuardEvent) -> None:
        raise RuntimeError("listener bug")

    guard.add_listener(bad)
    remove = guard.add_listener(events.append)
    with VirtualClock() as clock:
        with pytest.raises(GuardTimeout):
            await guard.call(asyncio.sleep, 5)
        assert len(events) == 1
        assert events[0].kind == "timeout"
        assert events[0].source == "db"
        assert events[0].at == clock.now()
        remove()
        with pytest.raises(GuardTimeout):
            await guard.call(asyncio.sleep, 5)
    assert len(events) == 1
    await guard.aclose()


async def test_decorator_keeps_metadata_and_rejects_sync() -> None:
    guard = Timeout(1)

    @guard
    async def fetch(x: int) -> int:
        """Docs."""
        return x + 1

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Docs."
    assert await fetch(1) == 2

    def sync() -> None: ...

    with pytest.raises(TypeError):
        guard(sync)  # type: ignore[arg-type]


async def test_callee_raising_timeout_error_after_our_cancel_is_ours() -> None:
    async def converts() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise TimeoutError("converted") from None

    with VirtualClock(), pytest.raises(GuardTimeout):
        await Timeout(1).call(converts)


@pytest.mark.parametrize("seed", [1, 2])
async def test_stress_exactly_the_slow_calls_time_out(seed: int) -> None:
    import random

    rng = random.Random(seed)
    guard = Timeout(5)
    outcomes: dict[int, str] = {}
    durations = {i: rng.choice([rng.uniform(0, 4.9), rng.uniform(5.1, 20)]) for i in range(500)}

    async def one(i: int) -> None:
        await asyncio.sleep(rng.uniform(0, 30))  # start at a random time
        try:
            if i % 2:
                await guard.call(asyncio.sleep, durations[i])
            else:
                async with guard:
                    await asyncio.sleep(durations[i])
            outcomes[i] = "ok"
        except GuardTimeout:
            outcomes[i] = "timeout"

    with VirtualClock():
        await asyncio.gather(*(one(i) for i in range(500)))
    for i, duration in durations.items():
        assert outcomes[i] == ("timeout" if duration > 5 else "ok"), (i, duration)
    assert guard.snapshot().timeouts == sum(1 for d in durations.values() if d > 5)


def test_timeout_guard_works_across_asyncio_run() -> None:
    guard = Timeout(5)

    async def main() -> str:
        return await guard.call(asyncio.sleep, 0, "done")

    assert asyncio.run(main()) == "done"
    assert asyncio.run(main()) == "done"


def test_a_new_loop_cancels_the_old_loops_idle_timer() -> None:
    guard = Timeout(5)
    handles: list[asyncio.TimerHandle] = []

    async def main() -> str:
        result = await guard.call(asyncio.sleep, 0, "done")
        deadlines = guard._deadlines
        assert deadlines is not None
        assert deadlines.loop is asyncio.get_running_loop()
        assert deadlines.handle is not None  # kept for a later call
        handles.append(deadlines.handle)
        return result

    assert asyncio.run(main()) == "done"
    assert asyncio.run(main()) == "done"
    first, second = handles
    assert first.cancelled()
    assert second is not first


def timer(guard: Timeout) -> asyncio.TimerHandle | None:
    """The loop timer watching the guard's deadlines, if one is armed."""
    deadlines = guard._deadlines
    assert deadlines is not None
    return deadlines.handle


async def test_aclose_cancels_the_timer_after_the_calls_in_flight() -> None:
    guard = Timeout(5)
    with VirtualClock() as clock:
        start = clock.now()
        assert await guard.call(asyncio.sleep, 1, "ok") == "ok"
        assert timer(guard) is not None  # armed for the first call's deadline
        slow = asyncio.create_task(guard.call(asyncio.sleep, 100))
        await asyncio.sleep(0)
        await guard.aclose()  # the call in flight keeps its deadline
        assert clock.now() == start + 1 + 5
        with pytest.raises(GuardTimeout):
            await slow
        assert timer(guard) is None
        await guard.aclose()  # idempotent

        fresh = Timeout(5)
        assert await fresh.call(asyncio.sleep, 0, "ok") == "ok"
        handle = timer(fresh)
        assert handle is not None
        await fresh.aclose()
        assert handle.cancelled()  # a closed guard leaves nothing scheduled
        assert timer(fresh) is None


async def test_injected_clock_is_for_events_only() -> None:
    events: list[GuardEvent] = []
    guard = Timeout(5, clock=lambda: 1234.5)
    guard.add_listener(events.append)
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(GuardTimeout):
            await guard.call(asyncio.sleep, 60)
        assert clock.now() - start == 5  # the wait used the loop's timer
    assert events[0].at == 1234.5


async def test_many_guards_and_nested_deadlines() -> None:
    outer, inner = Timeout(10), Timeout(3)

    async def nested(delay: float) -> str:
        return await inner.call(asyncio.sleep, delay, "inner-ok")

    with VirtualClock():
        assert await outer.call(nested, 1) == "inner-ok"
        with pytest.raises(GuardTimeout) as info:
            await outer.call(nested, 5)
        assert info.value.timeout == 3
        assert outer.snapshot().timeouts == 0

        async def slow_after_inner() -> None:
            await inner.call(asyncio.sleep, 1)
            await asyncio.sleep(20)

        with pytest.raises(GuardTimeout) as info:
            await outer.call(slow_after_inner)
        assert info.value.timeout == 10
