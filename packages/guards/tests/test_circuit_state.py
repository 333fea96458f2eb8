"""The breaker's state backends, driven through their interface (no CircuitBreaker).

``MemoryState`` is the in-process state machine; ``StoreState`` follows a shared
``BreakerStore``, here :class:`SharedStore`, a consecutive-policy store in this process
whose methods can be made to raise, answer garbage or hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest

from headrace_core import BackoffError, CircuitOpenError, CircuitState
from headrace_core.stats import Listeners
from headrace_core.testing import VirtualClock
from headrace_guards import Consecutive, CountWindow, GuardEvent, TimeWindow
from headrace_guards._circuit_state import BreakerState, MemoryState, Settings
from headrace_guards._circuit_store import StoreState
from headrace_guards._common import Background, compile_spec
from headrace_guards._policies import Policy

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
FAILING = ("failure", "slow_failure", "slow")


class Boom(Exception):
    pass


class StoreDown(Exception):
    pass


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise Boom


class SharedStore:
    """A ``BreakerStore`` (consecutive policy) whose methods misbehave on demand.

    ``fail[method]`` is raised after the call is logged (the store did nothing);
    ``garbage[method]`` is returned instead of the answer; ``gate[method]`` is waited on
    first (a hanging store until it is set).
    """

    def __init__(self) -> None:
        self.state = CLOSED
        self.generation = 0
        self.streak = 0
        self.open_until = 0.0
        self.forced = False
        self.taken = 0
        self.ok = 0
        self.calls: list[tuple[str, Any]] = []
        self.configs: list[dict[str, Any]] = []
        self.fail: dict[str, BaseException] = {}
        self.garbage: dict[str, object] = {}
        self.gate: dict[str, asyncio.Event] = {}

    async def _fault(self, method: str) -> None:
        gate = self.gate.get(method)
        if gate is not None:
            await gate.wait()
        error = self.fail.get(method)
        if error is not None:
            raise error

    def move(self, state: CircuitState, config: Mapping[str, Any]) -> None:
        """Make a transition (as the store's scripts, or another worker, do)."""
        self.state, self.generation = state, self.generation + 1
        self.taken = self.ok = self.streak = 0
        if state is OPEN:
            self.open_until = asyncio.get_running_loop().time() + config["recovery_timeout"]
        else:
            self.forced = False

    async def admit(self, name: str, now: float, **config: Any) -> Any:
        self.calls.append(("admit", name))
        self.configs.append(config)
        await self._fault("admit")
        if "admit" in self.garbage:
            return self.garbage["admit"]
        if self.state is OPEN and not self.forced and now >= self.open_until:
            self.move(HALF_OPEN, config)
        if self.state is OPEN:
            return False, self.generation, OPEN, self.open_until - now
        if self.state is HALF_OPEN:
            if self.taken + self.ok >= config["half_open_max_calls"]:
                return False, self.generation, HALF_OPEN, 0.0
            self.taken += 1
        return True, self.generation, self.state, 0.0

    async def record(
        self, name: str, generation: int, outcome: str, duration: float, **config: Any
    ) -> Any:
        self.calls.append(("record", outcome))
        self.configs.append(config)
        await self._fault("record")
        if "record" in self.garbage:
            return self.garbage["record"]
        if generation != self.generation:
            return self.state
        if self.state is HALF_OPEN:
            self.taken -= 1
            if outcome in FAILING:
                self.move(OPEN, config)
            elif outcome == "success":
                self.ok += 1
                if self.ok >= config["half_open_max_calls"]:
                    self.move(CLOSED, config)
        elif self.state is CLOSED:
            if outcome in FAILING:
                self.streak += 1
                if self.streak >= config["threshold"]:
                    self.move(OPEN, config)
            elif outcome == "success":
                self.streak = 0
        return self.state

    async def force(self, name: str, state: CircuitState, **config: Any) -> None:
        self.calls.append(("force", state))
        await self._fault("force")
        self.move(state, config)
        self.forced = True

    async def reset(self, name: str) -> None:
        self.calls.append(("reset", name))
        await self._fault("reset")
        self.move(CLOSED, {})

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        return {"state": self.state}

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)


class Schedule:
    """An ``open_backoff`` schedule of the given delays (then it runs out)."""

    def __init__(self, *delays: float) -> None:
        self.values = delays

    def delays(self, rng: object = None) -> Iterator[float]:
        return iter(self.values)


def settings(events: list[GuardEvent], **overrides: Any) -> Settings:
    listeners: Listeners[GuardEvent] = Listeners("headrace.guards", "svc")
    listeners.add(events.append)
    values: dict[str, Any] = {
        "name": "svc",
        "source": "svc",
        "listeners": listeners,
        "clock": None,
        "policy": Consecutive(2),
        "recovery_timeout": 10.0,
        "half_open_max_calls": 1,
        "half_open_timeout": None,
        "slow_call_duration": None,
        "slow_call_rate": 1.0,
        "open_backoff": None,
        "record": compile_spec("record", Exception),
        "ignore": compile_spec("ignore", ()),
        "failure_on_result": None,
    }
    values.update(overrides)
    return Settings(**values)


def fast(state: MemoryState) -> bool:
    """Read ``fast`` through a call, so mypy does not narrow the attribute."""
    return state.fast


async def cancel_promptly(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``; it must end with ``CancelledError`` at once (never wait on a store)."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):  # a caller left waiting fails here, not hangs
            await task


def changes(events: list[GuardEvent]) -> list[tuple[Any, Any, str | None]]:
    return [(e.old_state, e.new_state, e.reason) for e in events if e.kind == "state_change"]


def rejections(events: list[GuardEvent]) -> list[float]:
    return [e.error.retry_after for e in events if isinstance(e.error, CircuitOpenError)]


class Backends:
    """One backend of either kind, with its events, store and background."""

    def __init__(self, kind: str, **overrides: Any) -> None:
        self.events: list[GuardEvent] = []
        self.store = SharedStore()
        self.background = Background("svc")
        self.settings = settings(self.events, **overrides)
        self.state: BreakerState
        if kind == "memory":
            self.state = MemoryState(self.settings)
        else:
            self.state = StoreState(self.settings, self.store, self.background)


@pytest.fixture(params=["memory", "store"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- one story, told by both backends through the interface ----------------------------------


async def test_trip_reject_probe_and_close(kind: str, clock_start: float) -> None:
    with VirtualClock(start=clock_start) as clock:
        b = Backends(kind)
        state = b.state
        for _ in range(2):
            with pytest.raises(Boom):
                await state.call(boom, (), {})
        opened = clock.now()
        assert (state.state, state.gen, state.failures) == (OPEN, 1, 2)
        assert state.open_until == opened + 10
        await clock.advance(4)
        with pytest.raises(CircuitOpenError) as info:
            await state.call(ok, (), {})
        assert info.value.retry_after == pytest.approx(6)
        assert (info.value.name, info.value.state) == ("svc", OPEN)
        await clock.advance(6)
        start = clock.now()
        gen, admitted, permit = await state.enter(start)  # the one probe
        assert admitted is HALF_OPEN
        assert state.state is HALF_OPEN
        with pytest.raises(CircuitOpenError) as info:
            await state.enter(start)  # the probes are taken
        assert info.value.retry_after == 0.0
        await state.exit(gen, admitted, permit, start, None)
        assert state.refresh(clock.now()) is CLOSED
    assert (state.gen, state.successes, state.failures, state.rejected) == (3, 1, 2, 2)
    assert state.last_reason == "probes_succeeded"
    assert changes(b.events) == [
        (CLOSED, OPEN, "failures"),
        (OPEN, HALF_OPEN, "recovery_timeout"),
        (HALF_OPEN, CLOSED, "probes_succeeded"),
    ]
    assert rejections(b.events) == [pytest.approx(6), 0.0]
    await b.background.aclose()


async def test_a_failed_probe_opens_again(kind: str) -> None:
    with VirtualClock() as clock:
        b = Backends(kind)
        state = b.state
        for _ in range(2):
            with pytest.raises(Boom):
                await state.call(boom, (), {})
        await clock.advance(10)
        with pytest.raises(Boom):
            await state.call(boom, (), {})
        assert state.state is OPEN
        assert state.open_until == clock.now() + 10  # a fresh deadline
        assert state.gen == 3
    await b.background.aclose()


async def test_forced_open_holds_until_reset(kind: str) -> None:
    with VirtualClock() as clock:
        b = Backends(kind)
        state = b.state
        with pytest.raises(Boom):
            await state.call(boom, (), {})
        await state.force_open()
        assert (state.state, state.forced, state.open_until) == (OPEN, True, math.inf)
        await clock.advance(1000)
        assert state.refresh(clock.now()) is OPEN
        with pytest.raises(CircuitOpenError) as info:
            await state.call(ok, (), {})
        assert info.value.retry_after == math.inf
        await state.reset()
        assert (state.state, state.forced, state.last_reason) == (CLOSED, False, "reset")
        assert (state.successes, state.failures, state.rejected) == (0, 0, 0)
        assert await state.call(ok, (), {}) == "ok"
    assert changes(b.events) == [(CLOSED, OPEN, "forced"), (OPEN, CLOSED, "reset")]
    await b.background.aclose()


async def test_disabled_passes_every_call_and_counts(kind: str) -> None:
    with VirtualClock():
        b = Backends(kind)
        state = b.state
        state.disable()
        assert (state.state, state.disabled, state.last_reason) == (CLOSED, True, "disabled")
        for _ in range(5):
            with pytest.raises(Boom):
                await state.call(boom, (), {})
        assert (state.state, state.gen, state.failures) == (CLOSED, 1, 5)
        assert b.store.calls == []  # a disabled shared breaker never asks the store
        state.enable()
        for _ in range(2):
            with pytest.raises(Boom):
                await state.call(boom, (), {})
        assert state.state is OPEN
    await b.background.aclose()


async def test_ignored_and_cancelled_calls_are_neutral(kind: str) -> None:
    with VirtualClock():
        b = Backends(kind, ignore=compile_spec("ignore", KeyError))
        state = b.state
        with pytest.raises(Boom):
            await state.call(boom, (), {})

        async def missing() -> None:
            raise KeyError("missing")

        async def cancelled() -> None:
            raise asyncio.CancelledError

        with pytest.raises(KeyError):
            await state.call(missing, (), {})
        with pytest.raises(asyncio.CancelledError):
            await state.call(cancelled, (), {})
        with pytest.raises(Boom):
            await state.call(boom, (), {})  # the streak was not broken: 2 in a row
        assert state.state is OPEN
        assert (state.ignored, state.successes, state.failures) == (1, 0, 2)
        assert b.store.count("record") == (2 if kind == "store" else 0)  # neutral: not sent
    await b.background.aclose()


async def test_a_result_predicate_that_says_failure_trips(kind: str) -> None:
    with VirtualClock():
        b = Backends(kind, failure_on_result=lambda value: value == "ok")
        state = b.state
        assert await state.call(ok, (), {}) == "ok"  # the caller still gets the value
        assert await state.call(ok, (), {}) == "ok"
        assert (state.state, state.failures, state.successes) == (OPEN, 2, 0)
    await b.background.aclose()


# -- MemoryState ---------------------------------------------------------------------------------


async def test_memory_fast_path_fields_follow_the_state() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
        state = MemoryState(settings(events))
        assert state.fast
        gen = state.gen
        state.closed_error(gen, KeyError("x"))  # a failure by the default record spec
        assert (state.streak, state.failures, state.fast) == (1, 1, True)
        state.closed_failure(gen)
        assert (state.state, state.fast, state.streak) == (OPEN, False, 2)
        state.closed_failure(gen)  # a late failure of the old generation: counted only
        assert (state.gen, state.failures, state.open_until) == (1, 3, clock.now() + 10)
        await clock.advance(10)
        probe_gen, admitted, permit = state.admit(clock.now())
        assert (admitted, permit, state.half_open_in_flight, state.fast) == (
            HALF_OPEN,
            True,
            1,
            False,
        )
        state.leave(probe_gen, admitted, permit, clock.now(), None)
        assert (state.state, state.fast, state.half_open_in_flight) == (CLOSED, True, 0)
        state.disable()
        assert not fast(state)
        state.enable()
        assert fast(state)


async def test_memory_closed_error_classifies_as_the_general_path_does() -> None:
    events: list[GuardEvent] = []
    with VirtualClock():
        state = MemoryState(
            settings(
                events,
                record=compile_spec("record", Boom),
                ignore=compile_spec("ignore", KeyError),
            )
        )
        gen = state.gen
        state.closed_error(gen, Boom())
        assert (state.streak, state.failures) == (1, 1)
        state.closed_error(gen, KeyError("x"))  # ignored: the streak goes on
        assert (state.streak, state.ignored, state.successes) == (1, 1, 0)
        state.closed_error(gen, ValueError("x"))  # neither: a success ends the streak
        assert (state.streak, state.successes) == (0, 1)
        state.closed_error(gen, Boom())
        state.closed_error(gen, Boom())
        assert (state.state, state.failures) == (OPEN, 3)
    assert changes(events) == [(CLOSED, OPEN, "failures")]


async def test_memory_stale_outcome_counts_but_never_transitions() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
        state = MemoryState(settings(events, policy=CountWindow(size=4, min_calls=2)))
        assert not state.fast  # a window: no fast path
        start = clock.now()
        gen, admitted, permit = state.admit(start)  # admitted while CLOSED
        for _ in range(2):
            with pytest.raises(Boom):
                await state.call(boom, (), {})
        assert state.state is OPEN
        await clock.advance(10)
        assert state.refresh(clock.now()) is HALF_OPEN
        state.leave(gen, admitted, permit, start, None)  # a success of generation 0
        assert (state.state, state.successes) == (HALF_OPEN, 1)


async def test_memory_window_figures_and_failure_rate(clock_start: float) -> None:
    events: list[GuardEvent] = []
    with VirtualClock(start=clock_start) as clock:
        policy = TimeWindow(seconds=60, min_calls=4, failure_rate=0.5)
        state = MemoryState(settings(events, policy=policy))
        calls: list[Callable[[], Awaitable[object]]] = [ok, ok, boom]
        for fn in calls:
            with contextlib.suppress(Boom):
                await state.call(fn, (), {})
        calls_in_window, failure_count, failure_rate, slow_rate = state.figures(clock.now())
        assert (calls_in_window, failure_count, slow_rate) == (3, 1, 0.0)
        assert failure_rate == pytest.approx(1 / 3)
        await clock.advance(61)
        assert state.figures(clock.now()) == (0, 0, 0.0, 0.0)  # all expired
        for fn in [*calls, boom]:
            with contextlib.suppress(Boom):
                await state.call(fn, (), {})
        assert (state.state, state.last_reason) == (OPEN, "failure_rate")
        await state.reset()
        assert state.figures(clock.now()) == (0, 0, 0.0, 0.0)


async def test_memory_slow_calls_trip_a_consecutive_policy() -> None:
    events: list[GuardEvent] = []
    with VirtualClock():
        state = MemoryState(settings(events, slow_call_duration=1.0))
        assert not state.fast  # slow-call timing needs the clock: no fast path
        for _ in range(2):
            assert await state.call(asyncio.sleep, (1.0, "late"), {}) == "late"
        assert (state.state, state.last_reason, state.slow, state.successes) == (
            OPEN,
            "slow",
            2,
            2,
        )


async def test_memory_half_open_timeout_opens_again() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
        state = MemoryState(settings(events, policy=Consecutive(1), half_open_timeout=5.0))
        with pytest.raises(Boom):
            await state.call(boom, (), {})
        await clock.advance(10)
        gen, admitted, permit = state.admit(clock.now())  # a probe that hangs
        await clock.advance(5)
        assert state.refresh(clock.now()) is OPEN
        assert state.last_reason == "half_open_timeout"
        state.leave(gen, admitted, permit, clock.now(), None)  # too late to close
        assert (state.state, state.gen, state.successes) == (OPEN, 3, 1)


async def test_memory_open_backoff_then_a_schedule_that_runs_out() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
        state = MemoryState(settings(events, policy=Consecutive(1), open_backoff=Schedule(3.0)))
        with pytest.raises(Boom):
            await state.call(boom, (), {})
        assert state.open_until == clock.now() + 10  # the first open: recovery_timeout
        await clock.advance(10)
        with pytest.raises(Boom):
            await state.call(boom, (), {})
        assert state.open_until == clock.now() + 3  # a re-open: the schedule's delay
        await clock.advance(3)
        with pytest.raises(BackoffError) as info:
            await state.call(boom, (), {})
        assert isinstance(info.value.__cause__, Boom)
        assert state.state is OPEN  # the transition is complete before the error
        assert state.open_until == clock.now() + 10


async def test_memory_a_cancelled_probe_gives_its_permit_back() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
        state = MemoryState(settings(events, policy=Consecutive(1)))
        with pytest.raises(Boom):
            await state.call(boom, (), {})
        await clock.advance(10)
        probe = asyncio.create_task(state.call(asyncio.sleep, (60,), {}))
        await clock.advance(1)
        assert state.half_open_in_flight == 1
        await cancel_promptly(probe)
        assert (state.state, state.half_open_in_flight, state.gen) == (HALF_OPEN, 0, 2)
        assert await state.call(ok, (), {}) == "ok"  # the permit is free again
        assert state.state is CLOSED


# -- StoreState: what the store is told -----------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Consecutive(3), {"policy": "consecutive", "threshold": 3}),
        (
            CountWindow(size=20, min_calls=5, failure_rate=0.25),
            {"policy": "count", "size": 20, "min_calls": 5, "failure_rate": 0.25},
        ),
        (
            TimeWindow(seconds=30, min_calls=2, failure_rate=1.0),
            {"policy": "time", "seconds": 30, "min_calls": 2, "failure_rate": 1.0},
        ),
    ],
)
async def test_store_receives_the_policy_with_every_call(
    policy: Policy, expected: dict[str, Any]
) -> None:
    with VirtualClock():
        b = Backends("store", policy=policy, half_open_timeout=4.0, slow_call_rate=0.5)
        b.store.fail["record"] = StoreDown()  # only the arguments matter here
        with pytest.raises(StoreDown):
            await b.state.call(ok, (), {})
    common = {
        "recovery_timeout": 10.0,
        "half_open_max_calls": 1,
        "half_open_timeout": 4.0,
        "slow_call_rate": 0.5,
    }
    assert b.store.configs == [common | expected] * 2  # admit, then record
    await b.background.aclose()


async def test_store_slow_outcomes_are_labelled() -> None:
    with VirtualClock():
        b = Backends("store", slow_call_duration=1.0, policy=Consecutive(5))

        async def slow_boom() -> None:
            await asyncio.sleep(1)
            raise Boom

        assert await b.state.call(asyncio.sleep, (1, "late"), {}) == "late"
        with pytest.raises(Boom):
            await b.state.call(slow_boom, (), {})
        assert await b.state.call(ok, (), {}) == "ok"
    assert [c[1] for c in b.store.calls if c[0] == "record"] == ["slow", "slow_failure", "success"]
    assert (b.state.slow, b.state.successes, b.state.failures) == (2, 2, 1)
    await b.background.aclose()


async def test_store_transitions_made_elsewhere_are_followed_at_admission() -> None:
    with VirtualClock() as clock:
        b = Backends("store")
        b.store.move(OPEN, {"recovery_timeout": 10.0})  # another worker tripped it
        with pytest.raises(CircuitOpenError) as info:
            await b.state.call(ok, (), {})
        assert info.value.retry_after == 10
        assert (b.state.state, b.state.gen, b.state.open_until) == (OPEN, 1, clock.now() + 10)
    assert changes(b.events) == [(CLOSED, OPEN, "failures")]
    await b.background.aclose()


# -- StoreState: store errors -----------------------------------------------------------------


async def test_store_admit_that_raises_changes_nothing() -> None:
    with VirtualClock():
        b = Backends("store")
        b.store.fail["admit"] = StoreDown()
        ran: list[bool] = []

        async def fn() -> None:
            ran.append(True)

        with pytest.raises(StoreDown):
            await b.state.call(fn, (), {})
        assert ran == []
        assert (b.state.state, b.state.gen, b.state.rejected, b.state.successes) == (
            CLOSED,
            0,
            0,
            0,
        )
        assert not b.background.tasks


@pytest.mark.parametrize("reply", ["yes", (True, 0, "closed", 0.0), (True, 0, CLOSED, math.nan)])
async def test_store_admit_garbage_is_a_clear_error(reply: object) -> None:
    with VirtualClock():
        b = Backends("store")
        b.store.garbage["admit"] = reply
        with pytest.raises(TypeError, match=r"SharedStore.admit\(\) returned"):
            await b.state.enter(0.0)


async def test_store_record_that_raises_reaches_the_caller_after_counting() -> None:
    with VirtualClock():
        b = Backends("store")
        b.store.fail["record"] = StoreDown()
        with pytest.raises(StoreDown) as info:
            await b.state.call(boom, (), {})
        assert isinstance(info.value.__context__, Boom)  # the call's own error, chained
        assert (b.state.failures, b.state.state) == (1, CLOSED)
        b.store.garbage["record"] = None
        del b.store.fail["record"]
        with pytest.raises(TypeError, match=r"SharedStore.record\(\) returned a NoneType"):
            await b.state.call(ok, (), {})
        assert b.state.successes == 1


@pytest.mark.parametrize("method", ["reset", "force"])
async def test_store_manual_control_that_fails_changes_nothing_here(method: str) -> None:
    with VirtualClock():
        b = Backends("store")
        with pytest.raises(Boom):
            await b.state.call(boom, (), {})
        b.store.fail[method] = StoreDown()
        action = b.state.reset if method == "reset" else b.state.force_open
        with pytest.raises(StoreDown):
            await action()
        assert (b.state.state, b.state.gen, b.state.forced, b.state.failures) == (
            CLOSED,
            0,
            False,
            1,
        )
        del b.store.fail[method]
        await action()
        assert b.state.gen == 1
        if method == "reset":
            assert (b.state.state, b.state.last_reason, b.state.failures) == (CLOSED, "reset", 0)
        else:
            assert (b.state.state, b.state.last_reason, b.state.failures) == (OPEN, "forced", 1)
    await b.background.aclose()


async def test_store_admission_is_given_back_when_following_it_fails() -> None:
    with VirtualClock() as clock:
        b = Backends("store", policy=Consecutive(1))
        with pytest.raises(Boom):
            await b.state.call(boom, (), {})
        await clock.advance(10)

        def interrupt(event: GuardEvent) -> None:
            if event.new_state is HALF_OPEN:
                raise KeyboardInterrupt

        b.settings.listeners.add(interrupt)
        with pytest.raises(KeyboardInterrupt):
            await b.state.call(ok, (), {})  # admitted as a probe; the HALF_OPEN event raises
        assert b.state.state is HALF_OPEN  # followed before the event
        assert b.store.taken == 1
        assert len(b.background.tasks) == 1  # the admission goes back without waiting
        await b.background.aclose()
        assert b.store.taken == 0
        assert b.store.calls[-1] == ("record", "neutral")


# -- StoreState: cancellation during a store call -----------------------------------------------


async def test_store_cancelled_while_admitting() -> None:
    with VirtualClock():
        b = Backends("store")
        b.store.gate["admit"] = asyncio.Event()
        task = asyncio.create_task(b.state.call(ok, (), {}))
        await asyncio.sleep(1)
        await cancel_promptly(task)
        assert (b.state.successes, b.state.rejected, b.state.gen) == (0, 0, 0)
        assert b.store.count("record") == 0
        assert not b.background.tasks


async def test_store_cancelled_while_recording_a_success() -> None:
    with VirtualClock() as clock:
        b = Backends("store")
        b.store.gate["record"] = asyncio.Event()
        task = asyncio.create_task(b.state.call(ok, (), {}))
        await asyncio.sleep(1)
        assert b.store.calls == [("admit", "svc"), ("record", "success")]
        started = clock.now()
        await cancel_promptly(task)
        assert clock.now() == started  # the cancelled caller did not wait on the store
        assert (b.state.successes, b.state.state, b.state.gen) == (1, CLOSED, 0)
        assert not b.background.tasks


async def test_store_cancelled_probe_never_waits_and_aclose_bounds_the_record() -> None:
    with VirtualClock() as clock:
        b = Backends("store", policy=Consecutive(1))
        with pytest.raises(Boom):
            await b.state.call(boom, (), {})
        await clock.advance(10)
        b.store.gate["record"] = asyncio.Event()  # the store hangs on every record
        probe = asyncio.create_task(b.state.call(asyncio.sleep, (60,), {}))
        await asyncio.sleep(1)
        assert b.store.taken == 1
        started = clock.now()
        await cancel_promptly(probe)
        assert clock.now() == started  # the neutral record goes on in the background
        assert len(b.background.tasks) == 1
        assert b.state.state is HALF_OPEN
        await b.background.aclose()  # the record is bounded: given up after 30 s
        assert clock.now() == pytest.approx(started + 30)
        assert b.store.taken == 1  # the store never heard back (its own TTL frees it)
