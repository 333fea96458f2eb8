"""Budgets shared through a BudgetStore (core's protocol): reserve, wait, reconcile.

A shared budget is reserved before the call queues for a local slot (a call waiting for
a store holds no local slot), a call that leaves without running gets its grants back,
and every way in (``execute``, ``wrap``, ``acquire``) takes the same admission.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from headrace_core import CircuitState, ConfigurationError
from headrace_core.store import BreakerStore, BudgetStore
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker
from headrace_throttle import (
    CircuitOpenError,
    RequestBudget,
    Slot,
    Throttle,
    ThrottleClosed,
    TokenBudget,
    TokenBudgetExceeded,
)

MAGNITUDES = pytest.mark.parametrize("start", [0.0, 1e3, 1e6])


@dataclass
class Entry:
    start: float
    amount: float


class LoopClockStore:
    """A BudgetStore on the loop clock, as a Redis-backed one would keep it server-side.

    A refusal says how long until the request would fit, in seconds from now.
    """

    def __init__(self) -> None:
        self.windows: dict[str, deque[Entry]] = {}
        self.entries: dict[str, Entry] = {}
        self.ids = itertools.count()
        self.calls: list[str] = []

    def used(self, name: str, window: float) -> float:
        now = asyncio.get_running_loop().time()
        entries = self.windows.setdefault(name, deque())
        while entries and entries[0].start + window <= now:
            entries.popleft()
        return sum(e.amount for e in entries)

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        self.calls.append(f"reserve {name} {amount}")
        now = asyncio.get_running_loop().time()
        used = self.used(name, window)
        if used + amount > cap:
            freed, wait = 0.0, None
            for entry in self.windows[name]:
                freed += entry.amount
                if used - freed + amount <= cap:
                    wait = entry.start + window - now
                    break
            return False, wait, None
        entry_id = str(next(self.ids))
        entry = Entry(now, amount)
        self.windows[name].append(entry)
        self.entries[entry_id] = entry
        return True, None, entry_id

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        self.calls.append(f"adjust {name} {amount}")
        self.entries[entry].amount = amount


def test_the_test_store_follows_the_protocol() -> None:
    assert isinstance(LoopClockStore(), BudgetStore)


@MAGNITUDES
async def test_shared_budgets_reserve_wait_and_reconcile(start: float) -> None:
    with VirtualClock(start=start) as clock:
        store = LoopClockStore()
        tpm = TokenBudget(100, 60.0, name="tpm", store=store)
        rpm = RequestBudget(10, 60.0, name="rpm", store=store)
        t = Throttle(4, budgets=[tpm, rpm])
        starts: list[float] = []

        async def call(slot: Slot) -> None:
            starts.append(clock.now() - start)
            slot.record_tokens(40)

        await asyncio.gather(*(t.execute(call, tokens=50) for _ in range(3)))
        assert starts == [0.0, 0.0, 60.0]
        assert "adjust tpm 40" in store.calls
        assert store.used("tpm", 60.0) == 40  # the first two expired; the third recorded 40
        with pytest.raises(TokenBudgetExceeded):
            await t.execute(call, tokens=101)
        assert t.snapshot().tokens_used is None  # a shared budget is read from its store


@MAGNITUDES
async def test_a_refusal_says_how_long_to_wait_relative_to_now(start: float) -> None:
    """``reserve`` returns ``(granted, retry_after, entry)`` with ``retry_after`` in seconds."""
    with VirtualClock(start=start) as clock:
        store = LoopClockStore()
        t = Throttle(4, budgets=[RequestBudget(1, 60.0, name="rpm", store=store)])
        await t.execute(lambda s: asyncio.sleep(0))
        await asyncio.sleep(15)
        admitted: list[float] = []

        async def later(slot: Slot) -> None:
            admitted.append(clock.now() - start)

        async with asyncio.timeout(3600):
            await t.execute(later)
        assert admitted == [60.0]
        assert store.calls.count("reserve rpm 1") == 3  # asked, refused once, asked again


async def test_a_cancelled_waiter_holds_nothing_and_held_no_local_slot() -> None:
    """Granted its request, waiting for tokens: cancelled, the request is given back."""
    with VirtualClock(start=0.0):
        store = LoopClockStore()
        rpm = RequestBudget(10, 60.0, name="rpm", store=store)
        tpm = TokenBudget(100, 60.0, name="tpm", store=store)
        t = Throttle(1, budgets=[rpm, tpm])
        await t.execute(lambda s: asyncio.sleep(0), tokens=80)
        waiter = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0), tokens=50))
        await asyncio.sleep(1)
        assert store.used("rpm", 60.0) == 2  # its request was granted; tokens refused
        snap = t.snapshot()
        assert snap.in_flight == 0  # no local slot is held while a store refuses
        assert snap.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert "adjust rpm 0" in store.calls
        assert store.used("rpm", 60.0) == 1  # only the first call's request is charged
        assert store.used("tpm", 60.0) == 80
        snap = t.snapshot()
        assert snap.in_flight == snap.waiting == 0


async def test_a_waiter_cancelled_in_the_local_queue_gives_its_grants_back() -> None:
    with VirtualClock(start=0.0):
        store = LoopClockStore()
        tpm = TokenBudget(1000, 60.0, name="tpm", store=store)
        t = Throttle(1, budgets=[tpm])
        gate = asyncio.Event()
        running = asyncio.create_task(t.execute(lambda s: gate.wait(), tokens=10))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0), tokens=300))
        await asyncio.sleep(1)
        assert store.used("tpm", 60.0) == 310  # granted, queued for the local slot
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert store.used("tpm", 60.0) == 10
        gate.set()
        await running
        assert t.snapshot().in_flight == t.snapshot().waiting == 0


async def test_calls_queued_behind_a_refused_one_keep_their_order() -> None:
    with VirtualClock(start=0.0) as clock:
        store = LoopClockStore()
        tpm = TokenBudget(10, 1.0, name="tpm", store=store)
        t = Throttle(100, budgets=[tpm])
        admitted: list[tuple[str, float]] = []

        async def job(label: str, tokens: int) -> None:
            async def body(slot: Slot) -> None:
                admitted.append((label, clock.now()))

            await t.execute(body, tokens=tokens)

        for _ in range(10):
            await job("small", 1)
        big = asyncio.create_task(job("big", 10))
        await asyncio.sleep(0)
        stream = []
        for _ in range(10):
            stream.append(asyncio.create_task(job("small", 1)))
            await asyncio.sleep(0.05)
        await asyncio.gather(big, *stream)
        order = [label for label, _ in admitted]
        assert order.index("big") == 10  # no later small call overtook it
        assert dict(admitted)["big"] == 1.0


async def test_close_refuses_calls_waiting_for_a_shared_budget() -> None:
    with VirtualClock(start=0.0):
        store = LoopClockStore()
        rpm = RequestBudget(5, 60.0, name="rpm", store=store)
        tpm = TokenBudget(100, 60.0, name="tpm", store=store)
        t = Throttle(4, budgets=[rpm, tpm])
        await t.execute(lambda s: asyncio.sleep(0), tokens=100)
        waiting = [
            asyncio.create_task(t.execute(lambda s: asyncio.sleep(0), tokens=10)) for _ in range(3)
        ]
        await asyncio.sleep(1)
        assert t.snapshot().waiting == 3
        t.close()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, ThrottleClosed) for r in results)
        await t.drain()
        assert store.used("rpm", 60.0) == 1  # the head's granted request was given back
        assert t.snapshot().waiting == 0


# -- acquire() takes the same way in ----------------------------------------------------


async def test_acquire_reserves_and_reconciles_shared_budgets() -> None:
    with VirtualClock(start=0.0) as clock:
        store = LoopClockStore()
        rpm = RequestBudget(10, 60.0, name="rpm", store=store)
        tpm = TokenBudget(100, 60.0, name="tpm", store=store)
        t = Throttle(4, budgets=[rpm, tpm])
        async with t.acquire(tokens=60) as slot:
            assert store.calls == ["reserve rpm 1", "reserve tpm 60"]
            slot.record_tokens(70)
        assert store.calls[-1] == "adjust tpm 70"
        assert store.used("tpm", 60.0) == 70
        entered: list[float] = []
        async with t.acquire(tokens=50):  # 70 + 50 > 100: waits for the window
            entered.append(clock.now())
        assert entered == [60.0]
        with pytest.raises(KeyError):
            async with t.acquire(tokens=5):
                raise KeyError("the body's own error")
        assert t.snapshot().failed == 1
        assert t.snapshot().in_flight == 0


class MemoryBreakerStore:
    """A BreakerStore kept in memory: consecutive failures open it (enough for a test)."""

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.gen = 0
        self.streak = 0
        self.calls: list[str] = []

    async def admit(
        self, name: str, now: float, **config: Any
    ) -> tuple[bool, int, CircuitState, float]:
        self.calls.append("admit")
        if self.state is CircuitState.OPEN:
            return False, self.gen, self.state, 30.0
        return True, self.gen, self.state, 0.0

    async def record(
        self, name: str, generation: int, outcome: str, duration: float, **config: Any
    ) -> CircuitState:
        self.calls.append(f"record {outcome}")
        if outcome == "failure":
            self.streak += 1
            if self.streak >= config["threshold"]:
                self.state = CircuitState.OPEN
                self.gen += 1
        elif outcome == "success":
            self.streak = 0
        return self.state

    async def force(self, name: str, state: CircuitState, **config: Any) -> None:
        self.state = state

    async def reset(self, name: str) -> None:
        self.state = CircuitState.CLOSED

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        return {"state": self.state}


async def test_acquire_with_a_store_backed_breaker() -> None:
    with VirtualClock(start=0.0):
        store = MemoryBreakerStore()
        assert isinstance(store, BreakerStore)
        breaker = CircuitBreaker("svc", failure_threshold=2, store=store)
        t = Throttle(2, circuit_breaker=breaker, failure_threshold=100)
        async with t.acquire() as slot:
            assert slot.attempt == 0
        assert store.calls == ["admit", "record success"]
        for _ in range(2):
            with pytest.raises(KeyError):
                async with t.acquire():
                    raise KeyError
        assert store.calls[-2:] == ["admit", "record failure"]
        with pytest.raises(CircuitOpenError):
            async with t.acquire():
                pytest.fail("the body must not run while the breaker is open")
        snap = t.snapshot()
        assert snap.in_flight == snap.waiting == 0
        assert snap.concurrency == 2  # breaker rejections are not congestion


async def test_acquire_and_execute_record_the_same_outcomes_in_the_breaker() -> None:
    with VirtualClock(start=0.0):
        via_execute, via_acquire = MemoryBreakerStore(), MemoryBreakerStore()
        first = Throttle(2, circuit_breaker=CircuitBreaker("a", store=via_execute))
        second = Throttle(2, circuit_breaker=CircuitBreaker("b", store=via_acquire))

        async def fail(slot: Slot) -> None:
            raise KeyError

        await first.execute(lambda s: asyncio.sleep(0))
        with pytest.raises(KeyError):
            await first.execute(fail)
        async with second.acquire():
            await asyncio.sleep(0)
        with pytest.raises(KeyError):
            async with second.acquire():
                raise KeyError
        assert via_execute.calls == via_acquire.calls


async def test_acquire_cancelled_inside_a_store_backed_breaker_holds_nothing() -> None:
    with VirtualClock(start=0.0):
        store = MemoryBreakerStore()
        t = Throttle(1, circuit_breaker=CircuitBreaker("svc", store=store))

        async def hold() -> None:
            async with t.acquire():
                await asyncio.sleep(100)

        task = asyncio.create_task(hold())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert t.snapshot().in_flight == 0
        assert t.snapshot().failed == 0
        async with t.acquire():
            pass
        assert store.calls[-1] == "record success"


def test_a_shared_budget_needs_a_name_and_a_store() -> None:
    with pytest.raises(ConfigurationError, match="name"):
        TokenBudget(10, store=LoopClockStore())
    with pytest.raises(ConfigurationError, match="store"):
        TokenBudget(10, name="x", store=object())  # type: ignore[arg-type]


def test_a_store_rejects_names_it_cannot_use_when_the_budget_is_built() -> None:
    class Picky(LoopClockStore):
        def check_name(self, name: str) -> None:
            if "{" in name:
                raise ConfigurationError.argument_error("name", name, "no braces")

    with pytest.raises(ConfigurationError, match="braces"):
        RequestBudget(10, name="a{b}", store=Picky())
    assert RequestBudget(10, name="ab", store=Picky()).name == "ab"


@pytest.mark.parametrize("way", ["execute", "acquire"])
async def test_a_call_the_breaker_refuses_after_its_reservation_gives_it_back(way: str) -> None:
    with VirtualClock(start=0.0):
        store = LoopClockStore()
        rpm = RequestBudget(10, 60.0, name="rpm", store=store)
        t = Throttle(1, budgets=[rpm], circuit_breaker=CircuitBreaker(failure_threshold=1))

        async def failing(slot: Slot) -> None:
            await asyncio.sleep(1)
            raise KeyError("the service failed")

        async def second() -> None:
            if way == "execute":
                await t.execute(lambda s: asyncio.sleep(0))
            else:
                async with t.acquire():
                    pytest.fail("the body must not run")

        first = asyncio.create_task(t.execute(failing))
        await asyncio.sleep(0)
        queued = asyncio.create_task(second())  # granted a request, queued for the slot
        await asyncio.sleep(0.5)
        assert store.used("rpm", 60.0) == 2
        with pytest.raises(KeyError):
            await first  # opens the breaker
        with pytest.raises(CircuitOpenError):
            await queued  # admitted, then refused by the breaker: it never ran
        assert store.used("rpm", 60.0) == 1
        snap = t.snapshot()
        assert snap.in_flight == snap.waiting == 0


async def test_a_call_queued_behind_a_refused_one_whose_coroutine_is_closed_is_skipped() -> None:
    with VirtualClock(start=0.0) as clock:
        store = LoopClockStore()
        t = Throttle(4, budgets=[TokenBudget(10, 60.0, name="tpm", store=store)])
        await t.execute(lambda s: asyncio.sleep(0), tokens=10)
        refused = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0), tokens=5))
        await asyncio.sleep(1)  # refused: it holds the line
        behind = t.execute(lambda s: asyncio.sleep(0), tokens=1)
        behind.send(None)  # queued behind it
        behind.close()  # it leaves without its turn being cancelled
        await refused
        async with asyncio.timeout(3600):
            await t.execute(lambda s: asyncio.sleep(0), tokens=1)  # the line moves on
        assert clock.now() == 60.0
        assert t.snapshot().waiting == 0
