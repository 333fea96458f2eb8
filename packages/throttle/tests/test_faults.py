"""Fault injection at every point where a throttle calls user code.

For each point and each way the callback can misbehave, the throttle must end the call in
bounded (virtual) time, let the user's error reach the caller, hold nothing afterwards
(no call in flight, none queued, no budget charge of a call that did not run), let the
other queued callers proceed, and serve the next call.

Decisions these drivers check:

- the executed or wrapped function, an ``acquire()`` body, a ``retry_after`` extractor,
  ``is_failure``, a limit, an ``rng``, a store: ``KeyboardInterrupt`` and ``SystemExit``
  reach the caller whose call was running the code (or, for a waiter's admission, that
  waiter); everything is released first. A ``CancelledError`` that a callback raises
  while its task is not being cancelled is that callback's failure.
- ``is_failure``, a ``retry_after`` extractor, a limit, an ``rng`` and ``adjust`` of a
  budget store are isolated (logged; the call's own outcome stands); a garbage answer is
  ignored.
- listeners (``on_event``, ``add_listener``, ``on_progress``) are isolated; a sync
  listener's ``KeyboardInterrupt``/``SystemExit`` reaches the caller whose call emitted the
  event, after the state change; an async listener's is logged (core's rule); a hanging
  async listener is cancelled by ``drain(timeout=)``.
- a store's ``reserve`` that fails fails the call (after the grants already made are
  given back); a reply that is not ``(granted, retry_after, entry)`` fails it with a
  ``HeadraceError``; a refusal with an unusable ``retry_after`` waits at most a window.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

import headrace_throttle
from headrace_core import BackoffError, ConfigurationError, HeadraceError
from headrace_guards import CircuitBreaker, Retry, pipeline
from headrace_throttle import (
    CircuitBreakerConfig,
    Gradient,
    RequestBudget,
    RetryConfig,
    ServerBusy,
    Slot,
    Throttle,
    ThrottleSnapshot,
    TokenBudget,
    Vegas,
)
from shared.faults import (
    ASYNC_FAULTS,
    CALLABLE_WORDS,
    SYNC_FAULTS,
    Fault,
    FaultError,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    missing_points,
    outcome,
    run_injection,
)
from shared.throttle_store import MemoryThrottleStore

DEADLINE = 10.0  # the caller's own deadline, for HANG


class Flaky(Exception):
    """The called service's own error."""


class Once:
    """Misbehave (with ``fault``) on call number ``at`` (0-based), behave on every other."""

    def __init__(self, fault: Fault, *, at: int = 0) -> None:
        self.fault = fault
        self.at = at
        self.calls = 0

    def fire(self) -> bool:
        n = self.calls
        self.calls += 1
        return n == self.at

    def sync(self, normal: Any = None, *, wrong: Any = None) -> Any:
        if self.fire():
            return inject(self.fault, wrong)
        return normal

    async def async_(self, normal: Any = None, *, wrong: Any = None) -> Any:
        if self.fire():
            return await ainject(self.fault, wrong)
        return normal


def started(coro: Awaitable[Any], deadline: float | None = None) -> asyncio.Task[Any]:
    """A task running ``coro`` whose outcome is caught inside it (nothing escapes the loop)."""
    return asyncio.ensure_future(outcome(coro, deadline))


def raised(fault: Fault) -> type[BaseException]:
    """The exception type ``fault`` raises (for the faults that raise)."""
    expected = expected_error(fault)
    assert expected is not None, fault
    return expected


def check_error(result: object, expected: type[BaseException], fault: Fault) -> None:
    assert isinstance(result, expected), f"{fault}: expected {expected.__name__}, got {result!r}"


def check_idle(t: Throttle) -> ThrottleSnapshot:
    snap = t.snapshot()
    assert snap.in_flight == 0, snap
    assert snap.waiting == 0, snap
    return snap


async def ok(slot: Slot) -> str:
    return "ok"


async def fail(slot: Slot) -> None:
    await asyncio.sleep(0)
    raise Flaky("the service failed")


async def next_call_works(t: Throttle, tokens: int = 0) -> None:
    assert await outcome(t.execute(ok, tokens=tokens), 3600) == "ok"
    check_idle(t)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- the executed function, the wrapped function, the acquire() body ----------------------


def expected_call_outcome(fault: Fault, result: object) -> None:
    if fault is Fault.WRONG:
        assert isinstance(result, float), result
        assert math.isnan(result)
    elif fault is Fault.HANG:
        check_error(result, TimeoutError, fault)
    else:
        check_error(result, raised(fault), fault)


def failures_counted(fault: Fault) -> int:
    # A callee's own error, its own CancelledError included, is a failure; the caller's
    # cancellation (its deadline) and an interrupt are not; a wrong value is a return.
    return 1 if fault in (Fault.RAISE, Fault.CANCEL) else 0


async def drive_execute_fn(fault: Fault) -> None:
    rpm = RequestBudget(100, 60.0)
    t = Throttle(1, failure_threshold=100, total=3, budgets=[rpm, TokenBudget(1000, 60.0)])

    async def fn(slot: Slot) -> Any:
        return await ainject(fault, wrong=math.nan)

    first = started(t.execute(fn, tokens=10), DEADLINE)
    queued = started(t.execute(ok, tokens=10))
    await asyncio.sleep(0)
    assert t.snapshot().waiting == 1
    expected_call_outcome(fault, await first)
    assert await queued == "ok"
    snap = check_idle(t)
    assert snap.failed == failures_counted(fault)
    # Both ran: both keep their charges (a call that ran may have been counted).
    assert snap.tokens_used == 20
    assert rpm.used(asyncio.get_running_loop().time()) == 2
    await next_call_works(t, tokens=10)
    await t.aclose()


async def drive_call_fn(fault: Fault) -> None:
    # The guards' protocol: a throttle inside a pipeline, with a caller queued behind.
    t = Throttle(1, failure_threshold=100)
    stack = pipeline(t)

    async def fn(x: int) -> Any:
        return await ainject(fault, wrong=math.nan)

    async def plain(x: int) -> int:
        return x * 2

    first = started(stack.call(fn, 1), DEADLINE)
    queued = started(t.call(plain, 21))
    await asyncio.sleep(0)
    assert t.snapshot().waiting == 1
    expected_call_outcome(fault, await first)
    assert await queued == 42
    snap = check_idle(t)
    assert snap.failed == failures_counted(fault)
    assert await t.call(plain, x=2) == 4
    await t.aclose()


async def drive_wrap_fn(fault: Fault) -> None:
    t = Throttle(1, failure_threshold=100)
    if fault is Fault.WRONG:
        # The wrong kind of function: refused at decoration.
        def sync(x: int) -> int:
            return x

        with pytest.raises(TypeError, match="async"):
            t.wrap(sync)  # type: ignore[arg-type]

    @t.wrap
    async def call(x: int) -> Any:
        return await ainject(fault, wrong=math.nan)

    @t.wrap
    async def fine(x: int) -> str:
        return "ok"

    first = started(call(1), DEADLINE)
    queued = started(fine(2))
    await asyncio.sleep(0)
    expected_call_outcome(fault, await first)
    assert await queued == "ok"
    assert check_idle(t).failed == failures_counted(fault)
    assert await fine(3) == "ok"
    await t.aclose()


async def drive_acquire_body(fault: Fault) -> None:
    store = MemoryBudgetStore()
    t = Throttle(
        1,
        failure_threshold=100,
        circuit_breaker=CircuitBreaker(failure_threshold=100),
        budgets=[RequestBudget(100, 60.0, name="rpm", store=store)],
    )

    async def body() -> Any:
        async with t.acquire():
            return await ainject(fault, wrong=math.nan)

    async def fine() -> str:
        async with t.acquire():
            return "ok"

    first = started(body(), DEADLINE)
    await asyncio.sleep(0)
    queued = started(fine())
    expected_call_outcome(fault, await first)
    assert await queued == "ok"
    assert check_idle(t).failed == failures_counted(fault)
    assert await outcome(fine()) == "ok"
    assert store.used("rpm") == 3  # every call ran, so every request stays charged
    await t.aclose()


# -- is_failure (and the composed breaker's ignore built from it) -------------------------


class NoBool:
    def __bool__(self) -> bool:
        raise ValueError("no truth value")


async def drive_is_failure(fault: Fault) -> None:
    for kind in ("plain", "breaker"):
        once = Once(fault)

        def predicate(exc: BaseException, once: Once = once) -> bool:
            return bool(once.sync(True, wrong=NoBool()))

        if kind == "plain":
            t = Throttle(1, is_failure=predicate, failure_threshold=1)
        else:
            t = Throttle(
                1,
                failure_predicate=predicate,
                failure_threshold=1,
                circuit_breaker=CircuitBreakerConfig(consecutive_failures=100),
            )
        first = started(t.execute(fail))
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        result = await first
        if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
            check_error(result, raised(fault), fault)
        else:
            check_error(result, Flaky, fault)  # isolated: the call's own error stands
        assert await queued == "ok"
        check_idle(t)
        await next_call_works(t)
        await t.aclose()


# -- the retry_after extractor ------------------------------------------------------------


class Http429(Exception):
    pass


async def drive_retry_after(fault: Fault) -> None:
    for retry in (None, RetryConfig(max_attempts=2, backoff="fixed", base_delay=0.0)):
        once = Once(fault)

        def extractor(exc: BaseException, once: Once = once) -> Any:
            return once.sync(None, wrong=object())

        t = Throttle(1, failure_threshold=100, retry_after=extractor, retry=retry)

        async def limited(slot: Slot) -> None:
            await asyncio.sleep(0)
            raise Http429

        first = started(t.execute(limited))
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        result = await first
        if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
            check_error(result, raised(fault), fault)
        else:
            check_error(result, Http429, fault)  # the caller's own error, not the parser's
        assert await queued == "ok"
        snap = check_idle(t)
        assert snap.paused_until is None  # a bad hint is no pause
        await next_call_works(t)
        await t.aclose()


# -- a ServerBusy subclass whose retry_after is computed ------------------------------------


async def drive_server_busy_retry_after(fault: Fault) -> None:
    once = Once(fault)

    class Busy(ServerBusy):
        def __init__(self) -> None:
            super().__init__("busy")  # a message of its own: retry_after is not read here

        @property
        def retry_after(self) -> Any:
            return once.sync(5.0, wrong="soon")

        @retry_after.setter
        def retry_after(self, value: object) -> None:
            pass

    t = Throttle(1, failure_threshold=100)

    async def busy(slot: Slot) -> None:
        await asyncio.sleep(0)
        raise Busy

    first = started(t.execute(busy))
    queued = started(t.execute(ok))
    await asyncio.sleep(0)
    result = await first
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        check_error(result, raised(fault), fault)
    else:
        check_error(result, Busy, fault)  # busy, with no usable time: no pause
    assert await queued == "ok"
    snap = check_idle(t)
    assert snap.paused_until is None
    await next_call_works(t)
    await t.aclose()


# -- listeners ----------------------------------------------------------------------------


def listener_of(fault: Fault, once: Once, kind: str) -> Callable[[Any], Any]:
    """A listener that misbehaves at its first event: sync, or async for HANG/'async'."""
    if kind == "sync":

        def sync(event: Any) -> Any:
            return once.sync(None, wrong=42)

        return sync

    async def async_listener(event: Any) -> Any:
        return await once.async_(None, wrong=42)

    return async_listener


def listener_kinds(fault: Fault) -> tuple[str, ...]:
    return ("async",) if fault is Fault.HANG else ("sync", "async")


async def check_listener_outcome(
    fault: Fault, kind: str, result: object, normal: type[BaseException] | str
) -> None:
    interrupt = fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)
    if interrupt and kind == "sync":
        check_error(result, raised(fault), fault)
    elif isinstance(normal, str):
        assert result == normal, result
    else:
        check_error(result, normal, fault)


async def drive_on_event(fault: Fault) -> None:
    for kind in listener_kinds(fault):
        once = Once(fault)
        t = Throttle(2, failure_threshold=1, on_event=listener_of(fault, once, kind))
        first = started(t.execute(fail))  # its failure decreases the limit (2 -> 1): an event
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        await check_listener_outcome(fault, kind, await first, Flaky)
        assert await queued == "ok"
        snap = check_idle(t)
        assert snap.epoch == 1  # the decrease happened before the listener ran
        await next_call_works(t)
        await t.drain(timeout=60)
        assert once.calls >= 1


async def drive_add_listener(fault: Fault) -> None:
    for kind in listener_kinds(fault):
        once = Once(fault)
        t = Throttle(2)
        remove = t.add_listener(listener_of(fault, once, kind))
        # set_concurrency emits "decreased" in its caller, after the change
        result: object
        try:
            t.set_concurrency(1)
            result = "ok"
        except BaseException as exc:
            result = exc
        await check_listener_outcome(fault, kind, result, "ok")
        assert t.snapshot().concurrency == 1
        hold = started(t.execute(lambda s: asyncio.sleep(5)))
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        assert t.snapshot().waiting == 1
        assert await hold is None
        assert await queued == "ok"
        check_idle(t)
        await next_call_works(t)
        remove()
        await t.drain(timeout=60)


async def drive_on_progress(fault: Fault) -> None:
    for kind in listener_kinds(fault):
        once = Once(fault)
        t = Throttle(1, total=4, progress_step=25, on_progress=listener_of(fault, once, kind))
        first = started(t.execute(ok))  # its completion crosses 25 %
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        await check_listener_outcome(fault, kind, await first, "ok")
        assert await queued == "ok"
        snap = check_idle(t)
        assert snap.completed == 2  # the call was counted before the listener ran
        await next_call_works(t)
        await t.drain(timeout=60)


# -- a custom limit -----------------------------------------------------------------------

WRONG_LIMITS: tuple[object, ...] = (math.nan, -5, None, 10**30, math.inf, -math.inf, "3", object())


class FaultyLimit:
    """A user's Limit: misbehaves on its first sample; otherwise keeps the limit at 2."""

    def __init__(self, once: Once, wrong: object) -> None:
        self.once = once
        self.wrong = wrong

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        result: int = self.once.sync(2, wrong=self.wrong)
        return result

    def __repr__(self) -> str:
        raise RuntimeError("a user's repr that fails")


async def drive_limit(fault: Fault) -> None:
    for wrong in WRONG_LIMITS if fault is Fault.WRONG else (None,):
        once = Once(fault)
        t = Throttle(4, initial_concurrency=1, limit=FaultyLimit(once, wrong))
        first = started(t.execute(ok))
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        result = await first
        if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
            check_error(result, raised(fault), fault)
        else:
            assert result == "ok"
        assert await queued == "ok"
        snap = check_idle(t)
        assert 1 <= snap.concurrency <= 4
        await next_call_works(t)
        await t.aclose()


# -- rng: the throttle's jitter, Gradient's and Vegas's probes -----------------------------


class FaultyRandom(random.Random):
    def __init__(self, once: Once, wrong: object = math.nan) -> None:
        super().__init__(7)
        self.once = once
        self.wrong = wrong

    def uniform(self, a: float, b: float) -> float:
        normal = super().uniform(a, b)
        result: float = self.once.sync(normal, wrong=self.wrong)
        return result


async def drive_throttle_rng(fault: Fault) -> None:
    # The second draw happens while the loop's pacing timer admits the head waiter: an
    # interrupt there reaches that waiter; the others proceed.
    once = Once(fault, at=1)
    t = Throttle(
        4, min_dispatch_interval=1.0, jitter_fraction=0.5, rng=FaultyRandom(once, wrong="x")
    )
    calls = [started(t.execute(ok)) for _ in range(4)]
    results = [await c for c in calls]
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        expected = raised(fault)
        assert sum(isinstance(r, expected) for r in results) == 1, results
        assert results.count("ok") == 3
    else:
        assert results == ["ok"] * 4
    check_idle(t)
    await next_call_works(t)
    await t.aclose()


async def drive_limit_rng(fault: Fault, make: Callable[[random.Random], Any]) -> None:
    once = Once(fault)
    t = Throttle(4, initial_concurrency=1, limit=make(FaultyRandom(once)))

    async def timed(slot: Slot) -> str:
        await asyncio.sleep(0.1)
        return "ok"

    results = [await outcome(t.execute(timed)) for _ in range(3)]
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        expected = raised(fault)
        assert sum(isinstance(r, expected) for r in results) == 1, results
    else:
        assert results == ["ok"] * 3
    check_idle(t)
    await next_call_works(t)
    await t.aclose()


async def drive_gradient_rng(fault: Fault) -> None:
    await drive_limit_rng(fault, lambda rng: Gradient(probe_interval=1.0, rng=rng, window=1))


async def drive_vegas_rng(fault: Fault) -> None:
    await drive_limit_rng(fault, lambda rng: Vegas(probe_interval=1.0, rng=rng))


# -- retry: RetryConfig.retryable, a Retry's backoff, RetryConfig.backoff ------------------


async def drive_retryable(fault: Fault) -> None:
    once = Once(fault)
    t = Throttle(
        1,
        failure_threshold=100,
        retry=RetryConfig(
            max_attempts=3,
            backoff="fixed",
            base_delay=0.5,
            retryable=lambda exc: once.sync(True, wrong=None),
        ),
    )
    attempts: list[int] = []

    async def flaky_once(slot: Slot) -> str:
        attempts.append(slot.attempt)
        await asyncio.sleep(0)
        if slot.attempt == 0:
            raise Flaky
        return "ok"

    first = started(t.execute(flaky_once))
    queued = started(t.execute(ok))
    await asyncio.sleep(0)
    result = await first
    if fault is Fault.RAISE:
        check_error(result, FaultError, fault)  # the predicate's error, chaining the call's
        assert isinstance(result.__context__, Flaky)
    elif fault is Fault.WRONG:
        check_error(result, Flaky, fault)  # a falsy answer: not retried
    else:
        check_error(result, raised(fault), fault)
    assert attempts == [0]
    assert await queued == "ok"
    check_idle(t)
    await next_call_works(t)
    await t.aclose()


@dataclass
class FaultyBackoff:
    """A user's backoff schedule whose first delay misbehaves (EARLY_END: none at all)."""

    fault: Fault

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        if self.fault is Fault.EARLY_END:
            return iter(())
        once = Once(self.fault)
        return (once.sync(0.5, wrong=math.nan) for _ in itertools.count())


async def drive_retry_backoff(fault: Fault) -> None:
    t = Throttle(1, failure_threshold=100, retry=Retry(3, backoff=FaultyBackoff(fault)))

    async def always(slot: Slot) -> None:
        await asyncio.sleep(0)
        raise Flaky

    first = started(t.execute(always))
    queued = started(t.execute(ok))
    await asyncio.sleep(0)
    result = await first
    if fault in (Fault.WRONG, Fault.EARLY_END):
        check_error(result, BackoffError, fault)
        assert isinstance(result.__cause__, Flaky)
    else:
        check_error(result, raised(fault), fault)
    assert await queued == "ok"
    check_idle(t)
    await next_call_works(t)
    await t.aclose()


async def drive_retry_config_backoff(fault: Fault) -> None:
    assert fault is Fault.WRONG
    with pytest.raises(ConfigurationError, match="backoff"):
        RetryConfig(backoff="sometimes")  # type: ignore[arg-type]
    t = Throttle(1, retry=RetryConfig(backoff="fixed", base_delay=0.1))
    await next_call_works(t)
    await t.aclose()


# -- a user's circuit breaker (its predicates) -----------------------------------------


async def drive_circuit_breaker(fault: Fault) -> None:
    for way in ("execute", "acquire"):
        once = Once(fault)

        def record(exc: BaseException, once: Once = once) -> Any:
            return once.sync(True, wrong=NoBool())

        breaker = CircuitBreaker(failure_threshold=100, record=record)
        t = Throttle(1, failure_threshold=100, circuit_breaker=breaker)

        async def failing(t: Throttle = t, way: str = way) -> None:
            if way == "execute":
                await t.execute(fail)
            else:
                async with t.acquire():
                    await fail(Slot())

        first = started(failing())
        queued = started(t.execute(ok))
        await asyncio.sleep(0)
        result = await first
        if fault in (Fault.RAISE, Fault.WRONG):
            # guards' rule: a raising predicate counts a failure and its error reaches
            # the caller (a garbage answer fails when the breaker asks its truth value)
            assert isinstance(result, FaultError | ValueError), result
        else:
            check_error(result, raised(fault), fault)
        assert await queued == "ok"
        check_idle(t)
        await next_call_works(t)
        await t.aclose()


# -- a user's throttle store (the shared limit) ---------------------------------------------


class FaultyThrottleStore(MemoryThrottleStore):
    """Misbehaves once, in ``method``."""

    def __init__(self, once: Once, method: str, wrong: object = None) -> None:
        super().__init__()
        self.once = once
        self.method = method
        self.wrong = wrong

    async def throttle_admit(
        self, name: str, lease_id: str, ttl: float, **config: Any
    ) -> tuple[bool, float | None, Mapping[str, Any]]:
        if self.method == "throttle_admit" and self.once.fire():
            result: tuple[bool, float | None, Mapping[str, Any]] = await ainject(
                self.once.fault, wrong=self.wrong
            )
            return result
        return await super().throttle_admit(name, lease_id, ttl, **config)

    async def throttle_done(
        self, name: str, lease_id: str, outcome: str, epoch: int, **config: Any
    ) -> Mapping[str, Any]:
        if self.method == "throttle_done" and self.once.fire():
            await super().throttle_done(name, lease_id, outcome, epoch, **config)  # it ran...
            result: Mapping[str, Any] = await ainject(self.once.fault, wrong="garbage")
            return result  # ... and then the reply misbehaves
        return await super().throttle_done(name, lease_id, outcome, epoch, **config)


async def drive_throttle_store_admit(fault: Fault) -> None:
    # Admitting through the store misbehaves: the call fails with the store's error (a
    # garbage answer with a clear one), holds nothing, and the next call goes through.
    store = FaultyThrottleStore(Once(fault), "throttle_admit", wrong=("admitted", 1))
    t = Throttle(2, name="api", store=store)
    result = await outcome(t.execute(ok), DEADLINE)
    if fault is Fault.WRONG:
        check_error(result, HeadraceError, fault)
        assert isinstance(result, TypeError)
    elif fault is Fault.HANG:
        check_error(result, TimeoutError, fault)
    elif fault is Fault.CANCEL:
        check_error(result, HeadraceError, fault)  # never mistaken for a cancellation
        assert not isinstance(result, asyncio.CancelledError)
    else:
        check_error(result, raised(fault), fault)
    check_idle(t)
    await next_call_works(t)
    await t.drain(timeout=60)
    assert store.leases["api"] == set()  # every lease given back


async def drive_throttle_store_done(fault: Fault) -> None:
    # The outcome goes to the store without making the call wait: whatever the store
    # does there is logged, a hang is cancelled by drain(timeout=); the call's own
    # outcome stands. KeyboardInterrupt/SystemExit reach the next caller (before it is
    # admitted), or drain().
    interrupt = fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)
    error = expected_error(fault)
    store = FaultyThrottleStore(Once(fault), "throttle_done")
    t = Throttle(2, name="api", store=store)
    assert await outcome(t.execute(ok), DEADLINE) == "ok"
    await settle()
    check_idle(t)
    if interrupt:
        assert error is not None
        with pytest.raises(error):
            await t.execute(ok)
        check_idle(t)
    await next_call_works(t)
    assert await outcome(t.drain(timeout=60)) is None
    assert store.leases["api"] == set()
    if interrupt:
        store = FaultyThrottleStore(Once(fault), "throttle_done")
        t = Throttle(2, name="api", store=store)
        assert await t.execute(ok) == "ok"
        assert error is not None
        with pytest.raises(error):
            await t.drain(timeout=60)  # once the outcome was sent
        assert store.leases["api"] == set()


# -- a user's budget store ----------------------------------------------------------------


@dataclass
class Charge:
    start: float
    amount: float


class MemoryBudgetStore:
    """A well-behaved BudgetStore (relative ``retry_after``)."""

    def __init__(self) -> None:
        self.windows: dict[str, deque[Charge]] = {}
        self.charges: dict[str, Charge] = {}
        self.ids = itertools.count()

    def used(self, name: str, window: float = 60.0) -> float:
        now = asyncio.get_running_loop().time()
        charges = self.windows.setdefault(name, deque())
        while charges and charges[0].start + window <= now:
            charges.popleft()
        return sum(c.amount for c in charges)

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        await asyncio.sleep(0)
        now = asyncio.get_running_loop().time()
        used = self.used(name, window)
        if used + amount > cap:
            oldest = self.windows[name][0]
            return False, oldest.start + window - now, None
        entry = str(next(self.ids))
        charge = Charge(now, amount)
        self.windows[name].append(charge)
        self.charges[entry] = charge
        return True, None, entry

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        await asyncio.sleep(0)
        self.charges[entry].amount = amount


class FaultyStore(MemoryBudgetStore):
    """Misbehaves once, in ``method`` for budget ``target``."""

    def __init__(self, once: Once, method: str, target: str, wrong: object = None) -> None:
        super().__init__()
        self.once = once
        self.method = method
        self.target = target
        self.wrong = wrong

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        if self.method == "reserve" and name == self.target and self.once.fire():
            result: tuple[bool, float | None, str | None] = await ainject(
                self.once.fault, wrong=self.wrong
            )
            return result
        return await super().reserve(name, amount, cap, window)

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        if self.method == "adjust" and name == self.target and self.once.fire():
            await ainject(self.once.fault, wrong="garbage")
            return
        await super().adjust(name, entry, amount)


def shared_throttle(store: MemoryBudgetStore, **kw: Any) -> Throttle:
    return Throttle(
        2,
        budgets=[
            RequestBudget(100, 60.0, name="rpm", store=store),
            TokenBudget(1000, 60.0, name="tpm", store=store),
        ],
        **kw,
    )


async def drive_store_reserve(fault: Fault) -> None:
    # The request budget grants, then the token budget's reserve misbehaves: the call
    # fails with the store's error and its granted request is given back.
    store = FaultyStore(Once(fault), "reserve", "tpm", wrong=("granted", 1))
    t = shared_throttle(store)
    first = started(t.execute(ok, tokens=100), DEADLINE)
    queued = started(t.execute(ok, tokens=100))
    result = await first
    if fault is Fault.WRONG:
        check_error(result, HeadraceError, fault)
        assert isinstance(result, TypeError)
    elif fault is Fault.HANG:
        check_error(result, TimeoutError, fault)
    else:
        check_error(result, raised(fault), fault)
    assert await queued == "ok"
    await settle()  # a refund of a cancelled or interrupted call is sent without waiting
    assert store.used("rpm") == 1  # only the call that ran holds a request
    assert store.used("tpm") == 100
    check_idle(t)
    await next_call_works(t, tokens=10)
    await t.drain(timeout=60)
    if fault is Fault.WRONG:
        # A refusal whose retry_after is unusable: the call waits at most one window.
        for wrong in (math.nan, -1.0, "soon", math.inf, 1e300):
            once = Once(Fault.WRONG)
            refusing = FaultyStore(once, "reserve", "rpm", wrong=(False, wrong, None))
            u = shared_throttle(refusing)
            assert await outcome(u.execute(ok), 120) == "ok"
            check_idle(u)
            await u.aclose()


async def drive_store_adjust(fault: Fault) -> None:
    # 1. Reconciling a call that ran and recorded its tokens: isolated (logged), except an
    # interrupt (the caller's) or a hang (the caller's deadline).
    store = FaultyStore(Once(fault), "adjust", "tpm")
    t = shared_throttle(store)

    async def records(slot: Slot) -> str:
        slot.record_tokens(50)
        return "ok"

    first = started(t.execute(records, tokens=100), DEADLINE)
    queued = started(t.execute(records, tokens=100))
    result = await first
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        check_error(result, raised(fault), fault)
    elif fault is Fault.HANG:
        check_error(result, TimeoutError, fault)
    else:
        assert result == "ok"
    assert await queued == "ok"
    check_idle(t)
    await next_call_works(t, tokens=10)
    await t.drain(timeout=60)

    # 2. Giving back the grants of a call cancelled while it waited: sent without waiting;
    # an interrupt there reaches drain(), a hang is cancelled by drain(timeout=).
    store = FaultyStore(Once(fault), "adjust", "rpm")
    t = shared_throttle(store)
    assert await t.execute(ok, tokens=1000) == "ok"  # the token window is full
    waiter = started(t.execute(ok, tokens=10), 5.0)  # granted a request, waits for tokens
    check_error(await waiter, TimeoutError, fault)
    await settle()
    check_idle(t)
    drained = await outcome(t.drain(timeout=60))
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        check_error(drained, raised(fault), fault)
    else:
        assert drained is None
    u = shared_throttle(store)
    assert await outcome(u.execute(ok, tokens=0), 120) == "ok"
    await u.aclose()


async def drive_store_check_name(fault: Fault) -> None:
    once = Once(fault)

    class Named(MemoryBudgetStore):
        def check_name(self, name: str) -> None:
            once.sync(None, wrong="garbage")

    store = Named()
    try:
        TokenBudget(100, name="tpm", store=store)
        result: object = "built"
    except BaseException as exc:
        result = exc
    if fault is Fault.WRONG:
        assert result == "built"  # its return value means nothing
    else:
        check_error(result, raised(fault), fault)
    t = Throttle(2, token_budget=TokenBudget(100, name="tpm", store=store))
    await next_call_works(t, tokens=10)
    await t.aclose()


# -- the table ----------------------------------------------------------------------------

STORE_POINTS = (
    "TokenBudget.store",
    "RequestBudget.store",
    "Throttle.budgets",
    "Throttle.token_budget",
    "ThrottleConfig.budgets",
    "ThrottleConfig.token_budget",
)

POINTS = [
    Point("Throttle.execute.fn", ASYNC_FAULTS, drive_execute_fn),
    Point("Throttle.call.fn", ASYNC_FAULTS, drive_call_fn),
    Point("Throttle.wrap.fn", ASYNC_FAULTS, drive_wrap_fn),
    Point("Throttle.acquire (body)", ASYNC_FAULTS, drive_acquire_body),
    Point(
        "Throttle.is_failure",
        SYNC_FAULTS,
        drive_is_failure,
        also=(
            "Throttle.failure_predicate",
            "ThrottleConfig.is_failure",
            "ThrottleConfig.failure_predicate",
            "CircuitBreakerConfig.build.ignore",
        ),
    ),
    Point(
        "Throttle.retry_after", SYNC_FAULTS, drive_retry_after, also=("ThrottleConfig.retry_after",)
    ),
    Point(
        "Throttle.on_event",
        ASYNC_FAULTS,
        drive_on_event,
        also=(
            "Throttle.on_state_change",
            "ThrottleConfig.on_event",
            "ThrottleConfig.on_state_change",
        ),
    ),
    Point("ServerBusy.retry_after", SYNC_FAULTS, drive_server_busy_retry_after),
    Point("Throttle.add_listener.callback", ASYNC_FAULTS, drive_add_listener),
    Point(
        "Throttle.on_progress",
        ASYNC_FAULTS,
        drive_on_progress,
        also=("ThrottleConfig.on_progress",),
    ),
    Point(
        "Throttle.limit", SYNC_FAULTS, drive_limit, also=("ThrottleConfig.limit", "limit.__repr__")
    ),
    Point("Throttle.rng", SYNC_FAULTS, drive_throttle_rng, also=("ThrottleConfig.rng",)),
    Point("Gradient.rng", SYNC_FAULTS, drive_gradient_rng),
    Point("Vegas.rng", SYNC_FAULTS, drive_vegas_rng),
    Point("RetryConfig.retryable", SYNC_FAULTS, drive_retryable),
    Point(
        "Throttle.retry",
        (*SYNC_FAULTS, Fault.EARLY_END),
        drive_retry_backoff,
        also=("ThrottleConfig.retry", "Retry.backoff"),
    ),
    Point("RetryConfig.backoff", (Fault.WRONG,), drive_retry_config_backoff),
    Point(
        "Throttle.circuit_breaker",
        SYNC_FAULTS,
        drive_circuit_breaker,
        also=("ThrottleConfig.circuit_breaker", "CircuitBreaker.record"),
    ),
    Point("BudgetStore.reserve", ASYNC_FAULTS, drive_store_reserve, also=STORE_POINTS),
    Point("BudgetStore.adjust", ASYNC_FAULTS, drive_store_adjust),
    Point(
        "ThrottleStore.throttle_admit",
        ASYNC_FAULTS,
        drive_throttle_store_admit,
        also=("Throttle.store", "ThrottleConfig.store"),
    ),
    Point("ThrottleStore.throttle_done", ASYNC_FAULTS, drive_throttle_store_done),
    Point("BudgetStore.check_name", SYNC_FAULTS, drive_store_check_name),
]

# The signature walk also looks for user objects the throttle calls into: budgets (their
# stores), a Retry or a CircuitBreaker (their predicates and schedules).
WORDS = (*CALLABLE_WORDS, "Budget", "Retry", "CircuitBreaker")


def test_every_callable_parameter_is_in_the_table() -> None:
    assert missing_points(headrace_throttle, POINTS, words=WORDS) == []


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "headrace")
    run_injection(point.drive, fault, start=start)
