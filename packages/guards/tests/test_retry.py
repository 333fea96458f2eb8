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


async def test_retries_until_success_with_backoff_sleeps() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
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


async def test_exhausted_reraises_same_object() -> None:
    errors: list[Exception] = []

    async def fails() -> None:
        error = Boom(len(errors))
        errors.append(error)
        raise error

    with VirtualClock():
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


async def test_retry_on_predicate_and_list() -> None:
    with VirtualClock():
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


async def test_cancel_during_backoff_sleep_makes_no_further_attempt() -> None:
    with VirtualClock():
        flaky = Flaky(10)
        task = asyncio.create_task(Retry(5, backoff=fixed(10)).call(flaky))
        await asyncio.sleep(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(100)
        assert flaky.calls == 1


async def test_retry_on_result_returns_last_result() -> None:
    results = iter([None, None, None, None])

    async def poll() -> int | None:
        return next(results)

    with VirtualClock():
        retry = Retry(3, backoff=fixed(1), retry_on_result=lambda r: r is None)
        assert await retry.call(poll) is None
        assert retry.snapshot().attempts == 3
        assert retry.snapshot().exhausted == 1
        values = iter([None, 7])

        async def poll2() -> int | None:
            return next(values)

        assert await retry.call(poll2) == 7


async def test_deadline_stops_retries_at_once() -> None:
    with VirtualClock() as clock:
        retry = Retry(None, deadline=10, backoff=fixed(4))
        flaky = Flaky(100)
        start = clock.now()
        with pytest.raises(Boom):
            await retry.call(flaky)
        # attempts at 0, 4, 8; the sleep to 12 would pass the deadline
        assert flaky.calls == 3
        assert clock.now() - start == 8


async def test_deadline_does_not_cancel_a_running_attempt() -> None:
    async def slow() -> str:
        await asyncio.sleep(50)
        return "done"

    with VirtualClock():
        assert await Retry(None, deadline=1).call(slow) == "done"


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError(retry_after=30),
        RateLimited(retry_after=30),
    ],
)
async def test_retry_after_hint_is_respected(error: Exception) -> None:
    calls = 0

    async def once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return "ok"

    with VirtualClock() as clock:
        start = clock.now()
        assert await Retry(3, backoff=fixed(1)).call(once) == "ok"
        assert clock.now() - start == 30


async def test_user_error_retry_after_and_max_delay() -> None:
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

    with VirtualClock() as clock:
        retry = Retry(3, backoff=fixed(1), max_delay=5)
        retry.add_listener(events.append)
        start = clock.now()
        assert await retry.call(once) == "ok"
        assert clock.now() - start == 5
    assert events[0].delay == 5


async def test_retry_after_ignored_when_asked() -> None:
    with VirtualClock() as clock:
        flaky = Flaky(1, error=lambda msg: RateLimited(retry_after=50))  # type: ignore[arg-type]
        start = clock.now()
        assert await Retry(3, backoff=fixed(1), respect_retry_after=False).call(flaky) == "ok"
        assert clock.now() - start == 1


async def test_infinite_retry_after_reraises_at_once() -> None:
    error = CircuitOpenError(retry_after=math.inf)
    calls = 0

    async def forced() -> None:
        nonlocal calls
        calls += 1
        raise error

    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(CircuitOpenError) as info:
            await Retry(5, backoff=fixed(1)).call(forced)
        assert info.value is error
        assert calls == 1
        assert clock.now() == start


async def test_retry_after_past_deadline_reraises_at_once() -> None:
    calls = 0

    async def limited() -> None:
        nonlocal calls
        calls += 1
        raise RateLimited(retry_after=20)

    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(RateLimited):
            await Retry(5, deadline=10, backoff=fixed(1)).call(limited)
        assert calls == 1
        assert clock.now() == start


async def test_none_retry_after_is_not_a_hint() -> None:
    with VirtualClock() as clock:
        flaky = Flaky(1, error=lambda msg: BulkheadFull())  # type: ignore[arg-type]
        start = clock.now()
        assert await Retry(3, backoff=fixed(2)).call(flaky) == "ok"
        assert clock.now() - start == 2


async def test_seeded_rng_makes_jitter_repeatable() -> None:
    async def run(seed: int) -> list[float]:
        delays: list[float] = []
        retry = Retry(5, rng=random.Random(seed))
        retry.add_listener(lambda e: delays.append(e.delay or 0.0))
        with pytest.raises(Boom):
            await retry.call(Flaky(10))
        return delays

    with VirtualClock():
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
        ({"retry_on_result": 1}, "retry_on_result"),
        ({"max_delay": -1}, "max_delay"),
        ({"rng": 3}, "rng"),
        ({"clock": 3}, "clock"),
    ],
)
def test_validation(kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        Retry(**kwargs)
