"""The breaker's closed-state fast path counts exactly what its general path counts.

The fast path (``CircuitBreaker.call``, the decorator, a fused pipeline) keeps no lifecycle
count of its own: a call takes one of ``MemoryState.tickets`` (its generation) and
``budget`` counts the successes down, folded into ``successes`` every ``FAST_BATCH``
successes, when a streak must end, across ``reset()``, and when ``aclose()`` hands the
calls in flight to the lifecycle. These tests hold the fast path to a twin breaker that
takes the general path (``slow_call_duration`` it never reaches) and to one with a result
predicate (the ``checked`` lane), over random sequences of outcomes, calls left in flight
across transitions, ``reset()`` and ``aclose()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Coroutine, Generator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from headrace_core import Closed
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker, CircuitOpenError, CircuitState, GuardEvent
from headrace_guards._circuit_state import FAST_BATCH, MemoryState

OUTCOMES = ("ok", "fail", "ignored", "cancel")


class Boom(Exception):
    pass


class _Suspend:
    """An awaitable that suspends once (the caller resumes it by hand)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def _settle_outcome(kind: str) -> str:
    if kind == "fail":
        raise Boom
    if kind == "ignored":
        raise KeyError("ignored")
    if kind == "cancel":
        raise asyncio.CancelledError
    return "ok"


async def _now(kind: str) -> str:
    return _settle_outcome(kind)


async def _later(outcome: list[str]) -> str:
    await _Suspend()
    return _settle_outcome(outcome[0])


def _step(coro: Coroutine[Any, Any, Any]) -> tuple[str, Any]:
    try:
        coro.send(None)
    except StopIteration as stop:
        return "returned", stop.value
    except BaseException as exc:
        return "raised", type(exc)
    return "suspended", None


def _hot_in_flight(breaker: CircuitBreaker) -> int:
    local = breaker._local
    assert isinstance(local, MemoryState)
    return local.fast_in_flight()


def _figures(breaker: CircuitBreaker) -> dict[str, Any]:
    snap = dataclasses.asdict(breaker.snapshot())
    del snap["name"]
    return snap


def _changes(events: list[GuardEvent]) -> list[tuple[Any, ...]]:
    return [(e.kind, e.at, e.old_state, e.new_state, e.reason) for e in events]


class FastTwins(RuleBasedStateMachine):
    """One breaker on each path, fed the same calls; they must agree at every step."""

    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        config: dict[str, Any] = {
            "failure_threshold": 3,
            "recovery_timeout": 10,
            "half_open_max_calls": 2,
            "ignore": KeyError,
            "clock": lambda: self.now,
        }
        self.fast = CircuitBreaker("twin", **config)
        self.general = CircuitBreaker("twin", slow_call_duration=1e9, **config)
        self.checked = CircuitBreaker("twin", failure_on_result=lambda value: False, **config)
        self.decorated = CircuitBreaker("twin", **config)
        self.events: dict[str, list[GuardEvent]] = {}
        for name, breaker in self.twins():
            breaker.add_listener(self.events.setdefault(name, []).append)
        self.later = self.decorated(_later)
        self.in_flight = 0

    def twins(self) -> list[tuple[str, CircuitBreaker]]:
        return [
            ("fast", self.fast),
            ("general", self.general),
            ("checked", self.checked),
            ("decorated", self.decorated),
        ]

    def start(self, name: str, breaker: CircuitBreaker, outcome: list[str]) -> Any:
        if name == "decorated":
            return self.later(outcome)
        return breaker.call(_later, outcome)

    @rule(kind=st.sampled_from(OUTCOMES))
    def call_now(self, kind: str) -> None:
        results = {name: _step(b.call(_now, kind)) for name, b in self.twins()}
        assert len(set(results.values())) == 1, results

    @rule(target=calls, kind=st.sampled_from(OUTCOMES))
    def start_call(self, kind: str) -> Any:
        outcome = [kind]
        coros = {name: self.start(name, b, outcome) for name, b in self.twins()}
        steps = {name: _step(coro) for name, coro in coros.items()}
        assert len(set(steps.values())) == 1, steps
        if next(iter(steps.values()))[0] != "suspended":
            return None
        self.in_flight += 1
        return coros

    @rule(call=consumes(calls))
    def finish_call(self, call: Any) -> None:
        if call is None:
            return
        self.in_flight -= 1
        results = {name: _step(coro) for name, coro in call.items()}
        assert len(set(results.values())) == 1, results

    @rule(dt=st.sampled_from([0.5, 3.0, 10.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(action=st.sampled_from(["reset", "force_open", "disable", "enable"]))
    def control(self, action: str) -> None:
        for _, breaker in self.twins():
            assert _step(getattr(breaker, action)()) == ("returned", None)

    @invariant()
    def the_twins_agree(self) -> None:
        figures = {name: _figures(b) for name, b in self.twins()}
        assert all(f == figures["fast"] for f in figures.values()), figures
        changes = {name: _changes(events) for name, events in self.events.items()}
        assert all(c == changes["fast"] for c in changes.values()), changes

    @invariant()
    def every_call_in_flight_is_counted_once(self) -> None:
        for name in ("fast", "decorated"):
            breaker = dict(self.twins())[name]
            assert _hot_in_flight(breaker) + breaker._life.running == self.in_flight


FastTwins.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestFastTwins = FastTwins.TestCase


def test_successes_fold_exactly_across_batches() -> None:
    breaker = CircuitBreaker(failure_threshold=3, ignore=KeyError, clock=lambda: 0.0)
    expected = {"successes": 0, "failures": 0, "ignored": 0}
    for i in range(3 * FAST_BATCH + 5):
        assert _step(breaker.call(_now, "ok")) == ("returned", "ok")
        expected["successes"] += 1
        if i % 50 == 7:
            assert _step(breaker.call(_now, "fail")) == ("raised", Boom)
            expected["failures"] += 1
            assert breaker.snapshot().failure_count == 1
            assert _step(breaker.call(_now, "ignored")) == ("raised", KeyError)
            expected["ignored"] += 1
            assert breaker.snapshot().failure_count == 1  # an ignored call is neutral
            assert _step(breaker.call(_now, "ok")) == ("returned", "ok")  # ends the streak
            expected["successes"] += 1
            assert breaker.snapshot().failure_count == 0
        snap = breaker.snapshot()
        assert (snap.successes, snap.failures, snap.ignored) == tuple(expected.values())
        assert _hot_in_flight(breaker) == 0
    assert _step(breaker.reset()) == ("returned", None)
    assert breaker.snapshot().successes == 0
    assert _hot_in_flight(breaker) == 0


# -- aclose() with fast calls in flight --------------------------------------------------------


async def _scenario(seed: int) -> None:
    """Calls through every path, left in flight, finished in random order around reset()
    and aclose(); the fast breakers must count what the general one counts."""
    with VirtualClock():
        await _twins_closing(random.Random(seed))


async def _twins_closing(rng: random.Random) -> None:
    config: dict[str, Any] = {"failure_threshold": rng.choice([2, 1000]), "ignore": KeyError}
    twins = {
        "fast": CircuitBreaker(**config),
        "general": CircuitBreaker(slow_call_duration=1e9, **config),
        "checked": CircuitBreaker(failure_on_result=lambda value: False, **config),
    }
    gates: list[tuple[asyncio.Event, list[str]]] = []
    tasks: dict[str, list[asyncio.Task[Any]]] = {name: [] for name in twins}

    async def work(gate: asyncio.Event, outcome: list[str]) -> str:
        await gate.wait()
        return _settle_outcome(outcome[0])

    def start() -> None:
        gate, outcome = asyncio.Event(), [rng.choice(OUTCOMES)]
        gates.append((gate, outcome))
        for name, breaker in twins.items():
            tasks[name].append(asyncio.create_task(breaker.call(work, gate, outcome)))

    async def finish_some() -> None:
        rng.shuffle(gates)
        for _ in range(rng.randint(0, len(gates))):
            gates.pop()[0].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    for _ in range(rng.randint(1, 12)):
        start()
    await asyncio.sleep(0)
    await finish_some()
    if rng.random() < 0.5:
        for breaker in twins.values():
            await breaker.reset()
        start()
        await asyncio.sleep(0)
    closing = {name: asyncio.create_task(b.aclose()) for name, b in twins.items()}
    await asyncio.sleep(0)
    pending = bool(gates)
    for task in closing.values():
        assert task.done() is not pending  # aclose() waits for exactly the calls in flight
    for breaker in twins.values():
        with pytest.raises(Closed):
            await breaker.call(work, asyncio.Event(), ["ok"])
    while gates:
        await finish_some()
    async with asyncio.timeout(60):  # virtual: fails at once if aclose() is left waiting
        await asyncio.gather(*closing.values())
    outcomes = {
        name: [type(r).__name__ for r in await asyncio.gather(*ts, return_exceptions=True)]
        for name, ts in tasks.items()
    }
    assert outcomes["fast"] == outcomes["general"] == outcomes["checked"]
    figures = {name: _figures(b) for name, b in twins.items()}
    assert figures["fast"] == figures["general"] == figures["checked"]
    for breaker in twins.values():
        assert breaker._life.running == 0
    assert _hot_in_flight(twins["fast"]) == 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_aclose_waits_for_fast_calls_and_counts_stay_exact(seed: int) -> None:
    asyncio.run(_scenario(seed))


@pytest.mark.parametrize("seed", range(8))
async def test_stress_concurrent_calls_cancellations_then_aclose(seed: int) -> None:
    """Many concurrent calls with random cancellations, then aclose(): nothing hangs."""
    rng = random.Random(seed)
    with VirtualClock():
        breaker = CircuitBreaker(failure_threshold=1000, ignore=KeyError)
        decorated = breaker(_sleepy)
        tasks: list[asyncio.Task[Any]] = []
        for _ in range(200):
            kind = rng.choice(OUTCOMES)
            delay = rng.choice([0.0, 0.5, 1.0, 2.0])
            call = (
                decorated(delay, kind) if rng.random() < 0.5 else breaker.call(_sleepy, delay, kind)
            )
            tasks.append(asyncio.create_task(call))
        await asyncio.sleep(0.25)
        for task in rng.sample(tasks, 60):
            task.cancel()
        closing = asyncio.create_task(breaker.aclose())
        await asyncio.sleep(0)
        assert not closing.done()
        async with asyncio.timeout(10):
            await closing
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.done() for task in tasks)
    kinds = [type(r).__name__ for r in results]
    snap = breaker.snapshot()
    assert snap.successes == kinds.count("str")
    assert snap.failures == kinds.count("Boom")
    assert snap.ignored == kinds.count("KeyError")
    assert snap.state is CircuitState.CLOSED
    assert breaker._life.running == 0
    assert _hot_in_flight(breaker) == 0
    with pytest.raises(Closed):
        await decorated(0.0, "ok")


async def _sleepy(delay: float, kind: str) -> str:
    await asyncio.sleep(delay)
    return _settle_outcome(kind)


async def test_a_fast_call_in_flight_when_the_breaker_opens_counts_but_never_transitions() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=lambda: now[0])
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "late"

    stale = asyncio.create_task(breaker.call(work))
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        await breaker.call(_now, "fail")
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await breaker.call(_now, "ok")
    now[0] = 1.0
    assert await breaker.call(_now, "ok") == "ok"  # the probe closes it
    with pytest.raises(Boom):
        await breaker.call(_now, "fail")  # opens again: generation 4
    gate.set()
    assert await stale == "late"  # of generation 0: counted, no transition
    snap = breaker.snapshot()
    assert (snap.state, snap.generation, snap.successes, snap.failures) == (
        CircuitState.OPEN,
        4,
        2,
        2,
    )
