"""A pipeline runs ``[Retry] [CircuitBreaker] Timeout [Bulkhead]`` in one frame, unchanged.

``Fused`` transcribes those guards' ``call`` into one coroutine. The property here runs
random scenarios (concurrent calls whose attempts succeed, fail, time out, swallow the
cancellation, are not async, raise ``TypeError`` or ``CancelledError``; callers that
cancel; ``reset()`` and ``aclose()`` mid-flight) through a fused pipeline and through the
same guards nested as ``pipeline()`` nests them without fusing, on virtual time, and
requires the same trace: every outcome (the error's type, message, ``__cause__`` and
``__context__``), every event, every log record, and every guard's snapshot and lifecycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core import Closed
from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import (
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    Fallback,
    GuardEvent,
    GuardTimeout,
    Pipeline,
    RateLimiter,
    Retry,
    Timeout,
    _pipeline,
    pipeline,
)
from headrace_guards._circuit_state import MemoryState
from headrace_guards._common import NotAsyncError
from headrace_guards._common import events as events_log
from headrace_guards._fused import Fused, fuse

ACTS = ("ok", "boom", "slow", "late", "typeerror", "timeouterror", "cancelled", "ignored", "bad")


class Boom(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Shape:
    """Which guards a scenario's pipeline has, and how they are configured."""

    retry: bool
    retry_deadline: float | None
    retry_boom_only: bool  # retry_on=Boom: other errors are not retried
    breaker: bool
    bulkhead: bool
    retry_on_result: bool
    failure_on_result: bool
    on_timeout: bool
    limit: int
    max_wait: float | None
    fallback: bool  # a Fallback outside the fused run
    limiter: bool  # a RateLimiter between the breaker and the timeout (two runs)


@dataclasses.dataclass(frozen=True)
class Call:
    """One call: when it starts, what each attempt does, when its caller cancels."""

    start: float
    acts: tuple[str, ...]
    sync: bool
    cancel_after: float | None


@dataclasses.dataclass(frozen=True)
class Scenario:
    shape: Shape
    calls: tuple[Call, ...]
    reset_at: float | None
    close_at: float | None
    close_one: tuple[int, float] | None  # one guard (index, modulo) closed at a time


shapes = st.builds(
    Shape,
    retry=st.booleans(),
    retry_deadline=st.sampled_from([None, 1.2, 4.0]),
    retry_boom_only=st.booleans(),
    breaker=st.booleans(),
    bulkhead=st.booleans(),
    retry_on_result=st.booleans(),
    failure_on_result=st.booleans(),
    on_timeout=st.booleans(),
    limit=st.integers(1, 2),
    max_wait=st.sampled_from([None, 0.0, 0.5]),
    fallback=st.booleans(),
    limiter=st.booleans(),
).filter(lambda s: s.retry or s.breaker or s.bulkhead)
times = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0, 7.0])
calls = st.builds(
    Call,
    start=times,
    acts=st.lists(st.sampled_from(ACTS), min_size=1, max_size=3).map(tuple),
    sync=st.integers(0, 9).map(lambda n: n == 0),
    cancel_after=st.none() | times,
)
scenarios = st.builds(
    Scenario,
    shape=shapes,
    calls=st.lists(calls, min_size=1, max_size=6).map(tuple),
    reset_at=st.none() | times,
    close_at=st.none() | times,
    close_one=st.none() | st.tuples(st.integers(0, 5), times),
)


def build(shape: Shape) -> list[Any]:
    """The scenario's guards, outermost first (new instances every time)."""
    guards: list[Any] = []
    if shape.fallback:
        guards.append(Fallback(lambda exc, *args, **kwargs: f"fallback:{type(exc).__name__}"))
    if shape.retry:
        guards.append(
            Retry(
                3,
                deadline=shape.retry_deadline,
                retry_on=Boom if shape.retry_boom_only else Exception,
                backoff=fixed(0.5),
                retry_on_result=(lambda value: value == "bad") if shape.retry_on_result else None,
                name="retry",
            )
        )
    if shape.breaker:
        guards.append(
            CircuitBreaker(
                "breaker",
                failure_threshold=2,
                recovery_timeout=2,
                ignore=KeyError,
                failure_on_result=(lambda value: value == "bad")
                if shape.failure_on_result
                else None,
            )
        )
    if shape.limiter:
        guards.append(RateLimiter(4, burst=2, name="limiter"))
    guards.append(
        Timeout(1, on_timeout=(lambda *a, **k: "on_timeout") if shape.on_timeout else None)
    )
    if shape.bulkhead:
        guards.append(Bulkhead(shape.limit, max_wait=shape.max_wait))
    return guards


def unfused(guards: list[Any]) -> Pipeline:
    """The pipeline as it nests its guards with nothing fused (one ``call`` per guard)."""
    with mock.patch.object(_pipeline, "fuse", list):
        return pipeline(*guards)


def _error(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    return (type(exc).__name__, str(exc), type(exc.__cause__).__name__, exc.__suppress_context__)


def _outcome(result: Any) -> Any:
    if isinstance(result, BaseException):
        context = result.__context__
        return (
            "raised",
            _error(result),
            _error(context),
            _error(getattr(context, "__context__", None)),
        )
    return ("returned", result)


def _event(event: GuardEvent) -> tuple[Any, ...]:
    return (
        event.source,
        event.kind,
        event.at,
        event.old_state,
        event.new_state,
        event.reason,
        event.attempt,
        event.delay,
        _error(event.error),
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname, record.getMessage()))


async def _attempt(act: str) -> str:
    if act == "boom":
        raise Boom("down")
    if act == "slow":
        await asyncio.sleep(5)
    elif act == "late":
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "late"  # swallows the timeout's cancellation
    elif act == "typeerror":
        raise TypeError("a callee's own TypeError")
    elif act == "timeouterror":
        raise TimeoutError("a callee's own TimeoutError")
    elif act == "cancelled":
        raise asyncio.CancelledError
    elif act == "ignored":
        raise KeyError("ignored")
    elif act == "bad":
        return "bad"
    return "ok"


async def play(scenario: Scenario, fuse_it: bool) -> list[Any]:
    """Run ``scenario`` on virtual time; return its trace."""
    trace: list[Any] = []
    handler = _Records()
    logger = logging.getLogger("headrace.guards")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    events_log._budgets.clear()  # its rate limit starts afresh: both runs log alike
    try:
        with VirtualClock():
            guards = build(scenario.shape)
            stack = pipeline(*guards) if fuse_it else unfused(guards)
            if fuse_it and (scenario.shape.bulkhead or not scenario.shape.limiter):
                assert any(isinstance(run, Fused) for run in fuse(guards))
            events: list[GuardEvent] = []
            stack.add_listener(events.append)
            await _play(scenario, stack, guards, trace)
            trace.append([_event(e) for e in events])
            trace.append([g.snapshot() for g in guards])
            _all_given_back(guards)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    trace.append(handler.records)
    return trace


def _all_given_back(guards: list[Any]) -> None:
    """Nothing is left counted or held: lifecycles, slots, deadlines, fast calls."""
    for guard in guards:
        assert guard._life.running == 0
        if isinstance(guard, Bulkhead):
            assert (guard.snapshot().in_flight, guard.snapshot().waiting) == (0, 0)
        if isinstance(guard, Timeout) and guard._deadlines is not None:
            assert all(entry[1] is None for entry in guard._deadlines.entries)
        if isinstance(guard, CircuitBreaker):
            assert isinstance(guard._local, MemoryState)
            assert guard._local.fast_in_flight() == 0
            assert guard.snapshot().half_open_in_flight == 0


async def _play(scenario: Scenario, stack: Pipeline, guards: list[Any], trace: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(call: Call) -> Any:
        await asyncio.sleep(call.start)
        acts = iter(call.acts)

        async def work(n: int, *, key: str) -> str:
            return await _attempt(next(acts, "ok"))

        def sync(n: int, *, key: str) -> int:
            return 42

        fn: Callable[..., Awaitable[Any]] = sync if call.sync else work  # type: ignore[assignment]
        task = asyncio.create_task(stack.call(fn, 7, key="k"))
        if call.cancel_after is not None:
            loop.call_later(call.cancel_after, task.cancel)
        try:
            return await task
        except BaseException as exc:
            return exc

    async def close_one() -> None:
        if scenario.close_one is not None:
            index, at = scenario.close_one
            await asyncio.sleep(at)
            await guards[index % len(guards)].aclose()

    async def control() -> None:
        breaker = next((g for g in guards if isinstance(g, CircuitBreaker)), None)
        if scenario.reset_at is not None and breaker is not None:
            await asyncio.sleep(scenario.reset_at)
            await breaker.reset()
        if scenario.close_at is not None:
            await asyncio.sleep(scenario.close_at)
            await stack.aclose()
            with pytest.raises(Closed):
                await stack.call(_attempt, "ok")

    async with asyncio.timeout(600):  # virtual: a hang fails at once
        results = await asyncio.gather(*(one(c) for c in scenario.calls), control(), close_one())
    trace.append([_outcome(r) for r in results[:-2]])
    trace.append(loop.time() - start)


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios)
def test_a_fused_pipeline_runs_exactly_as_the_nested_guards(scenario: Scenario) -> None:
    nested = asyncio.run(play(scenario, fuse_it=False))
    fused = asyncio.run(play(scenario, fuse_it=True))
    assert fused == nested


@pytest.mark.parametrize("seed", range(6))
def test_stress_many_concurrent_calls_with_cancellations_then_aclose(seed: int) -> None:
    """200 concurrent calls, a third of them cancelled by their callers, then aclose()."""
    rng = random.Random(seed)
    shape = Shape(
        retry=True,
        retry_deadline=None,
        retry_boom_only=False,
        breaker=True,
        bulkhead=True,
        retry_on_result=True,
        failure_on_result=False,
        on_timeout=False,
        limit=8,
        max_wait=rng.choice([None, 2.0]),
        fallback=False,
        limiter=False,
    )
    calls = tuple(
        Call(
            start=rng.choice([0.0, 0.1, 0.5, 2.0, 4.0]),
            acts=tuple(rng.choice(ACTS) for _ in range(3)),
            sync=False,
            cancel_after=rng.choice([None, None, 0.05, 0.6, 1.2]),
        )
        for _ in range(200)
    )
    scenario = Scenario(
        shape=shape, calls=calls, reset_at=None, close_at=rng.choice([1.0, 3.0]), close_one=None
    )
    nested = asyncio.run(play(scenario, fuse_it=False))
    fused = asyncio.run(play(scenario, fuse_it=True))
    assert fused == nested


# -- which guards are fused ----------------------------------------------------------------


def _kinds(runs: list[Any]) -> list[str]:
    out = []
    for run in runs:
        if isinstance(run, Fused):
            parts = (run.retry, run.breaker, run.timeout, run.bulkhead)
            out.append("+".join(type(g).__name__ for g in parts if g is not None))
        else:
            out.append(type(run).__name__)
    return out


def test_fuse_takes_each_run_of_the_template() -> None:
    r, b, t, k = Retry(2), CircuitBreaker(), Timeout(1), Bulkhead(1)
    assert _kinds(fuse([r, b, t, k])) == ["Retry+CircuitBreaker+Timeout+Bulkhead"]
    assert _kinds(fuse([r, t])) == ["Retry+Timeout"]
    assert _kinds(fuse([b, t])) == ["CircuitBreaker+Timeout"]
    assert _kinds(fuse([t, k])) == ["Timeout+Bulkhead"]
    assert _kinds(fuse([t])) == ["Timeout"]  # one guard: nothing to fuse
    assert _kinds(fuse([r, b])) == ["Retry", "CircuitBreaker"]  # no Timeout
    assert _kinds(fuse([b, r, t])) == ["CircuitBreaker", "Retry+Timeout"]  # out of order
    assert _kinds(fuse([t, t, k])) == ["Timeout", "Timeout+Bulkhead"]
    limiter, fallback = RateLimiter(10), Fallback(lambda exc: None)
    assert _kinds(fuse([fallback, r, b, limiter, t, k])) == [
        "Fallback",
        "Retry",
        "CircuitBreaker",
        "RateLimiter",
        "Timeout+Bulkhead",
    ]


def test_store_backed_guards_are_not_fused() -> None:
    class Store:
        async def admit(self, *a: Any, **k: Any) -> Any: ...
        async def record(self, *a: Any, **k: Any) -> Any: ...
        async def force(self, *a: Any, **k: Any) -> Any: ...
        async def reset(self, *a: Any, **k: Any) -> Any: ...
        async def acquire(self, *a: Any, **k: Any) -> Any: ...
        async def release(self, *a: Any, **k: Any) -> Any: ...

    shared = CircuitBreaker("fused-store", store=Store())  # type: ignore[arg-type]
    lease = Bulkhead(1, name="fused-store", store=Store())  # type: ignore[arg-type]
    assert _kinds(fuse([shared, Timeout(1), lease])) == ["CircuitBreaker", "Timeout", "Bulkhead"]


# -- behaviours worth naming -------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_a_sync_function_is_a_misuse_neither_recorded_nor_retried() -> None:
    retry, breaker = Retry(3, backoff=fixed(0)), CircuitBreaker(failure_threshold=1)
    stack = pipeline(retry, breaker, Timeout(1), Bulkhead(1))

    def sync() -> int:
        return 42

    with pytest.raises(NotAsyncError):
        await stack.call(sync)  # type: ignore[arg-type]
    assert retry.snapshot().attempts == 1
    snap = breaker.snapshot()
    assert (snap.state, snap.failures, snap.successes) == (CircuitState.CLOSED, 0, 0)


@pytest.mark.virtual_clock
async def test_a_callee_that_swallows_the_timeout_still_times_out() -> None:
    breaker, timeout = CircuitBreaker(failure_threshold=1), Timeout(1)
    stack = pipeline(breaker, timeout)
    with pytest.raises(GuardTimeout):
        await stack.call(_attempt, "late")
    assert timeout.snapshot().timeouts == 1
    assert breaker.state is CircuitState.OPEN  # the GuardTimeout was a failure


@pytest.mark.virtual_clock
async def test_on_timeout_answers_and_the_breaker_counts_a_success() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    stack = pipeline(breaker, Timeout(1, on_timeout=lambda *a: "instead"))
    assert await stack.call(_attempt, "slow") == "instead"
    assert breaker.snapshot().successes == 1


@pytest.mark.virtual_clock
async def test_aclose_waits_for_a_call_in_the_fused_run() -> None:
    gate = asyncio.Event()
    retry, breaker, timeout, bulkhead = Retry(2), CircuitBreaker(), Timeout(10), Bulkhead(1)
    stack = pipeline(retry, breaker, timeout, bulkhead)
    guards: list[Any] = [retry, breaker, timeout, bulkhead]

    async def work() -> str:
        await gate.wait()
        return "done"

    running = asyncio.create_task(stack.call(work))
    await asyncio.sleep(0)
    assert [g._life.running for g in guards] == [1, 0, 1, 1]  # the breaker counts its own
    closing_breaker = asyncio.create_task(breaker.aclose())
    await asyncio.sleep(0)
    assert not closing_breaker.done()
    assert breaker._life.running == 1  # handed to its lifecycle, which waits for it
    closing = asyncio.create_task(stack.aclose())
    await asyncio.sleep(0)
    assert not closing.done()
    with pytest.raises(Closed):
        await stack.call(work)
    gate.set()
    assert await running == "done"
    await closing
    await closing_breaker
    assert [g._life.running for g in guards] == [0, 0, 0, 0]
    assert all(g.closed for g in guards)
    assert breaker.snapshot().successes == 1
