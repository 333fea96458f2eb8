from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import (
    BulkheadFull,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    Consecutive,
    CountWindow,
    GuardEvent,
    GuardTimeout,
    Timeout,
    TimeWindow,
)
from shared.faults import settle


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom


def st(breaker: CircuitBreaker) -> CircuitState:
    """Read the state through a call, so mypy does not narrow the property."""
    return breaker.state


async def ok(value: object = "ok") -> object:
    return value


async def trip(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(fail)


def changes(events: list[GuardEvent]) -> list[tuple[Any, Any, str | None]]:
    return [(e.old_state, e.new_state, e.reason) for e in events if e.kind == "state_change"]


async def test_opens_after_threshold_and_rejects_without_calling(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker("svc", failure_threshold=3, recovery_timeout=10)
        await trip(breaker, 3)
        assert st(breaker) is CircuitState.OPEN
        called = []

        async def fn() -> None:
            called.append(1)

        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(fn)
        assert called == []
        assert info.value.retry_after == 10
        assert info.value.name == "svc"
        assert info.value.state is CircuitState.OPEN
        snap = breaker.snapshot()
        assert snap.rejected == 1
        assert snap.failures == 3
        assert snap.failure_count == 3
        assert snap.retry_after == 10
        assert snap.last_reason == "failures"


async def test_success_resets_the_streak() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    await trip(breaker, 2)
    await breaker.call(ok)
    await trip(breaker, 2)
    assert st(breaker) is CircuitState.CLOSED
    assert breaker.snapshot().failure_count == 2


async def test_recovery_probe_closes(clock_start: float) -> None:
    events: list[GuardEvent] = []
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5)
        breaker.add_listener(events.append)
        await trip(breaker, 1)
        await clock.advance(4.5)
        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(ok)
        assert info.value.retry_after == pytest.approx(0.5)
        await clock.advance(0.5)
        assert st(breaker) is CircuitState.HALF_OPEN
        assert await breaker.call(ok) == "ok"
        assert st(breaker) is CircuitState.CLOSED
    assert changes(events) == [
        (CircuitState.CLOSED, CircuitState.OPEN, "failures"),
        (CircuitState.OPEN, CircuitState.HALF_OPEN, "recovery_timeout"),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED, "probes_succeeded"),
    ]


async def test_half_open_failure_reopens_with_fresh_deadline(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5)
        await trip(breaker, 1)
        await clock.advance(7)
        await trip(breaker, 1)
        assert st(breaker) is CircuitState.OPEN
        assert breaker.snapshot().last_reason == "half_open_failure"
        assert breaker.snapshot().retry_after == 5


async def test_half_open_admits_only_max_calls_and_needs_all_successes(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, half_open_max_calls=2)
        await trip(breaker, 1)
        await clock.advance(1)
        gate = asyncio.Event()

        async def probe() -> str:
            await gate.wait()
            return "p"

        t1 = asyncio.create_task(breaker.call(probe))
        t2 = asyncio.create_task(breaker.call(probe))
        await asyncio.sleep(0)
        assert breaker.snapshot().half_open_in_flight == 2
        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(ok)
        assert info.value.retry_after == 0.0
        assert info.value.state is CircuitState.HALF_OPEN
        gate.set()
        assert list(await asyncio.gather(t1, t2)) == ["p", "p"]
        assert st(breaker) is CircuitState.CLOSED


async def test_cancelled_half_open_probe_returns_its_permit(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1)
        await trip(breaker, 1)
        await clock.advance(1)
        task = asyncio.create_task(breaker.call(asyncio.sleep, 100))
        await asyncio.sleep(0)
        assert breaker.snapshot().half_open_in_flight == 1
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        snap = breaker.snapshot()
        assert snap.state is CircuitState.HALF_OPEN
        assert snap.half_open_in_flight == 0
        assert snap.failures == 1
        assert await breaker.call(ok) == "ok"
        assert st(breaker) is CircuitState.CLOSED


async def test_cancellation_is_neutral_when_closed() -> None:
    breaker = CircuitBreaker(failure_threshold=1)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    for _ in range(5):
        with pytest.raises(asyncio.CancelledError):
            await breaker.call(cancelled)
    snap = breaker.snapshot()
    assert snap.state is CircuitState.CLOSED
    assert (snap.failures, snap.successes, snap.ignored) == (0, 0, 0)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_base_exceptions_are_neutral_even_when_recorded(exc: type[BaseException]) -> None:
    breaker = CircuitBreaker(failure_threshold=1, record=BaseException)

    async def raises() -> None:
        raise exc

    with pytest.raises(exc):
        await breaker.call(raises)
    assert st(breaker) is CircuitState.CLOSED
    assert breaker.snapshot().failures == 0


async def test_fifty_concurrent_failures_make_one_open_event(clock_start: float) -> None:
    events: list[GuardEvent] = []
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(failure_threshold=5)
        breaker.add_listener(events.append)

        async def slow_fail(i: int) -> None:
            await asyncio.sleep(1 + i % 3)
            raise Boom

        results = await asyncio.gather(
            *(breaker.call(slow_fail, i) for i in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, Boom) for r in results)
        assert changes(events) == [(CircuitState.CLOSED, CircuitState.OPEN, "failures")]
        assert breaker.snapshot().failures == 50
        assert breaker.snapshot().generation == 1


async def test_late_failure_of_old_generation_never_extends_open(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10)

        async def late_fail() -> None:
            await asyncio.sleep(8)
            raise Boom

        late = asyncio.create_task(breaker.call(late_fail))
        await asyncio.sleep(0)
        await trip(breaker, 1)  # opens at t=0 until t=10
        with pytest.raises(Boom):
            await late  # finishes at t=8 (stale)
        assert breaker.snapshot().retry_after == pytest.approx(2)
        await clock.advance(2)
        assert st(breaker) is CircuitState.HALF_OPEN


async def test_success_admitted_closed_never_closes_half_open(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1)

        async def late_ok() -> str:
            await asyncio.sleep(5)
            return "late"

        late = asyncio.create_task(breaker.call(late_ok))
        await asyncio.sleep(0)
        await trip(breaker, 1)
        await clock.advance(2)
        assert st(breaker) is CircuitState.HALF_OPEN
        assert await late == "late"
        assert st(breaker) is CircuitState.HALF_OPEN
        assert breaker.snapshot().successes == 1


async def test_timeout_inside_breaker_counts_as_failure(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(failure_threshold=2)
        timeout = Timeout(1)
        for _ in range(2):
            with pytest.raises(GuardTimeout):
                await breaker.call(timeout.call, asyncio.sleep, 10)
        assert st(breaker) is CircuitState.OPEN


async def test_timeout_outside_breaker_is_neutral(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(failure_threshold=1)
        with pytest.raises(GuardTimeout):
            await Timeout(1).call(breaker.call, asyncio.sleep, 10)
        assert st(breaker) is CircuitState.CLOSED
        assert breaker.snapshot().failures == 0


async def test_inner_guard_errors_are_failures_by_default() -> None:
    breaker = CircuitBreaker(failure_threshold=2)

    async def full() -> None:
        raise BulkheadFull(name="pool")

    for _ in range(2):
        with pytest.raises(BulkheadFull):
            await breaker.call(full)
    assert st(breaker) is CircuitState.OPEN


async def test_record_ignore_and_other_errors() -> None:
    breaker = CircuitBreaker(failure_threshold=1, record=(Boom,), ignore=KeyError)

    async def raise_(exc: Exception) -> None:
        raise exc

    with pytest.raises(KeyError):
        await breaker.call(raise_, KeyError("k"))
    with pytest.raises(ValueError, match="v"):
        await breaker.call(raise_, ValueError("v"))
    snap = breaker.snapshot()
    assert (snap.ignored, snap.successes, snap.failures) == (1, 1, 0)
    assert st(breaker) is CircuitState.CLOSED
    with pytest.raises(Boom):
        await breaker.call(raise_, Boom())
    assert st(breaker) is CircuitState.OPEN


async def test_predicate_specs() -> None:
    breaker = CircuitBreaker(
        failure_threshold=1,
        record=lambda e: "bad" in str(e),
        ignore=[LookupError],
    )

    async def raise_(exc: Exception) -> None:
        raise exc

    with pytest.raises(ValueError, match="fine"):
        await breaker.call(raise_, ValueError("fine"))
    with pytest.raises(IndexError):
        await breaker.call(raise_, IndexError("bad but ignored"))
    assert st(breaker) is CircuitState.CLOSED
    with pytest.raises(ValueError, match="bad"):
        await breaker.call(raise_, ValueError("bad"))
    assert st(breaker) is CircuitState.OPEN


async def test_false_results_never_trip_by_default() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    assert await breaker.call(ok, False) is False
    assert await breaker.call(ok, (False, {})) == (False, {})
    assert st(breaker) is CircuitState.CLOSED


async def test_failure_on_result() -> None:
    breaker = CircuitBreaker(failure_threshold=2, failure_on_result=lambda r: r is False)
    assert await breaker.call(ok, False) is False
    assert await breaker.call(ok, True) is True
    assert await breaker.call(ok, False) is False
    assert st(breaker) is CircuitState.CLOSED
    assert await breaker.call(ok, False) is False
    assert st(breaker) is CircuitState.OPEN


async def test_slow_calls_consecutive(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(failure_threshold=2, slow_call_duration=1.0)
        assert await breaker.call(asyncio.sleep, 2, "a") == "a"
        assert st(breaker) is CircuitState.CLOSED
        assert await breaker.call(asyncio.sleep, 0.5, "b") == "b"
        assert await breaker.call(asyncio.sleep, 1.0, "c") == "c"
        assert await breaker.call(asyncio.sleep, 3, "d") == "d"
        assert st(breaker) is CircuitState.OPEN
        snap = breaker.snapshot()
        assert snap.last_reason == "slow"
        assert snap.slow == 3
        assert snap.successes == 4


async def test_slow_probe_reopens(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, slow_call_duration=1)
        await trip(breaker, 1)
        await clock.advance(1)
        assert await breaker.call(asyncio.sleep, 2, "slow") == "slow"
        assert st(breaker) is CircuitState.OPEN
        assert breaker.snapshot().last_reason == "slow"


async def test_count_window_trips_on_rate_after_min_calls() -> None:
    breaker = CircuitBreaker(policy=CountWindow(size=10, min_calls=4, failure_rate=0.5))
    await trip(breaker, 3)
    assert st(breaker) is CircuitState.CLOSED  # only 3 calls in the window
    await breaker.call(ok)
    assert st(breaker) is CircuitState.OPEN  # 3/4 >= 0.5
    assert breaker.snapshot().last_reason == "failure_rate"


async def test_count_window_forgets_old_calls() -> None:
    breaker = CircuitBreaker(policy=CountWindow(size=4, min_calls=4, failure_rate=0.75))
    await trip(breaker, 2)
    for _ in range(4):
        await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count, snap.failure_rate) == (4, 0, 0.0)
    await trip(breaker, 2)
    assert st(breaker) is CircuitState.CLOSED  # 2/4 < 0.75
    await trip(breaker, 1)
    assert st(breaker) is CircuitState.OPEN  # 3/4


async def test_count_window_slow_rate(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(
            policy=CountWindow(size=10, min_calls=4, failure_rate=1.0),
            slow_call_duration=1,
            slow_call_rate=0.5,
        )
        await breaker.call(asyncio.sleep, 2)
        await breaker.call(asyncio.sleep, 0)
        await breaker.call(asyncio.sleep, 0)
        assert st(breaker) is CircuitState.CLOSED
        await breaker.call(asyncio.sleep, 5)
        assert st(breaker) is CircuitState.OPEN
        assert breaker.snapshot().last_reason == "slow"


async def test_time_window_expires_calls(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(policy=TimeWindow(seconds=60, min_calls=3, failure_rate=0.5))
        await trip(breaker, 2)
        await clock.advance(61)
        assert breaker.snapshot().window_calls == 0
        await breaker.call(ok)
        await breaker.call(ok)
        await trip(breaker, 1)
        assert st(breaker) is CircuitState.CLOSED  # 1/3
        await trip(breaker, 1)
        assert st(breaker) is CircuitState.OPEN  # 2/4


async def test_half_open_timeout_reopens_with_new_generation(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, half_open_timeout=5)
        await trip(breaker, 1)
        await clock.advance(1)
        hung = asyncio.create_task(breaker.call(asyncio.sleep, 100, "late"))
        await asyncio.sleep(0)
        gen = breaker.generation
        await clock.advance(5)
        assert st(breaker) is CircuitState.OPEN
        assert breaker.generation == gen + 1
        assert breaker.snapshot().last_reason == "half_open_timeout"
        await clock.advance(1)
        assert st(breaker) is CircuitState.HALF_OPEN
        assert await breaker.call(ok) == "ok"  # the hung probe's permit is not counted
        assert st(breaker) is CircuitState.CLOSED
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert breaker.snapshot().half_open_in_flight == 0


async def test_open_backoff_lengthens_reopens_and_restarts_on_close(clock_start: float) -> None:
    from headrace_core.backoff import exponential

    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(
            failure_threshold=1,
            recovery_timeout=1,
            open_backoff=exponential(base=2, factor=2, max=100),
        )
        await trip(breaker, 1)
        assert breaker.snapshot().retry_after == 1
        await clock.advance(1)
        await trip(breaker, 1)
        assert breaker.snapshot().retry_after == 2
        await clock.advance(2)
        await trip(breaker, 1)
        assert breaker.snapshot().retry_after == 4
        await clock.advance(4)
        await breaker.call(ok)
        assert st(breaker) is CircuitState.CLOSED
        await trip(breaker, 1)
        await clock.advance(1)
        await trip(breaker, 1)
        assert breaker.snapshot().retry_after == 2


async def test_manual_controls(clock_start: float) -> None:
    events: list[GuardEvent] = []
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1)
        breaker.add_listener(events.append)
        await breaker.force_open()
        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(ok)
        assert math.isinf(info.value.retry_after)
        await clock.advance(3600)
        assert st(breaker) is CircuitState.OPEN
        snap = breaker.snapshot()
        assert snap.forced_open
        assert math.isinf(snap.retry_after)
        await breaker.reset()
        assert st(breaker) is CircuitState.CLOSED
        assert not breaker.snapshot().forced_open
        assert breaker.snapshot().rejected == 0
        await breaker.disable()
        await trip(breaker, 10)
        assert st(breaker) is CircuitState.CLOSED
        assert breaker.snapshot().disabled
        assert breaker.snapshot().failures == 10
        await breaker.enable()
        await trip(breaker, 1)
        assert st(breaker) is CircuitState.OPEN
        await breaker.disable()
        assert st(breaker) is CircuitState.CLOSED
        assert await breaker.call(ok) == "ok"
    assert [c[2] for c in changes(events)] == ["forced", "reset", "failures", "disabled"]


async def test_listener_that_raises_or_resets_does_not_change_outcome(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(failure_threshold=1)

        def raising(event: GuardEvent) -> None:
            raise RuntimeError("listener bug")

        async def resetting(event: GuardEvent) -> None:
            if event.kind == "state_change" and event.new_state is CircuitState.OPEN:
                await breaker.reset()

        breaker.add_listener(raising)
        breaker.add_listener(resetting)
        with pytest.raises(Boom):
            await breaker.call(fail)
        await settle(breaker)
        assert st(breaker) is CircuitState.CLOSED
        assert await breaker.call(ok) == "ok"


async def test_sync_listener_returning_reset_coroutine() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    breaker.add_listener(lambda e: breaker.reset())
    with pytest.raises(Boom):
        await breaker.call(fail)
    await breaker.aclose()
    assert st(breaker) is CircuitState.CLOSED


async def test_async_with(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        breaker = CircuitBreaker(failure_threshold=2)

        async def body() -> None:
            async with breaker as entered:
                assert entered is breaker
                raise Boom

        for _ in range(2):
            with pytest.raises(Boom):
                await body()
        with pytest.raises(CircuitOpenError):
            async with breaker:
                pass
        await breaker.reset()
        async with breaker:
            pass
        assert breaker.snapshot().successes == 1


async def test_decorator_and_get_stats_alias() -> None:
    breaker = CircuitBreaker(failure_threshold=1)

    @breaker
    async def work(x: int) -> int:
        return x * 2

    assert await work(4) == 8
    assert breaker.get_stats() == breaker.snapshot()


def test_state_readable_outside_a_loop() -> None:
    breaker = CircuitBreaker()
    assert st(breaker) is CircuitState.CLOSED
    assert breaker.snapshot().state is CircuitState.CLOSED


def test_breaker_works_across_asyncio_run_calls() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    for _ in range(2):
        with pytest.raises(Boom):
            asyncio.run(breaker.call(fail))
    assert st(breaker) is CircuitState.OPEN


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"recovery_timeout": 0}, "recovery_timeout"),
        ({"recovery_timeout": math.inf}, "recovery_timeout"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"half_open_timeout": 0}, "half_open_timeout"),
        ({"slow_call_duration": -1}, "slow_call_duration"),
        ({"slow_call_rate": 0}, "slow_call_rate"),
        ({"slow_call_rate": 1.5}, "slow_call_rate"),
        ({"record": 3}, "record"),
        ({"ignore": [1]}, "ignore"),
        ({"failure_on_result": 3}, "failure_on_result"),
        ({"policy": "x"}, "policy"),
        ({"policy": Consecutive(3), "failure_threshold": 3}, "failure_threshold"),
        ({"open_backoff": 3}, "open_backoff"),
        ({"clock": 3}, "clock"),
    ],
)
def test_validation(kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        CircuitBreaker(**kwargs)


@pytest.mark.parametrize(
    ("factory", "arg"),
    [
        (lambda: Consecutive(0), "threshold"),
        (lambda: CountWindow(size=0), "size"),
        (lambda: CountWindow(min_calls=0), "min_calls"),
        (lambda: CountWindow(size=5, min_calls=50), r"min_calls=50: must be <= size \(5\)"),
        (lambda: CountWindow(failure_rate=0), "failure_rate"),
        (lambda: TimeWindow(seconds=0), "seconds"),
        (lambda: TimeWindow(failure_rate=1.1), "failure_rate"),
        (lambda: TimeWindow(min_calls=0), "min_calls"),
    ],
)
def test_policy_validation(factory: Any, arg: str) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        factory()


async def test_injected_clock_is_used_for_measurement() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10, clock=lambda: now[0])
    await trip(breaker, 1)
    now[0] = 9.0
    assert breaker.snapshot().retry_after == 1.0
    now[0] = 10.0
    assert st(breaker) is CircuitState.HALF_OPEN


async def test_rejected_event() -> None:
    events: list[GuardEvent] = []
    breaker = CircuitBreaker("x", failure_threshold=1)
    breaker.add_listener(events.append)
    await trip(breaker, 1)
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    assert [e.kind for e in events] == ["state_change", "rejected"]
    assert isinstance(events[1].error, CircuitOpenError)


async def test_fixed_open_backoff_schedule(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=3, open_backoff=fixed(7))
        await trip(breaker, 1)
        await clock.advance(3)
        await trip(breaker, 1)
        assert breaker.snapshot().retry_after == 7


async def test_decorated_function_trips_and_is_rejected() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    calls = 0

    @breaker
    async def flaky(fail: bool) -> str:
        nonlocal calls
        calls += 1
        if fail:
            raise Boom
        return "ok"

    assert await flaky(False) == "ok"
    with pytest.raises(Boom):
        await flaky(True)
    assert await flaky(False) == "ok"  # resets the streak
    for _ in range(2):
        with pytest.raises(Boom):
            await flaky(True)
    with pytest.raises(CircuitOpenError):
        await flaky(False)
    assert calls == 5
    assert breaker.snapshot().successes == 2

    judged = CircuitBreaker(failure_threshold=1, failure_on_result=lambda r: r == "bad")

    @judged
    async def answer(value: str) -> str:
        return value

    assert await answer("bad") == "bad"
    assert st(judged) is CircuitState.OPEN


async def test_async_with_cancelled_probe_returns_permit(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1)
        await trip(breaker, 1)
        await clock.advance(1)

        async def probe() -> None:
            async with breaker:
                await asyncio.sleep(100)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0)
        assert breaker.snapshot().half_open_in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.snapshot().half_open_in_flight == 0
        assert st(breaker) is CircuitState.HALF_OPEN
        assert await breaker.call(ok) == "ok"
        assert st(breaker) is CircuitState.CLOSED


@pytest.mark.parametrize("seed", [3, 4])
async def test_stress_half_open_permits_never_leak(seed: int, clock_start: float) -> None:
    import random

    rng = random.Random(seed)
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(
            failure_threshold=3, recovery_timeout=2, half_open_max_calls=3, half_open_timeout=20
        )

        async def service() -> str:
            await asyncio.sleep(rng.uniform(0, 3))
            if rng.random() < 0.4:
                raise Boom
            return "ok"

        async def caller() -> None:
            for _ in range(20):
                try:
                    async with asyncio.timeout(rng.uniform(0.5, 4)):
                        await breaker.call(service)
                except (Boom, CircuitOpenError, TimeoutError):
                    pass
                await asyncio.sleep(rng.uniform(0, 1))
                snap = breaker.snapshot()
                assert 0 <= snap.half_open_in_flight <= 3

        tasks = [asyncio.create_task(caller()) for _ in range(40)]
        for _ in range(50):
            await clock.advance(1)
            rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    snap = breaker.snapshot()
    assert snap.half_open_in_flight == 0
    if breaker._state is CircuitState.HALF_OPEN:
        assert breaker._ho_in_flight == 0  # every caller is done: no permit is held
    assert snap.generation >= 1


# -- a raising predicate, a custom schedule that fails, a function that is not async ----------


class PredicateBug(Exception):
    pass


def arming_predicate(which: str) -> tuple[dict[str, Any], list[bool]]:
    """A ``record``/``ignore``/``failure_on_result`` predicate that raises while armed."""
    armed = [False]
    calm = which == "record"  # unarmed: record counts every error, the others nothing

    def predicate(_: object) -> bool:
        if armed[0]:
            raise PredicateBug(which)
        return calm

    return {which: predicate}, armed


@pytest.mark.parametrize(
    ("which", "way"),
    [
        ("record", "call"),
        ("ignore", "call"),
        ("failure_on_result", "call"),
        ("record", "async_with"),
        ("ignore", "async_with"),
    ],
)
async def test_raising_predicate_in_half_open_returns_the_permit(
    which: str, way: str, clock_start: float
) -> None:
    kwargs, armed = arming_predicate(which)
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, **kwargs)
        await trip(breaker, 1)
        await clock.advance(1)
        assert st(breaker) is CircuitState.HALF_OPEN
        armed[0] = True

        async def probe() -> None:
            if way == "call":
                await breaker.call(ok if which == "failure_on_result" else fail)
            else:
                async with breaker:
                    raise Boom

        with pytest.raises(PredicateBug):
            await probe()
        snap = breaker.snapshot()
        # Counted as a failure: the probe's permit is back and the breaker re-opened.
        assert snap.half_open_in_flight == 0
        assert (snap.state, snap.last_reason) == (CircuitState.OPEN, "half_open_failure")
        armed[0] = False
        await clock.advance(1)
        assert await breaker.call(ok) == "ok"
        assert st(breaker) is CircuitState.CLOSED


@pytest.mark.parametrize("which", ["record", "ignore", "failure_on_result"])
async def test_raising_predicate_counts_as_a_failure_when_closed(which: str) -> None:
    kwargs, armed = arming_predicate(which)
    breaker = CircuitBreaker(failure_threshold=2, **kwargs)
    armed[0] = True
    for _ in range(2):
        with pytest.raises(PredicateBug):
            await breaker.call(ok if which == "failure_on_result" else fail)
    snap = breaker.snapshot()
    assert (snap.state, snap.failures) == (CircuitState.OPEN, 2)


class Schedule:
    """A custom open_backoff: the given delays, then whatever ``tail`` does."""

    def __init__(self, *delays: object, tail: str = "end") -> None:
        self.items = delays
        self.tail = tail

    def delays(self, rng: object = None) -> Any:
        yield from self.items
        if self.tail == "raise":
            raise PredicateBug("schedule")


@pytest.mark.parametrize(
    ("schedule", "error"),
    [
        (Schedule(2.0), "ran out"),
        (Schedule(2.0, math.nan), "nan"),
        (Schedule(2.0, "soon"), "soon"),
        (Schedule(2.0, -1.0), "-1.0"),
        (Schedule(2.0, tail="raise"), None),
    ],
    ids=["ran-out", "nan", "string", "negative", "raises"],
)
async def test_failing_open_backoff_reopens_for_recovery_timeout_and_raises(
    schedule: Schedule, error: str | None, clock_start: float
) -> None:
    from headrace_core import BackoffError

    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, open_backoff=schedule)
        await trip(breaker, 1)
        await clock.advance(1)
        await trip(breaker, 1)  # first re-open: the schedule's 2.0
        assert breaker.snapshot().retry_after == pytest.approx(2)
        await clock.advance(2)
        if error is None:
            with pytest.raises(PredicateBug):
                await breaker.call(fail)
        else:
            with pytest.raises(BackoffError, match=error) as info:
                await breaker.call(fail)
            assert isinstance(info.value.__cause__, Boom)  # the probe's own error, chained
        snap = breaker.snapshot()
        assert (snap.state, snap.half_open_in_flight) == (CircuitState.OPEN, 0)
        assert snap.retry_after == pytest.approx(1)  # recovery_timeout instead
        await clock.advance(1)
        assert await breaker.call(ok) == "ok"
        assert st(breaker) is CircuitState.CLOSED


@pytest.mark.parametrize("shape", ["fast", "windowed", "timed"])
async def test_sync_function_is_named_not_async(shape: str) -> None:
    def compute() -> int:
        return 42

    breaker = CircuitBreaker(
        policy=CountWindow(size=10, min_calls=10) if shape == "windowed" else None,
        slow_call_duration=1.0 if shape == "timed" else None,
    )
    with pytest.raises(TypeError, match="compute is not an async function"):
        await breaker.call(compute)  # type: ignore[arg-type]
    # A misuse, not a failure of the service: nothing is counted, the breaker is closed.
    snap = breaker.snapshot()
    assert (snap.state, snap.failures, snap.successes) == (CircuitState.CLOSED, 0, 0)


async def test_async_function_raising_type_error_is_not_called_sync() -> None:
    async def broken() -> None:
        raise TypeError("inside")

    breaker = CircuitBreaker(failure_threshold=5)
    with pytest.raises(TypeError, match=r"^inside$"):
        await breaker.call(broken)
    assert breaker.snapshot().failures == 1


async def test_bound_decisions_do_not_flip_with_the_clock_magnitude(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(
            failure_threshold=1,
            recovery_timeout=0.3,
            half_open_timeout=0.7,
            slow_call_duration=0.3,
        )
        await trip(breaker, 1)
        await clock.advance(0.1)
        await clock.advance(0.2)  # exactly recovery_timeout, summed from parts
        assert st(breaker) is CircuitState.HALF_OPEN
        await clock.advance(0.3)
        await clock.advance(0.4)  # exactly half_open_timeout
        assert breaker.snapshot().last_reason == "half_open_timeout"
        await clock.advance(0.3)

        async def takes(seconds: float) -> str:
            await asyncio.sleep(0.1)
            await asyncio.sleep(seconds - 0.1)
            return "done"

        assert await breaker.call(takes, 0.3) == "done"  # exactly slow_call_duration: slow
        snap = breaker.snapshot()
        assert (snap.slow, snap.state, snap.last_reason) == (1, CircuitState.OPEN, "slow")


@pytest.mark.parametrize("reading", ["raise", math.nan, "noon"])
async def test_a_clock_that_fails_at_the_end_of_a_probe_returns_the_permit(
    reading: object, clock_start: float
) -> None:
    class ClockBug(Exception):
        pass

    armed = [False]
    with VirtualClock(start=clock_start):
        loop = asyncio.get_running_loop()

        def clock() -> Any:
            if armed[0]:
                armed[0] = False
                if reading == "raise":
                    raise ClockBug
                return reading
            return loop.time()

        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)

        async def probe() -> str:
            armed[0] = True  # the reading after the call misbehaves
            return "ok"

        await trip(breaker, 1)
        await asyncio.sleep(1)
        with pytest.raises((ClockBug, ValueError, TypeError)):
            await breaker.call(probe)
        # The probe succeeded (only its end time is unknown): its permit is back and it
        # counts, so the breaker closes instead of wedging in HALF_OPEN.
        snap = breaker.snapshot()
        assert (snap.state, snap.half_open_in_flight) == (CircuitState.CLOSED, 0)
        assert await breaker.call(ok) == "ok"
