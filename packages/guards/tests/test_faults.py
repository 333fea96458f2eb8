"""Fault injection at every point where headrace-guards calls user code.

Each driver builds a guard with one misbehaving callback, runs it under a caller's deadline,
and checks the contract: the run ends, the user's error (or a headrace error chaining it)
reaches the caller, nothing is left held (bulkhead slots and leases, half-open permits,
limiter reservations, in-flight counts, background tasks), and the next call works.

Listener faults: an ``Exception`` or a ``CancelledError`` of a listener's own is logged
and isolated; ``KeyboardInterrupt``/``SystemExit`` raised by a sync listener reaches the
caller whose call emitted the event (the guard's state change is complete by then); an
async listener is always isolated, and one that hangs is cancelled by ``aclose()`` under
the caller's deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

import headrace_guards
import headrace_guards.compat
from headrace_core import BackoffError
from headrace_guards import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    Fallback,
    GuardTimeout,
    Hedge,
    RateLimited,
    RateLimiter,
    Retry,
    Timeout,
    pipeline,
)
from headrace_guards.backoff import fixed
from headrace_guards.compat import circuit_breaker, limited, with_timeout
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
    run_injection,
    settle,
)

#: The caller's deadline around every injected call (a HANG ends there).
DEADLINE = 5.0
#: Sync callbacks (they cannot hang), plus an iterator that ends early.
SCHEDULE_FAULTS = (*SYNC_FAULTS, Fault.EARLY_END)
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    """The guarded service's own failure (not an injected fault)."""


async def ok(*args: Any, **kwargs: Any) -> str:
    return "ok"


async def boom(*args: Any, **kwargs: Any) -> str:
    raise Boom("service down")


def caller_sees(
    fault: Fault, *, wrong: type[BaseException] | None, hang: type[BaseException] | None
) -> type[BaseException] | None:
    """What the caller must get for ``fault`` (None: a normal return)."""
    if fault is Fault.WRONG:
        return wrong
    if fault is Fault.HANG:
        return hang
    return expected_error(fault)


async def outcome(
    fault: Fault,
    call: Callable[[], Awaitable[Any]],
    *,
    wrong: type[BaseException] | None = None,
    hang: type[BaseException] | None = TimeoutError,
) -> Any:
    """Run ``call()`` under the caller's deadline; check the error (or return the value)."""
    expected = caller_sees(fault, wrong=wrong, hang=hang)
    if expected is None:
        async with asyncio.timeout(DEADLINE):
            return await call()
    with pytest.raises(expected) as info:
        async with asyncio.timeout(DEADLINE):
            await call()
    return info.value


def user_fn(fault: Fault) -> Callable[..., Any]:
    """The guarded function, misbehaving: WRONG is a sync function (not awaitable)."""
    if fault is Fault.WRONG:

        def compute(*args: Any, **kwargs: Any) -> int:
            return 42

        return compute

    async def fn(*args: Any, **kwargs: Any) -> Any:
        return await ainject(fault)

    return fn


class Once:
    """A switch that fires once: ``if once(): misbehave``."""

    def __init__(self) -> None:
        self.armed = False

    def arm(self) -> None:
        self.armed = True

    def __call__(self) -> bool:
        fired, self.armed = self.armed, False
        return fired


class FaultyClock:
    """A guard clock (the loop's time) whose next reading misbehaves once armed."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.once = Once()

    def __call__(self) -> float:
        if self.once():
            return inject(self.fault, wrong=math.nan)  # type: ignore[no-any-return]
        return asyncio.get_running_loop().time()


def clock_error(fault: Fault) -> type[BaseException] | None:
    return ValueError if fault is Fault.WRONG else expected_error(fault)


# -- idle checks and "the next call works" -------------------------------------------------


def timeout_idle(guard: Timeout) -> None:
    assert not guard._entered
    deadlines = guard._deadlines
    assert deadlines is None or all(entry[1] is None for entry in deadlines.entries)


def bulkhead_idle(guard: Bulkhead) -> None:
    snap = guard.snapshot()
    assert (snap.in_flight, snap.waiting) == (0, 0), snap
    assert not guard._leases
    assert not guard._background.tasks
    slots = guard._decl.slots.peek()
    assert slots is None or (slots.returned, slots.releasing) == ({}, {})


def limiter_idle(guard: RateLimiter) -> None:
    assert guard.snapshot().waiting == 0
    assert not guard._background.tasks


def breaker_idle(guard: CircuitBreaker) -> None:
    assert guard.snapshot().half_open_in_flight == 0
    assert not guard._entered
    assert not guard._background.tasks


async def closes_again(breaker: CircuitBreaker) -> None:
    """The breaker recovers: wait out OPEN, probe, and end CLOSED."""
    for _ in range(4):
        state = breaker.state
        if state is CLOSED:
            break
        if state is OPEN:
            await asyncio.sleep(breaker.snapshot().retry_after)
        try:
            assert await breaker.call(ok) == "ok"
        except CircuitOpenError:
            await asyncio.sleep(0.1)
    assert breaker.state is CLOSED
    assert await breaker.call(ok) == "ok"


async def half_open(breaker: CircuitBreaker) -> None:
    """Trip the breaker with a plain failure and wait until it admits a probe."""
    with pytest.raises(Boom):
        await breaker.call(boom)
    await asyncio.sleep(breaker.snapshot().retry_after)
    if breaker._store is None:  # a shared breaker learns its state at the next admission
        assert breaker.state is HALF_OPEN


# -- the guarded function of every guard -----------------------------------------------------


async def drive_timeout_fn(fault: Fault) -> None:
    guard = Timeout(1.0)  # its own deadline ends a HANG before the caller's
    await outcome(fault, lambda: guard.call(user_fn(fault)), wrong=TypeError, hang=GuardTimeout)
    timeout_idle(guard)
    assert await guard.call(ok) == "ok"
    await guard.aclose()


async def drive_bulkhead_fn(fault: Fault) -> None:
    guard = Bulkhead(1)
    await outcome(fault, lambda: guard.call(user_fn(fault)), wrong=TypeError)
    bulkhead_idle(guard)
    assert await guard.call(ok) == "ok"
    async with guard:
        pass
    bulkhead_idle(guard)
    await guard.aclose()


async def drive_bulkhead_store_fn(fault: Fault) -> None:
    store = LeaseStore()
    guard = Bulkhead(1, name=f"faults-fn-{fault.value}", store=store)
    await outcome(fault, lambda: guard.call(user_fn(fault)), wrong=TypeError)
    await settle(guard)
    bulkhead_idle(guard)
    assert store.leases == set()
    assert await guard.call(ok) == "ok"
    assert store.leases == set()


async def drive_breaker_fn(fault: Fault) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1)
    # CLOSED (the fast path), then HALF_OPEN (a probe holding a permit).
    await outcome(fault, lambda: breaker.call(user_fn(fault)), wrong=TypeError)
    breaker_idle(breaker)
    await closes_again(breaker)
    await half_open(breaker)
    await outcome(fault, lambda: breaker.call(user_fn(fault)), wrong=TypeError)
    breaker_idle(breaker)
    await closes_again(breaker)
    await breaker.aclose()


async def drive_breaker_store_fn(fault: Fault) -> None:
    store = ProbeStore()
    breaker = CircuitBreaker("faults-fn", failure_threshold=1, recovery_timeout=1, store=store)
    await half_open(breaker)
    await outcome(fault, lambda: breaker.call(user_fn(fault)), wrong=TypeError)
    await settle(breaker)
    breaker_idle(breaker)
    assert store.ho_taken == 0
    await closes_again(breaker)


async def drive_retry_fn(fault: Fault) -> None:
    retry = Retry(3, backoff=fixed(0.1))
    await outcome(fault, lambda: retry.call(user_fn(fault)), wrong=TypeError)
    attempts = retry.snapshot().attempts
    assert attempts == (3 if fault is Fault.RAISE else 1)  # only the user's Exception is retried
    assert await retry.call(ok) == "ok"
    await retry.aclose()


async def drive_limiter_fn(fault: Fault) -> None:
    limiter = RateLimiter(10)
    await outcome(fault, lambda: limiter.call(user_fn(fault)), wrong=TypeError)
    limiter_idle(limiter)
    assert await limiter.call(ok) == "ok"
    await limiter.aclose()


async def drive_fallback_fn(fault: Fault) -> None:
    fallback = Fallback(lambda exc, *args: "fallback")
    if fault is Fault.RAISE:
        # The handler answers the user's Exception, and nothing else.
        assert await fallback.call(user_fn(fault)) == "fallback"
    else:
        await outcome(fault, lambda: fallback.call(user_fn(fault)), wrong=TypeError)
    assert fallback.snapshot().fallbacks == (1 if fault is Fault.RAISE else 0)
    assert await fallback.call(ok) == "ok"
    await fallback.aclose()


async def drive_hedge_fn(fault: Fault) -> None:
    hedge = Hedge(0.5, max_hedged=2)
    await outcome(fault, lambda: hedge.call(user_fn(fault)), wrong=TypeError)
    assert await hedge.call(ok) == "ok"
    await hedge.aclose()  # the harness checks that no attempt is left running


def full_pipeline() -> headrace_guards.Pipeline:
    return pipeline(
        Retry(2, backoff=fixed(0)),
        CircuitBreaker(failure_threshold=5),
        RateLimiter(100),
        Timeout(10),
        Bulkhead(2),
    )


def pipeline_idle(guards: headrace_guards.Pipeline) -> None:
    _retry, breaker, limiter, timeout, bulkhead = guards.guards
    breaker_idle(breaker)
    limiter_idle(limiter)
    timeout_idle(timeout)
    bulkhead_idle(bulkhead)


async def drive_pipeline_fn(fault: Fault) -> None:
    guards = full_pipeline()
    await outcome(fault, lambda: guards.call(user_fn(fault)), wrong=TypeError)
    pipeline_idle(guards)
    assert await guards.call(ok) == "ok"
    empty = pipeline()
    await outcome(fault, lambda: empty.call(user_fn(fault)), wrong=TypeError)
    await guards.aclose()


# -- breaker predicates, schedule and clock --------------------------------------------------


def drive_breaker_predicate(which: str) -> Callable[[Fault], Awaitable[None]]:
    async def drive(fault: Fault) -> None:
        once = Once()

        def predicate(value: object) -> Any:
            if once():
                return inject(fault, wrong="garbage")
            return which == "record"

        kwargs: dict[str, Any] = {which: predicate}
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, **kwargs)
        on_result = which == "failure_on_result"
        # A truthy garbage answer: record and failure_on_result count a failure, ignore a
        # neutral call; the call's own outcome reaches the caller either way.
        wrong = None if on_result else Boom

        async def probe() -> Any:
            once.arm()
            return await breaker.call(ok if on_result else boom)

        for phase in ("closed", "half_open"):
            if phase == "half_open":
                await half_open(breaker)
            value = await outcome(fault, probe, wrong=wrong)
            if on_result and fault is Fault.WRONG:
                assert value == "ok"
            breaker_idle(breaker)
            await closes_again(breaker)
        # async with: the same classification (no result predicate there).
        if not on_result:
            await half_open(breaker)

            async def body() -> None:
                once.arm()
                async with breaker:
                    raise Boom("in the block")

            await outcome(fault, body, wrong=wrong)
            breaker_idle(breaker)
            await closes_again(breaker)
        await breaker.aclose()

    return drive


class FaultySchedule:
    """A custom backoff: ``first`` delays, then the fault (each ``delays()`` starts over)."""

    def __init__(self, fault: Fault, *first: float) -> None:
        self.fault = fault
        self.first = first

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        yield from self.first
        if self.fault is Fault.EARLY_END:
            return
        if self.fault is Fault.WRONG:
            yield math.nan
            return
        inject(self.fault)


def schedule_error(fault: Fault) -> type[BaseException] | None:
    return BackoffError if fault in (Fault.WRONG, Fault.EARLY_END) else expected_error(fault)


async def drive_breaker_open_backoff(fault: Fault) -> None:
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=1, open_backoff=FaultySchedule(fault, 2.0)
    )
    await half_open(breaker)
    with pytest.raises(Boom):
        await breaker.call(boom)  # re-opens for the schedule's first delay
    assert breaker.snapshot().retry_after == pytest.approx(2.0)
    await asyncio.sleep(2.0)
    with pytest.raises(schedule_error(fault)) as info:  # type: ignore[arg-type]
        await breaker.call(boom)
    if isinstance(info.value, BackoffError):
        assert isinstance(info.value.__cause__, Boom)  # the probe's error, chained
    snap = breaker.snapshot()
    assert (snap.state, snap.half_open_in_flight) == (OPEN, 0)
    assert snap.retry_after == pytest.approx(1.0)  # recovery_timeout instead
    await closes_again(breaker)
    await breaker.aclose()


async def drive_breaker_clock(fault: Fault) -> None:
    clock = FaultyClock(fault)
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)

    async def probe() -> str:
        clock.once.arm()  # the reading at the end of this call misbehaves
        return "ok"

    await half_open(breaker)
    await outcome(fault, lambda: breaker.call(probe), wrong=ValueError)
    breaker_idle(breaker)
    await closes_again(breaker)
    await breaker.aclose()


# -- custom stores -------------------------------------------------------------------------


class StoreFaults:
    """Which store method misbehaves next, and whether before or after doing its work."""

    def __init__(self) -> None:
        self.method: str | None = None
        self.fault = Fault.RAISE
        self.after = False

    def set(self, method: str, fault: Fault, *, after: bool) -> None:
        self.method, self.fault, self.after = method, fault, after

    async def hit(self, method: str, when_after: bool, wrong: object) -> tuple[bool, Any]:
        """Misbehave if armed for ``method`` at this moment: ``(True, value to return)``."""
        if self.method != method or self.after != when_after:
            return False, None
        self.method = None
        return True, await ainject(self.fault, wrong=wrong)


class ProbeStore:
    """A breaker store that hands out half-open permits, with injectable faults."""

    def __init__(self) -> None:
        self.faults = StoreFaults()
        self.state = CLOSED
        self.generation = 0
        self.failures = 0
        self.open_until = 0.0
        self.ho_taken = 0
        self.checked: list[str] = []
        self.admits = 0

    def check_name(self, name: str) -> None:
        self.checked.append(name)

    async def admit(self, name: str, now: float, **config: Any) -> Any:
        self.admits += 1
        hit, value = await self.faults.hit("admit", False, "garbage")
        if hit:
            return value
        if self.state is OPEN:
            if now >= self.open_until:
                self.state, self.generation = HALF_OPEN, self.generation + 1
                self.ho_taken = 0
            else:
                return False, self.generation, OPEN, self.open_until - now
        if self.state is HALF_OPEN:
            if self.ho_taken >= config["half_open_max_calls"]:
                return False, self.generation, HALF_OPEN, 0.0
            self.ho_taken += 1
        return True, self.generation, self.state, 0.0

    async def record(
        self, name: str, generation: int, outcome: str, duration: float, **config: Any
    ) -> Any:
        hit, value = await self.faults.hit("record", False, "garbage")
        if hit:
            return value
        if generation == self.generation:
            if self.state is HALF_OPEN:
                self.ho_taken -= 1
            if outcome in ("failure", "slow_failure"):
                self.failures += 1
                if self.state is HALF_OPEN or self.failures >= config["threshold"]:
                    self.state, self.generation = OPEN, self.generation + 1
                    loop = asyncio.get_running_loop()
                    self.open_until = loop.time() + config["recovery_timeout"]
            elif outcome in ("success", "slow"):
                self.failures = 0
                if self.state is HALF_OPEN:
                    self.state, self.generation = CLOSED, self.generation + 1
        hit, value = await self.faults.hit("record", True, "garbage")
        return value if hit else self.state

    async def force(self, name: str, state: Any, **config: Any) -> None:
        hit, _ = await self.faults.hit("force", False, "garbage")
        if not hit:
            self.state, self.open_until = state, math.inf

    async def reset(self, name: str) -> None:
        hit, _ = await self.faults.hit("reset", False, "garbage")
        if not hit:
            self.state, self.failures, self.ho_taken = CLOSED, 0, 0

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        return {"state": self.state, "ho_taken": self.ho_taken}


class LeaseStore:
    """A bulkhead store with idempotent release and injectable faults."""

    def __init__(self) -> None:
        self.faults = StoreFaults()
        self.leases: set[str] = set()
        self.spent: set[str] = set()
        self.checked: list[str] = []

    def check_name(self, name: str) -> None:
        self.checked.append(name)

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> Any:
        if lease_id in self.spent or len(self.leases) >= limit:
            return False
        self.leases.add(lease_id)
        hit, value = await self.faults.hit("acquire", True, "yes")
        return value if hit else True

    async def release(self, name: str, lease_id: str) -> None:
        self.spent.add(lease_id)
        self.leases.discard(lease_id)
        await self.faults.hit("release", True, "garbage")

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        return lease_id in self.leases

    async def in_flight(self, name: str) -> int:
        return len(self.leases)


class CarryingLeaseStore(LeaseStore):
    """A lease store whose ``acquire`` gives back the leases of ``release=`` first.

    A fault armed for ``acquire`` before hits before anything is given back or taken; one
    armed after hits once both are done (the reply is lost).
    """

    def __init__(self) -> None:
        super().__init__()
        self.carried: list[str] = []

    async def acquire(
        self, name: str, limit: int, lease_id: str, ttl: float, *, release: Sequence[str] = ()
    ) -> Any:
        hit, value = await self.faults.hit("acquire", False, "yes")
        if hit:
            return value
        for lease in release:
            self.carried.append(lease)
            self.spent.add(lease)
            self.leases.discard(lease)
        return await super().acquire(name, limit, lease_id, ttl)


class TatStore:
    """A rate store (GCRA on the loop's clock) with injectable faults."""

    def __init__(self) -> None:
        self.faults = StoreFaults()
        self.tat = 0.0
        self.refunds = 0
        self.checked: list[str] = []

    def check_name(self, name: str) -> None:
        self.checked.append(name)

    async def reserve(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> Any:
        hit, value = await self.faults.hit("reserve", False, 0.5)
        if hit:
            return value
        now = asyncio.get_running_loop().time()
        interval = per / rate
        new_tat = max(self.tat, now) + cost * interval
        wait = max(0.0, new_tat - now - burst * interval)
        if max_wait is not None and wait > max_wait:
            return False, wait
        self.tat = new_tat
        return True, wait

    async def refund(self, name: str, rate: float, per: float, cost: int) -> None:
        self.refunds += 1
        self.tat -= cost * per / rate
        await self.faults.hit("refund", True, "garbage")


async def drive_breaker_store_admit(fault: Fault) -> None:
    store = ProbeStore()
    breaker = CircuitBreaker("faults-admit", failure_threshold=1, recovery_timeout=1, store=store)
    await half_open(breaker)
    store.faults.set("admit", fault, after=False)
    await outcome(fault, lambda: breaker.call(ok), wrong=TypeError)
    await settle(breaker)
    breaker_idle(breaker)
    assert store.ho_taken == 0
    await closes_again(breaker)


async def cancelled_probe(breaker: CircuitBreaker, store: ProbeStore, fault: Fault) -> None:
    """Half-open ``breaker``, then cancel its probe: a neutral record, which ``fault`` hits."""
    await half_open(breaker)
    store.faults.set("record", fault, after=True)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 10))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def drive_breaker_store_record(fault: Fault) -> None:
    store = ProbeStore()
    breaker = CircuitBreaker("faults-record", failure_threshold=1, recovery_timeout=1, store=store)
    await half_open(breaker)
    store.faults.set("record", fault, after=True)  # recorded, then the reply is lost
    await outcome(fault, lambda: breaker.call(ok), wrong=TypeError)
    await settle(breaker)
    breaker_idle(breaker)
    assert (store.ho_taken, store.state) == (0, CLOSED)
    await closes_again(breaker)
    # A neutral probe (a cancelled caller) while the store misbehaves: never waited on.
    await cancelled_probe(breaker, store, fault)
    await settle(breaker)
    breaker_idle(breaker)
    assert store.ho_taken == 0
    error = expected_error(fault)
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        # the neutral record's interrupt, kept for the next caller (before the store is asked)
        assert error is not None
        admitted = store.admits
        with pytest.raises(error):
            await breaker.call(ok)
        assert store.admits == admitted
    await closes_again(breaker)
    await cancelled_probe(breaker, store, fault)
    if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
        assert error is not None
        with pytest.raises(error):
            await breaker.aclose()  # or aclose(), once the record has ended
    await breaker.aclose()


async def drive_breaker_store_reset(fault: Fault) -> None:
    store = ProbeStore()
    breaker = CircuitBreaker("faults-reset", failure_threshold=1, store=store)
    for method, action, state in (
        ("force", breaker.force_open, OPEN),
        ("reset", breaker.reset, CLOSED),
    ):
        before = breaker.snapshot()
        store.faults.set(method, fault, after=False)
        await outcome(fault, action, wrong=None)
        if fault is not Fault.WRONG:
            # The store refused the change: the breaker's own state is left as it was.
            assert breaker.snapshot() == before
        await action()
        assert breaker.snapshot().state is state
    await closes_again(breaker)


async def drive_store_check_name(fault: Fault) -> None:
    def check(name: str) -> Any:
        return inject(fault, wrong="garbage")

    builds: list[tuple[Any, Callable[[Any], Any]]] = [
        (ProbeStore(), lambda store: CircuitBreaker("checked", store=store)),
        (LeaseStore(), lambda store: Bulkhead(1, name="faults-checked", store=store)),
        (TatStore(), lambda store: RateLimiter(1, name="checked", store=store)),
    ]
    for store, build in builds:
        store.check_name = check
        error = expected_error(fault)
        if error is None:
            build(store)  # a garbage answer is not a refusal
            continue
        with pytest.raises(error):
            build(store)


async def drive_bulkhead_store_acquire(fault: Fault) -> None:
    store = LeaseStore()
    guard = Bulkhead(1, name="faults-acquire", store=store)
    store.faults.set("acquire", fault, after=True)  # the slot is taken, the reply is lost
    await outcome(fault, lambda: guard.call(ok), wrong=TypeError)
    await settle(guard)  # the unknown lease is released in the background
    bulkhead_idle(guard)
    assert store.leases == set()
    assert await guard.call(ok) == "ok"
    store.faults.set("acquire", fault, after=True)
    await outcome(fault, guard.acquire, wrong=TypeError)
    await guard.aclose()
    bulkhead_idle(guard)
    assert store.leases == set()


async def drive_bulkhead_store_release(fault: Fault) -> None:
    store = LeaseStore()
    guard = Bulkhead(1, name="faults-release", store=store)
    store.faults.set("release", fault, after=True)  # released, then the reply is lost
    await outcome(fault, lambda: guard.call(ok), wrong=None)
    await settle(guard)
    bulkhead_idle(guard)
    assert store.leases == set()
    assert await guard.call(ok) == "ok"

    async def block() -> None:
        store.faults.set("release", fault, after=True)
        async with guard:
            pass

    await outcome(fault, block, wrong=None)
    await guard.aclose()
    bulkhead_idle(guard)
    assert store.leases == set()


async def drive_bulkhead_store_carry(fault: Fault) -> None:
    # An acquire carrying the release of the call before it misbehaves, before the store
    # did anything or after it did everything: both leases end up released.
    for after in (False, True):
        store = CarryingLeaseStore()
        guard = Bulkhead(1, name=f"faults-carry-{after}", max_wait=0, store=store)
        assert await guard.call(ok) == "ok"
        assert len(store.leases) == 1  # given back, for the next acquire to carry
        store.faults.set("acquire", fault, after=after)
        await outcome(fault, functools.partial(guard.call, ok), wrong=TypeError)
        await settle(guard)  # what the failed acquire carried is released in the background
        bulkhead_idle(guard)
        assert store.leases == set()
        assert len(store.carried) == (1 if after else 0)  # the store gave it back, or not
        assert await guard.call(ok) == "ok"
        assert await guard.call(ok) == "ok"
        assert len(store.carried) == (2 if after else 1)  # carried by the next acquire
        await guard.aclose()
        bulkhead_idle(guard)
        assert store.leases == set()


async def drive_bulkhead_store_background_release(fault: Fault) -> None:
    # No acquire comes to carry a slot given back: its release is sent on its own, in the
    # background, and misbehaves there (released, then the reply is lost). The caller never
    # waits for it; KeyboardInterrupt/SystemExit reach the next caller, or aclose().
    store = CarryingLeaseStore()
    guard = Bulkhead(1, name="faults-background-release", max_wait=0, store=store)
    interrupt = fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)
    store.faults.set("release", fault, after=True)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await guard.call(ok) == "ok"
    assert loop.time() == start  # a HANG of the release never held the caller
    await settle(guard)
    bulkhead_idle(guard)
    assert store.leases == set()
    error = expected_error(fault)
    if interrupt:
        assert error is not None
        with pytest.raises(error):
            await guard.call(ok)  # raised before it took anything
        bulkhead_idle(guard)
        assert store.leases == set()
    assert await guard.call(ok) == "ok"
    store.faults.set("release", fault, after=True)
    async with guard:  # carries the release of the call before
        pass
    if interrupt:
        assert error is not None
        with pytest.raises(error):
            await guard.aclose()  # after its release ended
    else:
        await guard.aclose()
    bulkhead_idle(guard)
    assert store.leases == set()
    await guard.aclose()  # raised once


async def drive_limiter_store_reserve(fault: Fault) -> None:
    store = TatStore()
    limiter = RateLimiter(10, name="faults-reserve", store=store)
    store.faults.set("reserve", fault, after=False)
    await outcome(fault, lambda: limiter.call(ok), wrong=TypeError)
    limiter_idle(limiter)
    assert await limiter.call(ok) == "ok"
    await limiter.aclose()


async def drive_limiter_store_refund(fault: Fault) -> None:
    store = TatStore()
    limiter = RateLimiter(1, burst=1, name="faults-refund", store=store)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())  # reserves, then waits 1 s
    await asyncio.sleep(0.1)
    store.faults.set("refund", fault, after=True)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter  # at once: the refund goes on in the background
    async with asyncio.timeout(60):
        await settle(limiter)  # bounded, even for a refund that hangs
    limiter_idle(limiter)
    assert store.refunds == 1
    error = expected_error(fault)
    interrupt = fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)
    if interrupt:
        # the refund's interrupt reaches the next caller, before it reserves anything
        assert error is not None
        with pytest.raises(error):
            await limiter.call(ok)
        limiter_idle(limiter)
    assert await limiter.call(ok) == "ok"
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.1)
    store.faults.set("refund", fault, after=True)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    if interrupt:
        assert error is not None
        with pytest.raises(error):
            await limiter.aclose()  # or aclose(), once the refund has ended
    await limiter.aclose()


# -- retry ---------------------------------------------------------------------------------


class Flaky:
    """Fails with ``error`` the first ``failures`` times, then returns "ok"."""

    def __init__(self, failures: int, error: Callable[[], BaseException] = Boom) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return "ok"


async def drive_retry_on(fault: Fault) -> None:
    once = Once()

    def retry_on(exc: BaseException) -> Any:
        if once():
            return inject(fault, wrong="garbage")
        return True

    retry = Retry(3, backoff=fixed(0.1), retry_on=retry_on)
    once.arm()
    value = await outcome(fault, lambda: retry.call(Flaky(1)), wrong=None)
    if fault is Fault.WRONG:
        assert value == "ok"  # a truthy answer retries
    assert await retry.call(Flaky(1)) == "ok"


async def drive_retry_on_result(fault: Fault) -> None:
    once = Once()

    def again(result: object) -> Any:
        if once():
            return inject(fault, wrong="garbage")
        return result == "first"

    results = iter(["first", "ok"])

    async def fn() -> str:
        return next(results)

    retry = Retry(3, backoff=fixed(0.1), retry_on_result=again)
    once.arm()
    value = await outcome(fault, lambda: retry.call(fn), wrong=None)
    if fault is Fault.WRONG:
        assert value == "ok"
    assert await retry.call(ok) == "ok"


async def drive_retry_backoff(fault: Fault) -> None:
    retry = Retry(5, backoff=FaultySchedule(fault, 0.1))
    flaky = Flaky(10)
    with pytest.raises(schedule_error(fault)) as info:  # type: ignore[arg-type]
        await retry.call(flaky)
    if isinstance(info.value, BackoffError):
        assert isinstance(info.value.__cause__, Boom)  # the last attempt's error, chained
    assert flaky.calls == 2
    assert await retry.call(ok) == "ok"


class FaultyRandom(random.Random):
    def __init__(self, fault: Fault) -> None:
        super().__init__(7)
        self.fault = fault
        self.once = Once()

    def random(self) -> float:
        if self.once():
            return inject(self.fault, wrong=math.nan)  # type: ignore[no-any-return]
        return super().random()


async def drive_retry_rng(fault: Fault) -> None:
    rng = FaultyRandom(fault)
    retry = Retry(3, rng=rng)  # the default schedule, full jitter, draws from rng
    rng.once.arm()
    await outcome(fault, lambda: retry.call(Flaky(1)), wrong=BackoffError)
    assert await retry.call(Flaky(1)) == "ok"


async def drive_retry_clock(fault: Fault) -> None:
    clock = FaultyClock(fault)
    retry = Retry(3, deadline=10, backoff=fixed(0.1), clock=clock)

    async def fn() -> str:
        if not clock.once.armed and fn.calls == 0:  # type: ignore[attr-defined]
            fn.calls += 1  # type: ignore[attr-defined]
            clock.once.arm()  # the deadline check before the retry reads it
            raise Boom("first")
        return "ok"

    fn.calls = 0  # type: ignore[attr-defined]
    await outcome(fault, lambda: retry.call(fn), wrong=ValueError)
    assert await retry.call(ok) == "ok"


class HintedError(Exception):
    """A user's error whose ``retry_after`` is computed (and may misbehave)."""

    fault = Fault.RAISE

    @property
    def retry_after(self) -> Any:
        return inject(self.fault, wrong="soon")


async def drive_error_retry_after(fault: Fault) -> None:
    class Hinted(HintedError):
        pass

    Hinted.fault = fault
    retry = Retry(3, backoff=fixed(0.1))
    value = await outcome(fault, lambda: retry.call(Flaky(1, Hinted)), wrong=None)
    if fault is Fault.WRONG:
        assert value == "ok"  # not a number: no hint, the backoff's delay
    assert await retry.call(ok) == "ok"


# -- timeout, fallback, hedge ----------------------------------------------------------------


async def hang(*args: Any, **kwargs: Any) -> str:
    await asyncio.sleep(3600)
    return "late"


async def drive_timeout_on_timeout(fault: Fault) -> None:
    async def handler(*args: Any) -> Any:
        return await ainject(fault, wrong="garbage")

    guard = Timeout(1.0, on_timeout=handler)
    value = await outcome(fault, lambda: guard.call(hang), wrong=None)
    if fault is Fault.WRONG:
        assert value == "garbage"  # whatever the handler returns is the call's value
    timeout_idle(guard)
    assert guard.snapshot().timeouts == 1
    assert await guard.call(ok) == "ok"
    await guard.aclose()


async def drive_timeout_clock(fault: Fault) -> None:
    clock = FaultyClock(fault)
    guard = Timeout(1.0, clock=clock)
    guard.add_listener(lambda event: None)  # event times are read from the clock
    clock.once.arm()
    await outcome(fault, lambda: guard.call(hang), wrong=ValueError)
    timeout_idle(guard)
    with pytest.raises(GuardTimeout):
        await guard.call(hang)
    await guard.aclose()


async def drive_fallback_handler(fault: Fault) -> None:
    async def handler(exc: BaseException, *args: Any) -> Any:
        return await ainject(fault, wrong="garbage")

    fallback = Fallback(handler)
    value = await outcome(fault, lambda: fallback.call(boom), wrong=None)
    if fault is Fault.WRONG:
        assert value == "garbage"
    assert await fallback.call(ok) == "ok"


async def drive_fallback_on(fault: Fault) -> None:
    once = Once()

    def on(exc: BaseException) -> Any:
        if once():
            return inject(fault, wrong="garbage")
        return True

    fallback = Fallback(lambda exc: "fallback", on=on)
    once.arm()
    value = await outcome(fault, lambda: fallback.call(boom), wrong=None)
    if fault is Fault.WRONG:
        assert value == "fallback"
    assert await fallback.call(boom) == "fallback"


async def drive_hedge_on(fault: Fault) -> None:
    once = Once()

    def on(exc: BaseException) -> Any:
        if once():
            return inject(fault, wrong="garbage")
        return True

    hedge = Hedge(0.5, on=on)
    once.arm()
    value = await outcome(fault, lambda: hedge.call(Flaky(1)), wrong=None)
    if fault is Fault.WRONG:
        assert value == "ok"  # a truthy answer starts the next attempt at once
    assert await hedge.call(ok) == "ok"


async def drive_hedge_clock(fault: Fault) -> None:
    clock = FaultyClock(fault)
    hedge = Hedge(0.5, clock=clock)
    hedge.add_listener(lambda event: None)  # event times are read from the clock
    clock.once.arm()
    await outcome(fault, lambda: hedge.call(hang), wrong=ValueError)
    assert await hedge.call(ok) == "ok"
    await hedge.aclose()


async def drive_bulkhead_clock(fault: Fault) -> None:
    clock = FaultyClock(fault)
    guard = Bulkhead(1, max_wait=0, clock=clock)
    guard.add_listener(lambda event: None)  # event times are read from the clock
    await guard.acquire()
    clock.once.arm()
    await outcome(fault, lambda: guard.call(ok), wrong=ValueError)
    guard.release()
    bulkhead_idle(guard)
    assert await guard.call(ok) == "ok"
    await guard.aclose()


async def drive_limiter_clock(fault: Fault) -> None:
    clock = FaultyClock(fault)
    limiter = RateLimiter(1, burst=1, clock=clock)
    await limiter.acquire()
    clock.once.arm()
    await outcome(fault, limiter.acquire, wrong=ValueError)
    limiter_idle(limiter)
    # The bad reading reserved nothing: one token is due one second after the first.
    assert limiter.would_wait() == pytest.approx(1.0)
    await limiter.acquire()
    await limiter.aclose()


# -- listeners -----------------------------------------------------------------------------


class Scenario:
    """A guard that emits an event, the call that makes it emit, and its normal outcome."""

    def __init__(
        self,
        make: Callable[[], Any],
        trigger: Callable[[Any], Awaitable[Any]],
        *,
        raises: type[BaseException] | None = None,
        value: object = None,
        idle: Callable[[Any], None] = lambda guard: None,
    ) -> None:
        self.make = make
        self.trigger = trigger
        self.raises = raises
        self.value = value
        self.idle = idle

    async def normal(self, guard: Any) -> None:
        if self.raises is None:
            assert await self.trigger(guard) == self.value
        else:
            with pytest.raises(self.raises):
                await self.trigger(guard)
        self.idle(guard)


async def _bulkhead_full(guard: Bulkhead) -> None:
    await guard.acquire()
    try:
        await guard.call(ok)
    finally:
        guard.release()


async def _limited(guard: RateLimiter) -> None:
    await guard.acquire()
    try:
        await guard.acquire()
    finally:
        await asyncio.sleep(1)  # the token is back for the next round


async def _hedged(guard: Hedge) -> str:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "ok"

    return await guard.call(fn)


async def _tripped(guard: CircuitBreaker) -> None:
    await closes_again(guard)
    await guard.call(boom)


SCENARIOS: dict[str, Scenario] = {
    "Timeout": Scenario(
        lambda: Timeout(1.0), lambda g: g.call(hang), raises=GuardTimeout, idle=timeout_idle
    ),
    "Bulkhead": Scenario(
        lambda: Bulkhead(1, max_wait=0), _bulkhead_full, raises=BulkheadFull, idle=bulkhead_idle
    ),
    "CircuitBreaker": Scenario(
        lambda: CircuitBreaker(failure_threshold=1, recovery_timeout=1),
        _tripped,
        raises=Boom,
        idle=breaker_idle,
    ),
    "RateLimiter": Scenario(
        lambda: RateLimiter(1, burst=1, max_wait=0), _limited, raises=RateLimited
    ),
    "Retry": Scenario(lambda: Retry(2, backoff=fixed(0.1)), lambda g: g.call(Flaky(1)), value="ok"),
    "Fallback": Scenario(
        lambda: Fallback(lambda exc: "fallback"), lambda g: g.call(boom), value="fallback"
    ),
    "Hedge": Scenario(lambda: Hedge(0.5), _hedged, value="ok"),
    "Pipeline": Scenario(
        lambda: pipeline(Fallback(lambda exc: "fallback"), Retry(2, backoff=fixed(0.1))),
        lambda g: g.call(boom),
        value="fallback",
    ),
}


def drive_sync_listener(kind: str) -> Callable[[Fault], Awaitable[None]]:
    scenario = SCENARIOS[kind]

    async def drive(fault: Fault) -> None:
        guard = scenario.make()
        once = Once()
        heard: list[str] = []

        def listener(event: Any) -> Any:
            if once():
                return inject(fault, wrong="garbage")
            heard.append(event.kind)
            return None

        guard.add_listener(listener)
        once.arm()
        error = expected_error(fault)
        if error in (KeyboardInterrupt, SystemExit):
            # Reaches the caller that emitted the event, after the state change.
            with pytest.raises(error):
                async with asyncio.timeout(DEADLINE):
                    await scenario.trigger(guard)
            scenario.idle(guard)
        else:
            await scenario.normal(guard)  # isolated: logged, never raised
        await scenario.normal(guard)
        assert heard  # the listener still hears the next events
        await guard.aclose()

    return drive


def drive_async_listener(kind: str) -> Callable[[Fault], Awaitable[None]]:
    scenario = SCENARIOS[kind]

    async def drive(fault: Fault) -> None:
        guard = scenario.make()
        once = Once()
        heard: list[str] = []

        async def listener(event: Any) -> Any:
            if once():
                return await ainject(fault, wrong="garbage")
            heard.append(event.kind)
            return None

        guard.add_listener(listener)
        once.arm()
        await scenario.normal(guard)  # an async listener is always isolated
        if fault is Fault.HANG:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await settle(guard)  # the caller's deadline cancels the hung listener
        await settle(guard)
        await scenario.normal(guard)
        await guard.aclose()
        assert heard

    return drive


# -- a user's own guard in a pipeline --------------------------------------------------------


class UserGuard:
    """A guard written by a user; ``faults`` says which method misbehaves next."""

    def __init__(self) -> None:
        self.faults = StoreFaults()
        self.listeners: list[Any] = []

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.faults.method == "call" and self.faults.fault is Fault.WRONG:
            self.faults.method = None
            return 42  # not an awaitable

        async def run() -> Any:
            hit, value = await self.faults.hit("call", False, None)
            return value if hit else await fn(*args, **kwargs)

        return run()

    def snapshot(self) -> Any:
        if self.faults.method == "snapshot":
            self.faults.method = None
            return inject(self.faults.fault, wrong="garbage")
        return "user-snapshot"

    def add_listener(self, callback: Any) -> Any:
        if self.faults.method == "add_listener":
            self.faults.method = None
            return inject(self.faults.fault, wrong="not a remover")
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    async def aclose(self) -> None:
        await self.faults.hit("aclose", False, None)


async def drive_pipeline_user_guard_call(fault: Fault) -> None:
    for position in ("outer", "inner"):
        user = UserGuard()
        bulkhead = Bulkhead(1)
        guards = pipeline(user, bulkhead) if position == "outer" else pipeline(bulkhead, user)
        user.faults.set("call", fault, after=False)
        await outcome(fault, functools.partial(guards.call, ok), wrong=TypeError)
        bulkhead_idle(bulkhead)
        assert await guards.call(ok) == "ok"
        await guards.aclose()


async def drive_pipeline_user_guard_add_listener(fault: Fault) -> None:
    user = UserGuard()
    first = Retry(2, backoff=fixed(0))
    guards = pipeline(first, user)
    user.faults.set("add_listener", fault, after=False)
    error = expected_error(fault) or TypeError  # a remover that is not callable: refused
    with pytest.raises(error):
        guards.add_listener(lambda event: None)
    assert not first._listeners  # all or nothing: the first guard's listener is removed
    remove = guards.add_listener(lambda event: None)
    assert first._listeners
    remove()
    assert not first._listeners
    assert not user.listeners


async def drive_pipeline_user_guard_snapshot(fault: Fault) -> None:
    user = UserGuard()
    guards = pipeline(Retry(2), user)
    user.faults.set("snapshot", fault, after=False)
    error = expected_error(fault)
    if error is None:
        assert guards.snapshot().guards[1] == "garbage"
    else:
        with pytest.raises(error):
            guards.snapshot()
    assert guards.snapshot().guards[1] == "user-snapshot"


async def drive_pipeline_user_guard_aclose(fault: Fault) -> None:
    user = UserGuard()
    after = Hedge(0.5)
    guards = pipeline(user, after)
    after.add_listener(_slow_listener)
    assert await guards.call(_hedged_fn()) == "ok"
    assert after._listeners.pending == 1
    user.faults.set("aclose", fault, after=False)
    expected = caller_sees(fault, wrong=None, hang=TimeoutError)
    if expected is None:
        await guards.aclose()
    else:
        with pytest.raises(expected):
            async with asyncio.timeout(DEADLINE):
                await guards.aclose()
    if fault is not Fault.HANG:
        # Every guard was closed although one failed: the hedge's listener has ended.
        assert after._listeners.pending == 0
    await guards.aclose()
    assert after._listeners.pending == 0


async def _slow_listener(event: Any) -> None:
    await asyncio.sleep(1)


def _hedged_fn() -> Callable[[], Awaitable[str]]:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "ok"

    return fn


# -- kompoz shims --------------------------------------------------------------------------


def user_combinator(fault: Fault) -> Callable[[Any], Awaitable[Any]]:
    async def combinator(ctx: Any) -> Any:
        return await ainject(fault, wrong=object())

    return combinator


async def drive_compat_timeout_x(fault: Fault) -> None:
    shim = with_timeout(user_combinator(fault), timeout=1.0)
    value = await outcome(fault, lambda: shim.run("ctx"), wrong=None, hang=None)
    if fault is Fault.HANG:
        assert value == (False, "ctx")  # the shim's own timeout
        assert shim.timed_out
    if fault is Fault.WRONG:
        assert value == (True, "ctx")  # a truthy answer
    timeout_idle(shim.guard)
    good = with_timeout(lambda ctx: ok(), timeout=1.0)
    assert await good.run("ctx") == (True, "ctx")


async def drive_compat_limited_x(fault: Fault) -> None:
    shim = limited(user_combinator(fault), max_concurrent=1)
    value = await outcome(fault, lambda: shim.run("ctx"), wrong=None)
    if fault is Fault.WRONG:
        assert value == (True, "ctx")
    bulkhead_idle(shim.guard)
    good = limited(lambda ctx: ok(), max_concurrent=1)
    assert await good.run("ctx") == (True, "ctx")


async def drive_compat_breaker_x(fault: Fault) -> None:
    shim = circuit_breaker(user_combinator(fault), failure_threshold=1, recovery_timeout=1)
    value = await outcome(fault, lambda: shim.run("ctx"), wrong=None)
    if fault is Fault.WRONG:
        assert value == (True, "ctx")
    breaker_idle(shim.guard)
    await closes_again(shim.guard)


async def drive_compat_on_timeout(fault: Fault) -> None:
    async def on_timeout(ctx: Any) -> Any:
        return await ainject(fault, wrong="garbage")

    shim = with_timeout(hang, timeout=1.0, on_timeout=on_timeout)
    value = await outcome(fault, lambda: shim.run("ctx"), wrong=None)
    if fault is Fault.WRONG:
        assert value == (False, "garbage")
    timeout_idle(shim.guard)


def drive_compat_on_state_change(is_async: bool) -> Callable[[Fault], Awaitable[None]]:
    async def drive(fault: Fault) -> None:
        once = Once()
        heard: list[tuple[Any, Any]] = []

        def sync_cb(old: Any, new: Any, stats: Any) -> Any:
            if once():
                return inject(fault, wrong="garbage")
            heard.append((old, new))
            return None

        async def async_cb(old: Any, new: Any, stats: Any) -> Any:
            if once():
                return await ainject(fault, wrong="garbage")
            heard.append((old, new))
            return None

        shim = circuit_breaker(
            boom, failure_threshold=1, on_state_change=async_cb if is_async else sync_cb
        )
        once.arm()
        error = expected_error(fault)
        if not is_async and error in (KeyboardInterrupt, SystemExit):
            with pytest.raises(error):
                await shim.run("ctx")
        else:
            with pytest.raises(Boom):
                await shim.run("ctx")
        assert shim.state is OPEN
        breaker_idle(shim.guard)
        if fault is Fault.HANG:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await shim.guard.aclose()
        await shim.reset()
        await shim.guard.aclose()
        assert heard  # the next transition is heard

    return drive


# -- the table -----------------------------------------------------------------------------

GUARDS = tuple(SCENARIOS)

POINTS = [
    Point("Timeout.call.fn", ASYNC_FAULTS, drive_timeout_fn),
    Point("Bulkhead.call.fn", ASYNC_FAULTS, drive_bulkhead_fn),
    Point("Bulkhead.call.fn[store]", ASYNC_FAULTS, drive_bulkhead_store_fn),
    Point("CircuitBreaker.call.fn", ASYNC_FAULTS, drive_breaker_fn),
    Point("CircuitBreaker.call.fn[store]", ASYNC_FAULTS, drive_breaker_store_fn),
    Point("Retry.call.fn", ASYNC_FAULTS, drive_retry_fn),
    Point("RateLimiter.call.fn", ASYNC_FAULTS, drive_limiter_fn),
    Point("Fallback.call.fn", ASYNC_FAULTS, drive_fallback_fn),
    Point("Hedge.call.fn", ASYNC_FAULTS, drive_hedge_fn),
    Point("Pipeline.call.fn", ASYNC_FAULTS, drive_pipeline_fn),
    Point("CircuitBreaker.record", SYNC_FAULTS, drive_breaker_predicate("record")),
    Point("CircuitBreaker.ignore", SYNC_FAULTS, drive_breaker_predicate("ignore")),
    Point(
        "CircuitBreaker.failure_on_result",
        SYNC_FAULTS,
        drive_breaker_predicate("failure_on_result"),
    ),
    Point("CircuitBreaker.open_backoff", SCHEDULE_FAULTS, drive_breaker_open_backoff),
    Point("CircuitBreaker.clock", SYNC_FAULTS, drive_breaker_clock),
    Point("CircuitBreaker.store", ASYNC_FAULTS, drive_breaker_store_admit),
    Point("CircuitBreaker.store.record", ASYNC_FAULTS, drive_breaker_store_record),
    Point("CircuitBreaker.store.reset", ASYNC_FAULTS, drive_breaker_store_reset),
    Point(
        "store.check_name",
        SYNC_FAULTS,
        drive_store_check_name,
        also=("CircuitBreaker.store.check_name", "Bulkhead.store.check_name"),
    ),
    Point("Bulkhead.store", ASYNC_FAULTS, drive_bulkhead_store_acquire),
    Point("Bulkhead.store.release", ASYNC_FAULTS, drive_bulkhead_store_release),
    Point("Bulkhead.store.acquire[release=]", ASYNC_FAULTS, drive_bulkhead_store_carry),
    Point(
        "Bulkhead.store.release[background]",
        ASYNC_FAULTS,
        drive_bulkhead_store_background_release,
    ),
    Point("Bulkhead.clock", SYNC_FAULTS, drive_bulkhead_clock),
    Point("RateLimiter.store", ASYNC_FAULTS, drive_limiter_store_reserve),
    Point("RateLimiter.store.refund", ASYNC_FAULTS, drive_limiter_store_refund),
    Point("RateLimiter.clock", SYNC_FAULTS, drive_limiter_clock),
    Point("Retry.retry_on", SYNC_FAULTS, drive_retry_on),
    Point("Retry.retry_on_result", SYNC_FAULTS, drive_retry_on_result),
    Point("Retry.backoff", SCHEDULE_FAULTS, drive_retry_backoff),
    Point("Retry.rng", SYNC_FAULTS, drive_retry_rng),
    Point("Retry.clock", SYNC_FAULTS, drive_retry_clock),
    Point("error.retry_after", SYNC_FAULTS, drive_error_retry_after),
    Point("Timeout.on_timeout", ASYNC_FAULTS, drive_timeout_on_timeout),
    Point("Timeout.clock", SYNC_FAULTS, drive_timeout_clock),
    Point("Fallback.handler", ASYNC_FAULTS, drive_fallback_handler),
    Point("Fallback.on", SYNC_FAULTS, drive_fallback_on),
    Point("Hedge.on", SYNC_FAULTS, drive_hedge_on),
    Point("Hedge.clock", SYNC_FAULTS, drive_hedge_clock),
    *(
        Point(f"{kind}.add_listener.callback", SYNC_FAULTS, drive_sync_listener(kind))
        for kind in GUARDS
    ),
    *(
        Point(f"{kind}.add_listener.callback[async]", ASYNC_FAULTS, drive_async_listener(kind))
        for kind in GUARDS
    ),
    Point(
        "Pipeline.guards",
        ASYNC_FAULTS,
        drive_pipeline_user_guard_call,
        also=("pipeline.guards",),
    ),
    Point("Pipeline.guards.add_listener", SYNC_FAULTS, drive_pipeline_user_guard_add_listener),
    Point("Pipeline.guards.snapshot", SYNC_FAULTS, drive_pipeline_user_guard_snapshot),
    Point("Pipeline.guards.aclose", ASYNC_FAULTS, drive_pipeline_user_guard_aclose),
    Point(
        "with_timeout.x",
        ASYNC_FAULTS,
        drive_compat_timeout_x,
        also=("AsyncTimeout.inner",),
    ),
    Point("limited.x", ASYNC_FAULTS, drive_compat_limited_x, also=("AsyncLimited.inner",)),
    Point(
        "circuit_breaker.x",
        ASYNC_FAULTS,
        drive_compat_breaker_x,
        also=("AsyncCircuitBreaker.inner",),
    ),
    Point(
        "with_timeout.on_timeout",
        ASYNC_FAULTS,
        drive_compat_on_timeout,
        also=("AsyncTimeout.on_timeout",),
    ),
    Point(
        "circuit_breaker.on_state_change",
        SYNC_FAULTS,
        drive_compat_on_state_change(is_async=False),
        also=("AsyncCircuitBreaker.on_state_change",),
    ),
    Point(
        "circuit_breaker.on_state_change[async]",
        ASYNC_FAULTS,
        drive_compat_on_state_change(is_async=True),
    ),
]

#: ``Any``-annotated parameters take user objects too (the shims' inner combinators, a
#: pipeline's guards): the walk looks for them as well.
WORDS = (*CALLABLE_WORDS, "Any")

EXCLUDE: dict[str, dict[str, str]] = {
    "headrace_guards": {
        "CircuitBreaker.policy": (
            "only Consecutive, CountWindow or TimeWindow (headrace's frozen dataclasses) are "
            "accepted; any other object is a ConfigurationError at construction"
        ),
        "GuardEvent.old_state": "data carried by an event, never called",
        "GuardEvent.new_state": "data carried by an event, never called",
        "PipelineSnapshot.guards": "data: the guards' snapshots, never called",
    },
    "headrace_guards.compat": {},
}


def test_every_callable_parameter_is_in_the_table() -> None:
    missing: list[str] = []
    for module in (headrace_guards, headrace_guards.compat):
        missing += missing_points(module, POINTS, exclude=EXCLUDE[module.__name__], words=WORDS)
    assert missing == []


def test_the_store_points_cover_every_store_method_the_guards_call() -> None:
    names = {n for p in POINTS for n in p.names}
    for method in ("CircuitBreaker.store", "CircuitBreaker.store.record", "Bulkhead.store"):
        assert method in names
    for method in ("Bulkhead.store.release", "RateLimiter.store", "RateLimiter.store.refund"):
        assert method in names
    # A bulkhead store whose acquire carries releases: the acquire, and the release sent
    # on its own when no acquire carried it.
    for method in ("Bulkhead.store.acquire[release=]", "Bulkhead.store.release[background]"):
        assert method in names


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="headrace.guards"):
        run_injection(point.drive, fault, start=start)


def test_a_user_error_is_the_same_object_at_the_caller() -> None:
    async def drive(fault: Fault) -> None:
        error = FaultError("mine")

        async def fn() -> None:
            raise error

        for guard in (
            Timeout(5),
            Bulkhead(1),
            CircuitBreaker(),
            RateLimiter(5),
            Retry(2, backoff=fixed(0)),
            Hedge(1),
            full_pipeline(),
        ):
            with pytest.raises(FaultError) as info:
                await guard.call(fn)
            assert info.value is error

    run_injection(drive, Fault.RAISE)


def test_configuration_errors_name_the_store_argument() -> None:
    with pytest.raises(ConfigurationError, match="store"):
        CircuitBreaker("x", store=object())  # type: ignore[arg-type]
