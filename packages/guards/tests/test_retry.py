from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from headrace_core.backoff import exponential, fixed
from headrace_core.testing import VirtualClock
from headrace_guards import (
    BulkheadFull,
    CircuitOpenError,
    ConfigurationError,
    GuardEvent,
    RateLimited,
    Retry,
)


class Boom(Exception):
    pass


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = Boom) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error

    async def __call__(self, value: str = "ok") -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return value


async def test_success_first_time() -> None:
    retry = Retry(3)
    flaky = Flaky(0)
    assert await retry.call(flaky, "v") == "v"
    snap = retry.snapshot()
    assert (snap.calls, snap.attempts, snap.retries, snap.exhausted) == (1, 1, 0, 0)


async def test_retries_until_success_with_backoff_sleeps(clock_start: float) -> None:
    events: list[GuardEvent] = []
    with VirtualClock(start=clock_start) as clock:
        retry = Retry(5, backoff=exponential(base=1, factor=2, max=100), name="r")
        retry.add_listener(events.append)
        flaky = Flaky(3)
        start = clock.now()
        assert await retry.call(flaky) == "ok"
        assert clock.now() - start == 1 + 2 + 4
    assert flaky.calls == 4
    assert [(e.kind, e.attempt, e.delay) for e in events] == [
        ("retry", 1, 1.0),
        ("retry", 2, 2.0),
        ("retry", 3, 4.0),
    ]
    assert all(isinstance(e.error, Boom) for e in events)
    assert events[0].source == "r"
    assert retry.snapshot().retries == 3


async def test_exhausted_reraises_same_object(clock_start: float) -> None:
    errors: list[Exception] = []

    async def fails() -> None:
        error = Boom(len(errors))
        errors.append(error)
        raise error

    with VirtualClock(start=clock_start):
        retry = Retry(3, backoff=fixed(1))
        with pytest.raises(Boom) as info:
            await retry.call(fails)
    assert info.value is errors[-1]
    assert len(errors) == 3
    assert info.value.__context__ is None
    assert retry.snapshot().exhausted == 1


async def test_not_retried_error_propagates_at_once() -> None:
    retry = Retry(5, retry_on=KeyError)
    flaky = Flaky(3, error=ValueError)
    with pytest.raises(ValueError, match="failure 1"):
        await retry.call(flaky)
    assert flaky.calls == 1


async def test_retry_on_predicate_and_list(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        retry = Retry(5, backoff=fixed(0), retry_on=lambda e: "1" in str(e))
        flaky = Flaky(2)
        with pytest.raises(Boom, match="failure 2"):
            await retry.call(flaky)
        retry2 = Retry(5, backoff=fixed(0), retry_on=[KeyError, Boom])
        assert await retry2.call(Flaky(2)) == "ok"


async def test_cancel_like_is_never_retried() -> None:
    calls = 0

    async def cancels() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Retry(5, retry_on=BaseException).call(cancels)
    assert calls == 1


async def test_cancel_during_backoff_sleep_makes_no_further_attempt(clock_start: float) -> None:
    with VirtualClock(start=clock_start):
        flaky = Flaky(10)
        task = asyncio.create_task(Retry(5, backoff=fixed(10)).call(flaky))
        await asyncio.sleep(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(100)
        assert flaky.calls == 1


async def test_retry_on_result_returns_last_result(clock_start: float) -> None:
    results = iter([None, None, None, None])

    async def poll() -> int | None:
        return next(results)

    with VirtualClock(start=clock_start):
        retry = Retry(3, backoff=fixed(1), retry_on_result=lambda r: r is None)
        assert await retry.call(poll) is None
        assert retry.snapshot().attempts == 3
        assert retry.snapshot().exhausted == 1
        values = iter([None, 7])

        async def poll2() -> int | None:
            return next(values)

        assert await retry.call(poll2) == 7


async def test_deadline_stops_retries_at_once(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        retry = Retry(None, deadline=10, backoff=fixed(4))
        flaky = Flaky(100)
        start = clock.now()
        with pytest.raises(Boom):
            await retry.call(flaky)
        # attempts at 0, 4, 8; the sleep to 12 would pass the deadline
        assert flaky.calls == 3
        assert clock.now() - start == 8


async def test_deadline_does_not_cancel_a_running_attempt(clock_start: float) -> None:
    async def slow() -> str:
        await asyncio.sleep(50)
        return "done"

    with VirtualClock(start=clock_start):
        assert await Retry(None, deadline=1).call(slow) == "done"


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError(retry_after=30),
        RateLimited(retry_after=30),
    ],
)
async def test_retry_after_hint_is_respected(error: Exception, clock_start: float) -> None:
    calls = 0

    async def once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return "ok"

    with VirtualClock(start=clock_start) as clock:
        start = clock.now()
        assert await Retry(3, backoff=fixed(1)).call(once) == "ok"
        assert clock.now() - start == 30


async def test_user_error_retry_after_and_max_delay(clock_start: float) -> None:
    class TooMany(Exception):
        retry_after = 100

    events: list[GuardEvent] = []
    calls = 0

    async def once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TooMany
        return "ok"

    with VirtualClock(start=clock_start) as clock:
        retry = Retry(3, backoff=fixed(1), max_delay=5)
        retry.add_listener(events.append)
        start = clock.now()
        assert await retry.call(once) == "ok"
        assert clock.now() - start == 5
    assert events[0].delay == 5


@pytest.mark.parametrize("hint", [10**400, math.inf], ids=["10**400", "inf"])
async def test_a_retry_after_past_any_float_is_taken_as_inf(
    hint: object, clock_start: float
) -> None:
    class TooMany(Exception):
        retry_after = hint

    calls = 0

    async def once() -> str:
        nonlocal calls
        calls += 1
        raise TooMany

    with VirtualClock(start=clock_start) as clock:
        start = clock.now()
        with pytest.raises(TooMany):  # no OverflowError: the hint is as long as inf's
            await Retry(3, backoff=fixed(1), max_delay=5).call(once)
        assert calls == 1  # a wait that long is no retry
        assert clock.now() == start


async def test_retry_after_ignored_when_asked(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        flaky = Flaky(1, error=lambda msg: RateLimited(retry_after=50))  # type: ignore[arg-type]
        start = clock.now()
        assert await Retry(3, backoff=fixed(1), respect_retry_after=False).call(flaky) == "ok"
        assert clock.now() - start == 1


async def test_infinite_retry_after_reraises_at_once(clock_start: float) -> None:
    error = CircuitOpenError(retry_after=math.inf)
    calls = 0

    async def forced() -> None:
        nonlocal calls
        calls += 1
        raise error

    with VirtualClock(start=clock_start) as clock:
        start = clock.now()
        with pytest.raises(CircuitOpenError) as info:
            await Retry(5, backoff=fixed(1)).call(forced)
        assert info.value is error
        assert calls == 1
        assert clock.now() == start


async def test_retry_after_past_deadline_reraises_at_once(clock_start: float) -> None:
    calls = 0

    async def limited() -> None:
        nonlocal calls
        calls += 1
        raise RateLimited(retry_after=20)

    with VirtualClock(start=clock_start) as clock:
        start = clock.now()
        with pytest.raises(RateLimited):
            await Retry(5, deadline=10, backoff=fixed(1)).call(limited)
        assert calls == 1
        assert clock.now() == start


async def test_none_retry_after_is_not_a_hint(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        flaky = Flaky(1, error=lambda msg: BulkheadFull())  # type: ignore[arg-type]
        start = clock.now()
        assert await Retry(3, backoff=fixed(2)).call(flaky) == "ok"
        assert clock.now() - start == 2


async def test_seeded_rng_makes_jitter_repeatable(clock_start: float) -> None:
    async def run(seed: int) -> list[float]:
        delays: list[float] = []
        retry = Retry(5, rng=random.Random(seed))
        retry.add_listener(lambda e: delays.append(e.delay or 0.0))
        with pytest.raises(Boom):
            await retry.call(Flaky(10))
        return delays

    with VirtualClock(start=clock_start):
        first = await run(7)
        second = await run(7)
        other = await run(8)
    assert first == second
    assert first != other
    assert len(first) == 4
    assert all(0 <= d <= 10 for d in first)


async def test_decorator() -> None:
    retry = Retry(3, backoff=fixed(0))
    flaky = Flaky(2)

    @retry
    async def call(x: str) -> str:
        return await flaky(x)

    assert await call("x") == "x"
    assert call.__name__ == "call"
    with pytest.raises(AttributeError):
        retry.__aenter__  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"attempts": None}, "attempts"),
        ({"deadline": 0}, "deadline"),
        ({"backoff": 1}, "backoff"),
        ({"retry_on": "x"}, "retry_on"),
        ({"retry_on": int}, "retry_on=<class 'int'>"),  # a class, but of no exception
        ({"retry_on_result": 1}, "retry_on_result"),
        ({"max_delay": -1}, "max_delay"),
        ({"rng": 3}, "rng"),
        ({"clock": 3}, "clock"),
    ],
)
def test_validation(kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        Retry(**kwargs)


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
async def test_retry_on_base_exception_never_retries_an_interrupt(
    error: type[BaseException],
) -> None:
    flaky = Flaky(5, error=error)  # type: ignore[arg-type]
    retry = Retry(5, retry_on=BaseException, backoff=fixed(0))
    with pytest.raises(error):
        await retry.call(flaky)
    assert flaky.calls == 1
    retry = Retry(5, retry_on=lambda exc: True, backoff=fixed(0))
    flaky = Flaky(5, error=error)  # type: ignore[arg-type]
    with pytest.raises(error):
        await retry.call(flaky)
    assert flaky.calls == 1


async def test_retry_on_base_exception_never_retries_the_tasks_own_cancel() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    with VirtualClock():
        retry = Retry(5, retry_on=BaseException, backoff=fixed(0))
        task = asyncio.create_task(retry.call(slow))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == 1
    assert retry.snapshot().retries == 0


class CustomSchedule:
    def __init__(self, *delays: object) -> None:
        self.items = delays

    def delays(self, rng: random.Random | None = None) -> Any:
        return iter(self.items)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (CustomSchedule(0.1), "ran out"),
        (CustomSchedule(0.1, math.nan), "nan"),
        (CustomSchedule(0.1, None), "None"),
        (CustomSchedule(0.1, -2), "-2"),
    ],
    ids=["ran-out", "nan", "none", "negative"],
)
async def test_custom_backoff_that_fails_raises_backoff_error(
    schedule: CustomSchedule, message: str, clock_start: float
) -> None:
    from headrace_core import BackoffError

    flaky = Flaky(10)
    with VirtualClock(start=clock_start):
        retry = Retry(5, backoff=schedule)
        with pytest.raises(BackoffError, match=message) as info:
            await retry.call(flaky)
    assert "Retry(backoff=...)" in str(info.value)
    assert isinstance(info.value.__cause__, Boom)  # the last attempt's error, chained
    assert flaky.calls == 2


async def test_backoff_delays_that_are_not_iterable_raise_backoff_error() -> None:
    from headrace_core import BackoffError

    class NotIterable:
        def delays(self, rng: random.Random | None = None) -> Any:
            return 42

    with pytest.raises(BackoffError, match="int"):
        await Retry(3, backoff=NotIterable()).call(Flaky(10))


async def test_a_sync_function_is_named_not_async_and_not_retried() -> None:
    calls = 0

    def compute() -> int:
        nonlocal calls
        calls += 1
        return 42

    retry = Retry(3, retry_on=Exception, backoff=fixed(0))
    with pytest.raises(TypeError, match="compute is not an async function"):
        await retry.call(compute)  # type: ignore[arg-type]
    assert calls == 1


async def test_a_retry_that_ends_exactly_at_the_deadline_is_made(clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        flaky = Flaky(10)
        retry = Retry(None, deadline=0.3, backoff=fixed(0.1))
        start = clock.now()
        with pytest.raises(Boom):
            await retry.call(flaky)
        # Attempts at 0, 0.1, 0.2 and 0.3: the last sleep ends on the deadline itself.
        assert flaky.calls == 4
        assert clock.now() - start == pytest.approx(0.3)
