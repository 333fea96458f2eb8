from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Sequence
from typing import Any

import pytest

from headrace_core import Closed
from headrace_core.testing import VirtualClock
from headrace_guards import Bulkhead, BulkheadFull, ConfigurationError, GuardEvent
from shared.faults import settle


class Probe:
    """Tracks peak concurrency."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[int] = []

    async def work(self, i: int, seconds: float = 1.0) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(i)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return i


async def test_limits_concurrency_and_keeps_fifo() -> None:
    probe = Probe()
    with VirtualClock() as clock:
        bulkhead = Bulkhead(3)
        start = clock.now()
        tasks = [asyncio.create_task(bulkhead.call(probe.work, i)) for i in range(10)]
        await asyncio.sleep(0)
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.waiting, snap.available) == (3, 7, 0)
        assert await asyncio.gather(*tasks) == list(range(10))
        assert clock.now() - start == 4
    assert probe.peak == 3
    assert probe.order == list(range(10))
    snap = bulkhead.snapshot()
    assert (snap.in_flight, snap.waiting, snap.completed) == (0, 0, 10)


async def test_newcomer_never_overtakes_queued_waiter() -> None:
    bulkhead = Bulkhead(1)
    order: list[str] = []
    await bulkhead.acquire()

    async def waiter(tag: str) -> None:
        await bulkhead.acquire()
        order.append(tag)
        bulkhead.release()

    first = asyncio.create_task(waiter("queued"))
    await asyncio.sleep(0)
    bulkhead.release()  # the slot goes to "queued" directly
    late = asyncio.create_task(waiter("newcomer"))
    await asyncio.gather(first, late)
    assert order == ["queued", "newcomer"]


async def test_max_wait_zero_fails_fast() -> None:
    events: list[GuardEvent] = []
    bulkhead = Bulkhead(1, max_wait=0, name="fast-fail-test")
    bulkhead.add_listener(events.append)
    await bulkhead.acquire()
    with pytest.raises(BulkheadFull) as info:
        await bulkhead.acquire()
    assert info.value.name == "fast-fail-test"
    assert info.value.retry_after is None
    bulkhead.release()
    assert bulkhead.snapshot().rejected == 1
    assert [e.kind for e in events] == ["rejected"]


async def test_max_wait_times_out_then_passes_slot_on() -> None:
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, max_wait=5)
        holder = asyncio.create_task(bulkhead.call(asyncio.sleep, 10))
        await asyncio.sleep(0)
        start = clock.now()
        with pytest.raises(BulkheadFull):
            await bulkhead.call(asyncio.sleep, 0)
        assert clock.now() - start == 5
        await holder
        assert bulkhead.snapshot().in_flight == 0
        assert bulkhead.snapshot().waiting == 0


async def test_max_waiters_caps_the_queue() -> None:
    bulkhead = Bulkhead(1, max_waiters=1)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.call(gate.wait))
    queued = asyncio.create_task(bulkhead.call(gate.wait))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull):
        await bulkhead.call(gate.wait)
    gate.set()
    await asyncio.gather(holder, queued)
    no_queue = Bulkhead(1, max_waiters=0)
    await no_queue.acquire()
    with pytest.raises(BulkheadFull):
        await no_queue.acquire()
    no_queue.release()


async def test_cancelled_waiter_leaves_queue() -> None:
    bulkhead = Bulkhead(1)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    assert bulkhead.snapshot().waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.snapshot().waiting == 0
    bulkhead.release()
    assert bulkhead.snapshot().in_flight == 0


async def test_waiter_cancelled_after_hand_off_passes_slot_on() -> None:
    bulkhead = Bulkhead(1)
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    bulkhead.release()  # handed to ``first``, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # got the slot that ``first`` passed on
    snap = bulkhead.snapshot()
    assert (snap.in_flight, snap.waiting) == (1, 0)
    bulkhead.release()
    assert bulkhead.snapshot().in_flight == 0


async def test_release_without_acquire_raises() -> None:
    with pytest.raises(RuntimeError):
        Bulkhead(1).release()


async def test_resize_grow_wakes_waiters_and_shrink_drains() -> None:
    probe = Probe()
    with VirtualClock():
        bulkhead = Bulkhead(1)
        tasks = [asyncio.create_task(bulkhead.call(probe.work, i, 10)) for i in range(6)]
        await asyncio.sleep(0)
        assert probe.running == 1
        bulkhead.resize(4)
        await asyncio.sleep(0)
        assert probe.running == 4
        assert bulkhead.snapshot().limit == 4
        bulkhead.resize(2)
        assert probe.running == 4  # running work is never cancelled
        await asyncio.gather(*tasks)
    assert bulkhead.snapshot().in_flight == 0
    with pytest.raises(ConfigurationError, match="limit"):
        bulkhead.resize(0)


async def test_resize_shrink_limits_later_calls() -> None:
    probe = Probe()
    with VirtualClock():
        bulkhead = Bulkhead(4)
        first = [asyncio.create_task(bulkhead.call(probe.work, i, 1)) for i in range(4)]
        await asyncio.sleep(0)
        bulkhead.resize(1)
        later = [asyncio.create_task(bulkhead.call(probe.work, i, 1)) for i in range(4, 8)]
        await asyncio.gather(*first)
        probe.peak = 0
        await asyncio.gather(*later)
    assert probe.peak == 1


async def test_named_bulkheads_share_one_limit() -> None:
    probe = Probe()
    with VirtualClock():
        a = Bulkhead(2, name="shared-test-pool")
        b = Bulkhead(2, name="shared-test-pool")
        tasks = [asyncio.create_task(g.call(probe.work, i)) for i, g in enumerate([a, b] * 3)]
        await asyncio.gather(*tasks)
        assert probe.peak == 2
        a.resize(3)
        assert b.limit == 3


def test_named_conflict_names_bulkhead_and_argument() -> None:
    keep = Bulkhead(2, name="conflict-test", max_wait=1)
    with pytest.raises(ConfigurationError, match=r"conflict-test.*limit"):
        Bulkhead(3, name="conflict-test", max_wait=1)
    with pytest.raises(ConfigurationError, match=r"conflict-test.*max_wait"):
        Bulkhead(2, name="conflict-test")
    with pytest.raises(ConfigurationError, match="max_waiters"):
        Bulkhead(2, name="conflict-test", max_wait=1, max_waiters=3)
    assert keep.limit == 2


def test_dead_name_can_be_redeclared() -> None:
    Bulkhead(2, name="ephemeral-test")
    gc.collect()
    assert Bulkhead(5, name="ephemeral-test").limit == 5


def test_named_bulkhead_works_across_asyncio_run() -> None:
    bulkhead = Bulkhead(1, name="across-runs-test")

    async def main() -> int:
        async with bulkhead:
            return bulkhead.snapshot().in_flight

    assert asyncio.run(main()) == 1
    assert asyncio.run(main()) == 1


async def test_async_with_releases_on_error() -> None:
    bulkhead = Bulkhead(1)

    async def body() -> None:
        async with bulkhead as entered:
            assert entered is bulkhead
            raise KeyError("x")

    with pytest.raises(KeyError):
        await body()
    assert bulkhead.snapshot().in_flight == 0


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": 1, "max_wait": -1}, "max_wait"),
        ({"limit": 1, "max_waiters": -1}, "max_waiters"),
        ({"limit": 1, "clock": 5}, "clock"),
        ({"limit": 1, "name": ""}, "name"),
    ],
)
def test_validation(kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ConfigurationError, match=arg):
        Bulkhead(**kwargs)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stress_peak_never_exceeds_limit_and_no_slot_leaks(seed: int) -> None:
    rng = random.Random(seed)
    limit = 7
    bulkhead = Bulkhead(limit, max_wait=rng.choice([None, 3.0]))
    probe = Probe()
    outcomes = {"ok": 0, "full": 0, "cancelled": 0, "timeout": 0}

    async def one(i: int) -> None:
        try:
            async with asyncio.timeout(rng.uniform(0.5, 8)):
                await bulkhead.call(probe.work, i, rng.uniform(0, 2))
            outcomes["ok"] += 1
        except BulkheadFull:
            outcomes["full"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1

    with VirtualClock():
        tasks = [asyncio.create_task(one(i)) for i in range(2000)]
        for _ in range(300):
            await asyncio.sleep(rng.uniform(0, 0.05))
            victim = rng.choice(tasks)
            victim.cancel()
            if rng.random() < 0.2:
                bulkhead.resize(rng.randint(1, limit))
        await asyncio.gather(*tasks, return_exceptions=True)
    assert probe.peak <= limit
    snap = bulkhead.snapshot()
    assert (snap.in_flight, snap.waiting) == (0, 0)
    assert probe.running == 0
    assert outcomes["ok"] > 0


def test_named_redeclaration_after_resize_accepts_either_limit() -> None:
    first = Bulkhead(2, name="resized-decl-test")
    first.resize(5)
    assert Bulkhead(2, name="resized-decl-test").limit == 5
    assert Bulkhead(5, name="resized-decl-test").limit == 5
    with pytest.raises(ConfigurationError, match="limit"):
        Bulkhead(3, name="resized-decl-test")


async def test_resize_right_after_a_queued_waiter_is_cancelled() -> None:
    with VirtualClock():
        bulkhead = Bulkhead(1)
        gate = asyncio.Event()
        holder = asyncio.create_task(bulkhead.call(gate.wait))
        await asyncio.sleep(0)
        first = asyncio.create_task(bulkhead.call(asyncio.sleep, 1, "first"))
        second = asyncio.create_task(bulkhead.call(asyncio.sleep, 1, "second"))
        third = asyncio.create_task(bulkhead.call(asyncio.sleep, 1, "third"))
        await asyncio.sleep(0)
        assert bulkhead.snapshot().waiting == 3
        first.cancel()  # its task has not run yet: its future is in the queue, cancelled
        bulkhead.resize(4)  # hands the new slots to the waiters still there
        snap = bulkhead.snapshot()
        assert snap.in_flight == 3
        gate.set()
        assert list(await asyncio.gather(second, third)) == ["second", "third"]
        with pytest.raises(asyncio.CancelledError):
            await first
        await holder
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.waiting, snap.completed) == (0, 0, 3)


# -- store-backed slots -------------------------------------------------------------------


class LeaseStore:
    """A small bulkhead store; ``acquire_mode`` makes acquire misbehave after taking a lease."""

    def __init__(self) -> None:
        self.leases: set[str] = set()
        self.released: list[str] = []
        self.acquire_mode = "ok"
        self.release_delay = 0.0

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        if lease_id in self.released:
            return False  # a spent id takes nothing
        if len(self.leases) >= limit:
            return False
        self.leases.add(lease_id)
        mode = self.acquire_mode
        if mode == "lost":  # the store took the lease, the reply never came back
            raise BulkheadFull(name=name)
        if mode == "error":
            raise ConnectionError("reply lost")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "garbage":
            return "yes"  # type: ignore[return-value]
        return True

    async def release(self, name: str, lease_id: str) -> None:
        if self.release_delay:
            await asyncio.sleep(self.release_delay)
        self.released.append(lease_id)
        self.leases.discard(lease_id)

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        return lease_id in self.leases

    async def in_flight(self, name: str) -> int:
        return len(self.leases)


async def test_store_backed_snapshot_counts_held_slots_and_max_waiters_caps_the_queue() -> None:
    store = LeaseStore()
    with VirtualClock():
        bulkhead = Bulkhead(1, name="store-waiters", store=store, max_waiters=1)
        gate = asyncio.Event()
        holder = asyncio.create_task(bulkhead.call(gate.wait))
        await asyncio.sleep(0)
        assert bulkhead.snapshot().in_flight == 1
        waiter = asyncio.create_task(bulkhead.call(asyncio.sleep, 0, "waited"))
        await asyncio.sleep(0.001)
        assert bulkhead.snapshot().waiting == 1
        with pytest.raises(BulkheadFull):
            await bulkhead.call(asyncio.sleep, 0)  # a second waiter is over the cap
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.waiting, snap.rejected) == (1, 1, 1)
        gate.set()
        await holder
        assert await waiter == "waited"
        async with bulkhead:
            assert bulkhead.snapshot().in_flight == 1
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.waiting, snap.completed) == (0, 0, 3)
        assert store.leases == set()
        await bulkhead.aclose()


@pytest.mark.parametrize("mode", ["lost", "error", "hang", "garbage"])
async def test_store_acquire_of_unknown_outcome_releases_its_lease(mode: str) -> None:
    store = LeaseStore()
    store.acquire_mode = mode
    store.release_delay = 5.0  # a slow release never holds the caller back
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, name=f"store-unknown-{mode}", store=store)
        expected: type[BaseException] = {
            "lost": BulkheadFull,
            "error": ConnectionError,
            "hang": TimeoutError,
            "garbage": TypeError,
        }[mode]
        with pytest.raises(expected):
            async with asyncio.timeout(1):
                await bulkhead.call(asyncio.sleep, 0)
        ended = clock.now()
        assert ended <= 1
        assert len(store.leases) == 1  # the store took it: released in the background
        await settle(bulkhead)
        assert store.leases == set()
        assert clock.now() == pytest.approx(ended + 5)
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.waiting) == (0, 0)
        store.acquire_mode = "ok"
        store.release_delay = 0.0
        assert await bulkhead.call(asyncio.sleep, 0, "next") == "next"
        assert store.leases == set()


async def test_a_sync_function_is_named_not_async_and_its_slot_is_returned() -> None:
    def compute() -> int:
        return 42

    store = LeaseStore()
    for bulkhead in (Bulkhead(1), Bulkhead(1, name="store-sync-fn", store=store)):
        with pytest.raises(TypeError, match="compute is not an async function"):
            await bulkhead.call(compute)  # type: ignore[arg-type]
        assert bulkhead.snapshot().in_flight == 0
    assert store.leases == set()


async def test_store_max_wait_at_the_bound_does_not_flip(clock_start: float) -> None:
    store = LeaseStore()
    store.leases = {"other"}
    with VirtualClock(start=clock_start) as clock:
        bulkhead = Bulkhead(1, name="store-max-wait", store=store, max_wait=0.3)
        before = clock.now()
        with pytest.raises(BulkheadFull):
            await bulkhead.call(asyncio.sleep, 0)
        assert clock.now() - before == pytest.approx(0.3)
        assert bulkhead.snapshot().waiting == 0


# -- a store whose acquire carries releases ----------------------------------------------


class CarryingStore(LeaseStore):
    """A LeaseStore whose ``acquire`` gives back the leases of ``release=`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.carried: list[list[str]] = []

    async def acquire(
        self, name: str, limit: int, lease_id: str, ttl: float, *, release: Sequence[str] = ()
    ) -> bool:
        self.calls.append("acquire")
        self.carried.append(list(release))
        for lease in release:
            self.released.append(lease)
            self.leases.discard(lease)
        return await super().acquire(name, limit, lease_id, ttl)

    async def release(self, name: str, lease_id: str) -> None:
        self.calls.append("release")
        await super().release(name, lease_id)


async def test_a_carrying_store_gets_one_call_per_call_and_no_caller_waits() -> None:
    store = CarryingStore()
    store.release_delay = 5.0  # a slow release
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, name="carry-one", max_wait=0, store=store)
        for i in range(5):
            # One slot and no wait: refused, were the slot before still held.
            assert await bulkhead.call(asyncio.sleep, 0, i) == i
        assert clock.now() == 0  # nobody waited for a release
        assert store.calls == ["acquire"] * 5
        assert [len(carried) for carried in store.carried] == [0, 1, 1, 1, 1]
        assert len(store.leases) == 1  # the last slot given back: no acquire carried it
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.completed) == (0, 5)
        await bulkhead.aclose()  # waits for its release, sent on its own
        assert store.calls == [*["acquire"] * 5, "release"]
        assert clock.now() == pytest.approx(5.0)
        assert store.leases == set()


async def test_a_store_without_release_keeps_the_caller_waiting_for_its_release() -> None:
    store = LeaseStore()
    store.release_delay = 5.0
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, name="plain-store", max_wait=0, store=store)
        assert await bulkhead.call(asyncio.sleep, 0, "x") == "x"
        assert clock.now() == pytest.approx(5.0)  # the release was awaited
        assert store.leases == set()
        assert await bulkhead.call(asyncio.sleep, 0, "y") == "y"  # the slot is free
        await bulkhead.aclose()


class _Positional:
    async def acquire(
        self, name: str, limit: int, lease_id: str, ttl: float, release: Any = ()
    ) -> bool:
        return True

    async def release(self, name: str, lease_id: str) -> None:
        return None


class _Keywords:
    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float, **kw: Any) -> bool:
        return True

    async def release(self, name: str, lease_id: str) -> None:
        return None


class _NoSignature:
    acquire = staticmethod(max)  # a builtin whose signature cannot be read

    async def release(self, name: str, lease_id: str) -> None:
        return None


@pytest.mark.parametrize(
    ("store", "carries"),
    [
        (CarryingStore(), True),
        (_Positional(), True),
        (LeaseStore(), False),
        (_Keywords(), False),  # **kw may drop it: only a parameter named release counts
        (_NoSignature(), False),
    ],
    ids=["keyword-only", "positional-or-keyword", "plain", "var-keyword", "no-signature"],
)
def test_release_is_found_in_the_acquire_signature(store: Any, carries: bool) -> None:
    bulkhead = Bulkhead(1, name=f"signature-{type(store).__name__}", store=store)
    assert bulkhead._carries is carries


async def test_a_cancelled_caller_leaves_no_lease_with_a_carrying_store() -> None:
    store = CarryingStore()
    with VirtualClock():
        bulkhead = Bulkhead(1, name="carry-cancel", store=store)
        task = asyncio.create_task(bulkhead.call(asyncio.sleep, 10))
        await asyncio.sleep(1)
        assert len(store.leases) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bulkhead.snapshot().in_flight == 0
        await bulkhead.aclose()
        assert store.leases == set()
        assert store.calls == ["acquire", "release"]


async def test_instances_of_one_name_carry_each_others_releases_only_to_their_store() -> None:
    async def instant() -> None:
        return None  # never yields: a release given back is still there for the next call

    store = CarryingStore()
    other = CarryingStore()
    with VirtualClock():
        a = Bulkhead(1, name="carry-shared", max_wait=0, store=store)
        b = Bulkhead(1, name="carry-shared", max_wait=0, store=store)
        for _ in range(3):
            await a.call(instant)
            await b.call(instant)  # carries a's release, and a carries b's
        assert store.calls == ["acquire"] * 6
        c = Bulkhead(1, name="carry-shared", max_wait=0, store=other)
        await c.call(instant)  # another store: b's lease is not its to carry
        assert other.carried == [[]]
        await a.call(instant)  # carries b's, and leaves c's alone
        assert len(store.carried[-1]) == 1
        assert store.calls == ["acquire"] * 7
        for bulkhead in (a, b, c):
            await bulkhead.aclose()
        assert store.leases == other.leases == set()
        assert store.calls == [*["acquire"] * 7, "release"]
        assert other.calls == ["acquire", "release"]


async def test_a_waiter_polling_a_carrying_store_gets_the_slot_given_back() -> None:
    store = CarryingStore()
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, name="carry-wait", max_wait=2, store=store)
        holder = asyncio.create_task(bulkhead.call(asyncio.sleep, 1, "held"))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(bulkhead.call(asyncio.sleep, 0, "waited"))
        assert await holder == "held"
        assert await waiter == "waited"
        assert 1 <= clock.now() <= 1.3  # the next poll after the release
        await bulkhead.aclose()
        assert store.leases == set()
        snap = bulkhead.snapshot()
        assert (snap.in_flight, snap.waiting, snap.rejected, snap.completed) == (0, 0, 0, 2)


@pytest.mark.parametrize("carrying", [True, False])
async def test_a_caller_polling_the_store_is_woken_when_a_local_slot_comes_back(
    carrying: bool,
) -> None:
    store = CarryingStore() if carrying else LeaseStore()
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, name=f"wake-{carrying}", store=store)
        gate = asyncio.Event()
        holder = asyncio.create_task(bulkhead.call(gate.wait))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(bulkhead.call(asyncio.sleep, 0, "waited"))
        await asyncio.sleep(1.0)  # the waiter's polls back off (0.25 s apart by now)
        assert not waiter.done()
        released = clock.now()
        gate.set()
        await holder
        assert await waiter == "waited"
        assert clock.now() == pytest.approx(released)  # at once, not at its next poll
        assert bulkhead.snapshot().waiting == 0
        await bulkhead.aclose()
        assert store.leases == set()


async def test_close_refuses_the_callers_polling_the_store_at_once() -> None:
    store = LeaseStore()
    store.leases = {"held elsewhere"}
    with VirtualClock() as clock:
        bulkhead = Bulkhead(1, name="close-pollers", store=store)
        waiters = [asyncio.create_task(bulkhead.call(asyncio.sleep, 0)) for _ in range(3)]
        await asyncio.sleep(1.0)
        closed_at = clock.now()
        await bulkhead.aclose()
        for waiter in waiters:
            with pytest.raises(Closed):
                await waiter
        assert clock.now() == pytest.approx(closed_at)
        assert bulkhead.snapshot().waiting == 0
        assert store.leases == {"held elsewhere"}
