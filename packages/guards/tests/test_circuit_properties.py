"""Property tests of the breaker's state machine, driven without an event loop.

Calls are coroutines stepped by hand (``send``/``throw``), so calls can be left in flight
across transitions; time comes from an injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from headrace_guards import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CountWindow,
    GuardEvent,
)


class Boom(Exception):
    pass


class _Suspend:
    """An awaitable that suspends once (the caller resumes it by hand)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


async def _in_flight(outcome: list[Any]) -> str:
    await _Suspend()
    kind = outcome[0]
    if kind == "fail":
        raise Boom
    if kind == "cancel":
        raise asyncio.CancelledError
    return "ok"


def _run(coro: Coroutine[Any, Any, Any]) -> tuple[str, Any]:
    try:
        coro.send(None)
    except StopIteration as stop:
        return "returned", stop.value
    except BaseException as exc:
        return "raised", exc
    return "suspended", None


class BreakerMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.threshold = 3
        self.max_probes = 2
        self.breaker: CircuitBreaker | None = None
        self.events: list[GuardEvent] = []

    @rule(windowed=st.booleans())
    @precondition(lambda self: self.breaker is None)
    def create(self, windowed: bool) -> None:
        policy = CountWindow(size=6, min_calls=3, failure_rate=0.5) if windowed else None
        self.breaker = CircuitBreaker(
            "prop",
            failure_threshold=5 if windowed else self.threshold,
            policy=policy,
            recovery_timeout=10,
            half_open_max_calls=self.max_probes,
            ignore=KeyError,
            clock=lambda: self.now,
        )
        self.breaker.add_listener(self.events.append)

    @property
    def b(self) -> CircuitBreaker:
        assert self.breaker is not None
        return self.breaker

    @rule(kind=st.sampled_from(["ok", "fail", "cancel", "ignored"]))
    @precondition(lambda self: self.breaker is not None)
    def call_now(self, kind: str) -> None:
        state_before = self.b.state
        ran: list[bool] = []

        async def fn() -> str:
            ran.append(True)
            if kind == "fail":
                raise Boom
            if kind == "cancel":
                raise asyncio.CancelledError
            if kind == "ignored":
                raise KeyError("ignored")
            return "ok"

        gen_before = self.b.generation
        status, value = _run(self.b.call(fn))
        assert status != "suspended"
        if state_before is CircuitState.OPEN:
            assert not ran
            assert isinstance(value, CircuitOpenError)
        if kind in ("cancel", "ignored") and ran:
            # a caller's cancellation and an ignored error are neutral: no transition
            assert self.b.generation == gen_before

    @rule(target=calls, kind=st.sampled_from(["ok", "fail", "cancel"]))
    @precondition(lambda self: self.breaker is not None)
    def start_call(self, kind: str) -> Any:
        outcome = [kind]
        coro = self.b.call(_in_flight, outcome)
        status, _value = _run(coro)
        if status != "suspended":
            return None
        return (coro, outcome, self.b.generation)

    @rule(call=consumes(calls))
    def finish_call(self, call: Any) -> None:
        if call is None:
            return
        coro, outcome, gen = call
        stale = gen != self.b.generation
        gen_before = self.b.generation
        state_before = self.b._state
        _run(coro)
        if stale or outcome[0] == "cancel":
            assert self.b.generation == gen_before
            assert self.b._state is state_before

    @rule(dt=st.sampled_from([0.5, 3.0, 10.0, 25.0]))
    @precondition(lambda self: self.breaker is not None)
    def advance(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def permits_are_bounded(self) -> None:
        if self.breaker is None:
            return
        snap = self.b.snapshot()
        assert 0 <= snap.half_open_in_flight <= self.max_probes
        assert 0 <= self.b._ho_in_flight + self.b._ho_ok <= self.max_probes or (
            self.b._state is not CircuitState.HALF_OPEN
        )

    @invariant()
    def events_chain_and_match_generation(self) -> None:
        if self.breaker is None:
            return
        state = self.b.state  # may apply a due lazy transition (and emit it)
        changes = [e for e in self.events if e.kind == "state_change"]
        assert len(changes) == self.b.generation
        previous = CircuitState.CLOSED
        for event in changes:
            assert event.old_state is previous
            assert event.new_state is not event.old_state
            previous = event.new_state
        assert previous is state

    @invariant()
    def open_deadline_fixed(self) -> None:
        if self.breaker is None or self.b._state is not CircuitState.OPEN:
            return
        opened = [
            e for e in self.events if e.kind == "state_change" and e.new_state is CircuitState.OPEN
        ]
        assert self.b._open_until == opened[-1].at + 10


BreakerMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestBreakerStateMachine = BreakerMachine.TestCase
