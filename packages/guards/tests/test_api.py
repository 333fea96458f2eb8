from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import threading
from collections.abc import Mapping
from typing import Any

import pytest

import headrace_core
import headrace_guards
from headrace_core.testing import VirtualClock
from headrace_guards import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    GuardEvent,
    GuardTimeout,
    RateLimited,
    RateLimiter,
    Timeout,
)
from shared.faults import settle

CORE_ERRORS = [
    "BulkheadFull",
    "CapacityExceeded",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "GuardTimeout",
    "HeadraceError",
    "RateLimited",
    "Rejected",
]


def test_all_is_sorted_and_complete() -> None:
    names = headrace_guards.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(headrace_guards, name), name
    for required in [
        "Consecutive",
        "CountWindow",
        "TimeWindow",
        "GuardEvent",
        "CircuitState",
        "pipeline",
        "BreakerSnapshot",
        "BulkheadSnapshot",
        "TimeoutSnapshot",
        "RetrySnapshot",
        "RateLimiterSnapshot",
        "FallbackSnapshot",
        "HedgeSnapshot",
        "PipelineSnapshot",
    ]:
        assert required in names


def test_core_errors_are_the_same_objects() -> None:
    for name in CORE_ERRORS:
        assert getattr(headrace_guards, name) is getattr(headrace_core, name)


def test_public_objects_live_in_the_public_module() -> None:
    for name in headrace_guards.__all__:
        obj = getattr(headrace_guards, name)
        if name in CORE_ERRORS:
            continue
        assert obj.__module__ == "headrace_guards", name
        assert obj.__doc__, name


def test_public_methods_have_docstrings() -> None:
    for name in headrace_guards.__all__:
        obj = getattr(headrace_guards, name)
        if not inspect.isclass(obj) or name in CORE_ERRORS:
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_") or not callable(value):
                continue
            assert value.__doc__, f"{name}.{attr}"


def test_backoff_submodule_is_core_backoff() -> None:
    import headrace_guards.backoff as via_import

    assert headrace_guards.backoff is headrace_core.backoff
    assert via_import is headrace_core.backoff
    assert headrace_guards.backoff.__all__ == sorted(headrace_guards.backoff.__all__)


def test_snapshots_and_events_are_frozen() -> None:
    snapshots = [
        Timeout(1).snapshot(),
        Bulkhead(1).snapshot(),
        CircuitBreaker().snapshot(),
        headrace_guards.Retry().snapshot(),
        RateLimiter(1).snapshot(),
        headrace_guards.Fallback(lambda e: 1).snapshot(),
        headrace_guards.Hedge(1).snapshot(),
        headrace_guards.pipeline(Timeout(1)).snapshot(),
        GuardEvent(source="s", kind="k", at=0.0),
    ]
    for snap in snapshots:
        assert dataclasses.is_dataclass(snap)
        field = dataclasses.fields(snap)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(snap, field, None)


def test_guard_event_fields() -> None:
    event = GuardEvent(source="x", kind="retry", at=1.0)
    assert (event.old_state, event.new_state, event.reason) == (None, None, None)
    assert (event.attempt, event.delay, event.error) == (None, None, None)


def test_errors_are_rejected_and_builtins() -> None:
    assert issubclass(CircuitOpenError, headrace_guards.Rejected)
    assert issubclass(BulkheadFull, headrace_guards.Rejected)
    assert issubclass(RateLimited, headrace_guards.Rejected)
    assert issubclass(GuardTimeout, TimeoutError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(headrace_guards.CapacityExceeded, ValueError)


@pytest.mark.parametrize(
    "guard",
    [
        Timeout(1),
        Bulkhead(1),
        CircuitBreaker(),
        headrace_guards.Retry(),
        RateLimiter(1),
        headrace_guards.Fallback(lambda e: 1),
        headrace_guards.Hedge(1),
        headrace_guards.pipeline(Timeout(1)),
    ],
)
def test_every_guard_has_the_shared_shape(guard: Any) -> None:
    assert hasattr(guard, "name")
    assert callable(guard.snapshot)
    remove = guard.add_listener(lambda e: None)
    remove()
    remove()  # idempotent

    def sync() -> None: ...

    with pytest.raises(TypeError):
        guard(sync)
    with pytest.raises(TypeError):
        guard.add_listener(42)


async def test_async_listeners_are_awaited_by_aclose() -> None:
    done: list[str] = []
    breaker = CircuitBreaker(failure_threshold=1)

    async def slow_listener(event: GuardEvent) -> None:
        await asyncio.sleep(1)
        done.append(event.kind)

    breaker.add_listener(slow_listener)

    async def fail() -> None:
        raise KeyError

    with VirtualClock():
        with pytest.raises(KeyError):
            await breaker.call(fail)
        assert done == []
        await breaker.aclose()
    assert done == ["state_change"]


async def test_bulkhead_listener_calling_resize_does_not_deadlock() -> None:
    bulkhead = Bulkhead(1, max_wait=0)
    bulkhead.add_listener(lambda e: bulkhead.resize(bulkhead.limit + 1))
    await bulkhead.acquire()
    with pytest.raises(BulkheadFull):
        await bulkhead.acquire()
    await bulkhead.acquire()  # the listener grew the limit
    bulkhead.release()
    bulkhead.release()


async def test_rate_limiter_listener_reading_snapshot() -> None:
    limiter = RateLimiter(1, burst=1, max_wait=0)
    seen: list[float] = []
    limiter.add_listener(lambda e: seen.append(limiter.snapshot().available))
    with VirtualClock():
        await limiter.acquire()
        with pytest.raises(RateLimited):
            await limiter.acquire()
    assert seen == [0.0]


@pytest.mark.parametrize("kind", ["rate", "timeout"])
def test_use_from_a_second_running_loop_raises(kind: str) -> None:
    limiter = RateLimiter(10)
    timeout = Timeout(60)
    started = threading.Event()
    release = threading.Event()

    async def use() -> None:
        if kind == "rate":
            await limiter.acquire()
        else:
            await timeout.call(asyncio.sleep, 0)

    def other_thread() -> None:
        async def hold() -> None:
            await use()
            started.set()
            await asyncio.to_thread(release.wait)

        asyncio.run(hold())

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert started.wait(60)
        with pytest.raises(RuntimeError, match="another thread"):
            asyncio.run(use())
    finally:
        release.set()
        thread.join()
    asyncio.run(use())  # the first loop is gone: the guard rebinds


# -- store-backed guards, on a small in-process store implementing core's protocols ----------


class MemoryBreakerStore:
    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.generation = 0
        self.failures = 0
        self.open_until = 0.0
        self.records: list[str] = []

    async def admit(self, name: str, now: float, **config: Any) -> tuple[bool, int, Any, float]:
        if self.state is CircuitState.OPEN:
            if now >= self.open_until:
                self.state, self.generation = CircuitState.HALF_OPEN, self.generation + 1
            else:
                return False, self.generation, self.state, self.open_until - now
        return True, self.generation, self.state, 0.0

    async def record(
        self, name: str, generation: int, outcome: str, duration: float, **config: Any
    ) -> Any:
        self.records.append(outcome)
        if generation != self.generation:
            return self.state
        if outcome in ("failure", "slow_failure"):
            self.failures += 1
            if self.state is CircuitState.HALF_OPEN or self.failures >= config["threshold"]:
                self.state, self.generation = CircuitState.OPEN, self.generation + 1
                self.open_until = asyncio.get_running_loop().time() + config["recovery_timeout"]
        elif outcome == "success":
            self.failures = 0
            if self.state is CircuitState.HALF_OPEN:
                self.state, self.generation = CircuitState.CLOSED, self.generation + 1
        return self.state

    async def force(self, name: str, state: Any, **config: Any) -> None:
        self.state, self.open_until = state, float("inf")

    async def reset(self, name: str) -> None:
        self.state, self.failures = CircuitState.CLOSED, 0

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        return {"state": self.state}


async def test_store_backed_breaker_shares_state() -> None:
    store = MemoryBreakerStore()
    a = CircuitBreaker("shared", failure_threshold=2, recovery_timeout=5, store=store)
    b = CircuitBreaker("shared", failure_threshold=2, recovery_timeout=5, store=store)

    async def fail() -> None:
        raise KeyError

    async def ok() -> str:
        return "ok"

    with VirtualClock() as clock:
        with pytest.raises(KeyError):
            await a.call(fail)
        with pytest.raises(KeyError):
            await b.call(fail)
        with pytest.raises(CircuitOpenError):
            await a.call(ok)
        await clock.advance(5)
        assert await a.call(ok) == "ok"
        assert store.state is CircuitState.CLOSED

    async def cancelled() -> None:
        raise asyncio.CancelledError

    recorded = len(store.records)
    with pytest.raises(asyncio.CancelledError):
        await a.call(cancelled)
    # A neutral call admitted while CLOSED changes nothing: no record, no round trip.
    assert len(store.records) == recorded
    await a.force_open()
    assert stored_state(store) is CircuitState.OPEN
    await a.reset()
    assert stored_state(store) is CircuitState.CLOSED


def stored_state(store: MemoryBreakerStore) -> CircuitState:
    return store.state


def test_store_requires_a_name() -> None:
    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker(store=MemoryBreakerStore())
    with pytest.raises(ConfigurationError, match="name"):
        Bulkhead(1, store=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name"):
        RateLimiter(1, store=object())  # type: ignore[arg-type]


class MemoryBulkheadStore:
    def __init__(self) -> None:
        self.leases: set[str] = set()

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        if len(self.leases) >= limit:
            return False
        self.leases.add(lease_id)
        return True

    async def release(self, name: str, lease_id: str) -> None:
        self.leases.discard(lease_id)

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        return lease_id in self.leases

    async def in_flight(self, name: str) -> int:
        return len(self.leases)


async def test_store_backed_bulkhead() -> None:
    store = MemoryBulkheadStore()
    bulkhead = Bulkhead(2, name="store-bulkhead-test", store=store, max_wait=1)
    peak = 0

    async def work() -> None:
        nonlocal peak
        peak = max(peak, len(store.leases))
        await asyncio.sleep(0.1)

    with VirtualClock():
        await asyncio.gather(*(bulkhead.call(work) for _ in range(6)))
        assert peak == 2
        assert store.leases == set()
        blocker = Bulkhead(1, name="store-bulkhead-full", store=store, max_wait=0.5)
        store.leases = {"x"}
        with pytest.raises(BulkheadFull):
            await blocker.call(work)
        store.leases = set()


async def test_store_backed_bulkhead_async_with_releases_before_exit() -> None:
    store = MemoryBulkheadStore()
    bulkhead = Bulkhead(1, name="store-bulkhead-cm", store=store)
    async with bulkhead:
        assert len(store.leases) == 1
    # The lease is given back by the time the block has exited: no background task.
    assert store.leases == set()


class FailClosedBulkheadStore(MemoryBulkheadStore):
    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        raise BulkheadFull(name=name)


async def test_store_rejection_counts_as_the_guards_own() -> None:
    bulkhead = Bulkhead(1, name="store-bulkhead-closed", store=FailClosedBulkheadStore())
    events: list[GuardEvent] = []
    bulkhead.add_listener(events.append)

    async def work() -> None:
        raise AssertionError("never runs")

    with pytest.raises(BulkheadFull):
        await bulkhead.call(work)
    assert bulkhead.snapshot().rejected == 1
    assert [e.kind for e in events] == ["rejected"]


class MemoryRateStore:
    def __init__(self) -> None:
        self.tat = 0.0
        self.refunds = 0

    async def reserve(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> tuple[bool, float]:
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


async def test_store_backed_rate_limiter() -> None:
    store = MemoryRateStore()
    limiter = RateLimiter(1, 1, burst=1, max_wait=5, name="store-rate", store=store)
    with VirtualClock(start=0.0) as clock:
        await limiter.acquire()
        await limiter.acquire()
        assert clock.now() == pytest.approx(1)
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await settle(limiter)  # the refund goes on in the background
        assert store.refunds == 1
        store.tat = clock.now() + 100
        with pytest.raises(RateLimited) as info:
            await limiter.acquire()
        # The store's refusal carries the wait, as the in-memory limiter's does.
        assert info.value.retry_after == pytest.approx(100)
        assert limiter.snapshot().rejected == 1


class ProbeBreakerStore(MemoryBreakerStore):
    """Counts the half-open permits it hands out, as a shared store does."""

    def __init__(self) -> None:
        super().__init__()
        self.ho_taken = 0

    async def admit(self, name: str, now: float, **config: Any) -> tuple[bool, int, Any, float]:
        allowed, gen, state, retry_after = await super().admit(name, now, **config)
        if allowed and state is CircuitState.HALF_OPEN:
            if self.ho_taken >= config["half_open_max_calls"]:
                return False, gen, state, 0.0
            self.ho_taken += 1
        return allowed, gen, state, retry_after

    async def record(
        self, name: str, generation: int, outcome: str, duration: float, **config: Any
    ) -> Any:
        if generation == self.generation and self.state is CircuitState.HALF_OPEN:
            self.ho_taken -= 1
        return await super().record(name, generation, outcome, duration, **config)


class PredicateBug(Exception):
    pass


@pytest.mark.parametrize(
    ("which", "way"), [("record", "call"), ("ignore", "async_with"), ("failure_on_result", "call")]
)
async def test_store_backed_raising_predicate_returns_the_probe_permit(
    which: str, way: str, clock_start: float
) -> None:
    armed = [False]

    def predicate(_: object) -> bool:
        if armed[0]:
            raise PredicateBug(which)
        return which == "record"

    async def fail() -> None:
        raise KeyError("down")

    async def ok() -> str:
        return "ok"

    store = ProbeBreakerStore()
    kwargs: dict[str, Any] = {which: predicate}
    with VirtualClock(start=clock_start) as clock:
        breaker = CircuitBreaker(
            "probe", failure_threshold=1, recovery_timeout=5, store=store, **kwargs
        )
        with pytest.raises(KeyError):
            await breaker.call(fail)
        await clock.advance(5)
        armed[0] = True

        async def probe() -> None:
            if way == "call":
                await breaker.call(ok if which == "failure_on_result" else fail)
            else:
                async with breaker:  # a store-backed breaker supports async with
                    raise KeyError("down")

        with pytest.raises(PredicateBug):
            await probe()
        assert store.ho_taken == 0  # the probe's permit went back to the store
        assert stored_state(store) is CircuitState.OPEN  # counted as a failure
        armed[0] = False
        await clock.advance(5)
        assert await breaker.call(ok) == "ok"
        assert stored_state(store) is CircuitState.CLOSED
        await breaker.aclose()


async def test_store_backed_breaker_async_with_admits_and_records() -> None:
    store = ProbeBreakerStore()
    breaker = CircuitBreaker("cm", failure_threshold=1, store=store)
    async with breaker:
        pass
    assert store.records == ["success"]
    with pytest.raises(KeyError):
        async with breaker:
            raise KeyError("down")
    assert store.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        async with breaker:
            raise AssertionError("never entered")


class NamingStore(MemoryBulkheadStore):
    """A store with the optional ``check_name``: names with a brace are refused."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[str] = []
        self.tat = 0.0

    def check_name(self, name: str) -> None:
        self.checked.append(name)
        if "{" in name:
            raise ConfigurationError.argument_error("name", name, "must not hold braces")

    async def admit(self, name: str, now: float, **config: Any) -> tuple[bool, int, Any, float]:
        return True, 0, CircuitState.CLOSED, 0.0

    async def record(self, name: str, *args: Any, **config: Any) -> Any:
        return CircuitState.CLOSED

    async def force(self, name: str, state: Any, **config: Any) -> None:
        return None

    async def reset(self, name: str) -> None:
        return None

    async def reserve(self, name: str, *args: Any) -> tuple[bool, float]:
        return True, 0.0

    async def refund(self, name: str, *args: Any) -> None:
        return None

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        return {}


@pytest.mark.parametrize("kind", ["breaker", "bulkhead", "limiter"])
def test_a_store_checks_the_name_when_the_guard_is_built(kind: str) -> None:
    store = NamingStore()
    build: dict[str, Any] = {
        "breaker": lambda name: CircuitBreaker(name, store=store),
        "bulkhead": lambda name: Bulkhead(1, name=name, store=store),
        "limiter": lambda name: RateLimiter(1, name=name, store=store),
    }
    with pytest.raises(ConfigurationError, match=r"bad\{name\}"):
        build[kind]("bad{name}")
    build[kind]("good")
    assert store.checked == ["bad{name}", "good"]


@pytest.mark.parametrize("kind", ["breaker", "bulkhead", "limiter"])
def test_a_store_without_the_guards_methods_fails_at_construction(kind: str) -> None:
    class Partial:
        pass

    build: dict[str, Any] = {
        "breaker": lambda: CircuitBreaker("x", store=Partial()),  # type: ignore[arg-type]
        "bulkhead": lambda: Bulkhead(1, name="x-partial", store=Partial()),  # type: ignore[arg-type]
        "limiter": lambda: RateLimiter(1, name="x", store=Partial()),  # type: ignore[arg-type]
    }
    with pytest.raises(ConfigurationError, match="store"):
        build[kind]()


@pytest.mark.parametrize(
    "reply",
    [None, 0.5, (True,), (True, "soon"), (True, math.nan), (True, math.inf), ("yes", 0.0)],
)
async def test_a_store_reservation_that_is_garbage_is_a_clear_error(reply: object) -> None:
    class Garbage(MemoryRateStore):
        async def reserve(self, *args: Any, **kwargs: Any) -> Any:
            return reply

    limiter = RateLimiter(1, name="garbage", store=Garbage())
    with pytest.raises(TypeError, match=r"Garbage.reserve\(\) returned"):
        await limiter.acquire()
    assert limiter.snapshot().waiting == 0


def _guards() -> list[Any]:
    from headrace_guards import Fallback, Hedge, Retry, pipeline

    return [
        Timeout(5),
        Bulkhead(2),
        CircuitBreaker(),
        RateLimiter(10),
        Retry(3),
        Fallback(lambda exc: "fallback"),
        Hedge(1.0),
        pipeline(),
        pipeline(Retry(2), CircuitBreaker(), Timeout(5), Bulkhead(1)),
    ]


@pytest.mark.parametrize("guard", _guards(), ids=lambda g: type(g).__name__)
async def test_every_guard_names_a_sync_function_as_not_async(guard: Any) -> None:
    calls = 0

    def compute() -> int:
        nonlocal calls
        calls += 1
        return 42

    with (
        VirtualClock(),
        pytest.raises(TypeError, match="compute is not an async function") as info,
    ):
        await guard.call(compute)
    assert "can't be used in 'await' expression" in str(info.value)  # the cause, quoted
    assert calls == 1  # never retried, never hedged, never answered by a fallback


async def test_a_cancelled_probe_never_waits_on_a_store_that_hangs() -> None:
    class HangingRecord(ProbeBreakerStore):
        hang = False

        async def record(self, name: str, generation: int, *args: Any, **config: Any) -> Any:
            if self.hang:
                await asyncio.sleep(3600)
            return await super().record(name, generation, *args, **config)

    store = HangingRecord()
    with VirtualClock() as clock:
        breaker = CircuitBreaker("hanging", failure_threshold=1, recovery_timeout=1, store=store)
        with pytest.raises(KeyError):
            await breaker.call(_fail_key)
        await asyncio.sleep(1)
        store.hang = True
        probe = asyncio.create_task(breaker.call(asyncio.sleep, 10))
        await asyncio.sleep(0.5)
        probe.cancel()
        started = clock.now()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert clock.now() == started  # the neutral record goes on in the background
        store.hang = False
        await breaker.aclose()  # bounded, and nothing is left running


async def _fail_key() -> None:
    raise KeyError("down")


async def test_a_cancelled_waiter_never_waits_on_a_store_refund_that_hangs() -> None:
    class HangingRefund(MemoryRateStore):
        async def refund(self, name: str, rate: float, per: float, cost: int) -> None:
            await asyncio.sleep(3600)

    with VirtualClock() as clock:
        limiter = RateLimiter(1, burst=1, name="hanging-refund", store=HangingRefund())
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.5)
        waiter.cancel()
        started = clock.now()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await waiter
        assert clock.now() == started
        assert limiter.snapshot().waiting == 0
        await limiter.aclose()  # the refund is bounded: aclose() ends


async def test_a_store_release_that_hangs_is_bounded_and_awaited_by_aclose() -> None:
    class HangingRelease(MemoryBulkheadStore):
        async def release(self, name: str, lease_id: str) -> None:
            await asyncio.sleep(3600)

    with VirtualClock():
        bulkhead = Bulkhead(1, name="hanging-release", store=HangingRelease())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await bulkhead.call(asyncio.sleep, 0)
        assert bulkhead.snapshot().in_flight == 0
        await bulkhead.aclose()  # nothing left running after it (checked by the fixture)


@pytest.mark.parametrize("method", ["admit", "record"])
async def test_a_breaker_store_reply_that_is_garbage_is_a_clear_error(method: str) -> None:
    class Garbage(ProbeBreakerStore):
        async def admit(self, name: str, now: float, **config: Any) -> Any:
            if method == "admit":
                return "yes"
            return await super().admit(name, now, **config)

        async def record(self, name: str, *args: Any, **config: Any) -> Any:
            if method == "record":
                return None
            return await super().record(name, *args, **config)

    breaker = CircuitBreaker("garbage", store=Garbage())
    with pytest.raises(TypeError, match=rf"Garbage.{method}\(\) returned"):
        await breaker.call(_ok)
    assert breaker.snapshot().half_open_in_flight == 0


async def _ok() -> str:
    return "ok"


def test_the_redis_module_says_which_extra_to_install_when_redis_py_is_missing() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n"
        "    import headrace_guards.redis\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'headrace-guards[redis]'" in out
