"""An ordered stage's window: its input's gate, the release order, and runs around them.

An ordered stage with a FIFO input holds at most ``target`` items (in its workers' hands,
or finished and held until every earlier item is out): its input hands out no item
numbered ``released + target`` or more, and a worker with nothing to take waits on the
input like any idle worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core.testing import VirtualClock
from headrace_flow import (
    DROP,
    FixedScaling,
    Flow,
    FlowStats,
    Last,
    StageStats,
    TransformerError,
    flow,
    stage,
)
from headrace_flow._autoscale import Scaler
from headrace_flow._channel import EOF, OPEN, RETIRE, Channel, Finals
from headrace_flow._errors import ErrorEvent
from headrace_flow._plan import PLAIN_CALLS, Kind, StagePlan
from headrace_flow._queues import fifo_queue
from headrace_flow._state import NO_ITEM, StageRun, Tally
from headrace_flow._worker import Worker


def idle(f: Flow[Any, Any]) -> FlowStats:
    stats = f.stats()
    assert not f.running
    assert all(s.workers == 0 and s.busy_workers == 0 for s in stats.stages.values()), stats
    return stats


# -- the channel's gate ------------------------------------------------------------------------
async def test_a_gated_channel_stores_what_is_past_the_gate_and_hands_it_out_when_raised() -> None:
    ch = Channel(asyncio.get_running_loop(), fifo_queue, 0, numbered=True)
    ch.set_producers(1)
    assert ch.gate == OPEN
    ch.gate = 1
    getter = ch.getter()
    assert ch.try_put("a")  # number 0: handed to the waiting getter
    assert getter.result() == (0, "a")
    waiting = [ch.getter(), ch.getter()]
    assert ch.try_put("b")  # number 1: past the gate, stored
    assert ch.try_put("c")  # stored behind it (nothing passes a stored entry)
    assert ch.size == 2
    assert not ch.ready()
    assert not any(w.done() for w in waiting)
    ch.gate = 2
    ch.hand_out()
    assert waiting[0].result() == (1, "b")
    assert not waiting[1].done()  # "c" (number 2) is still past the gate
    assert ch.size == 1
    ch.gate = 3
    assert ch.ready()
    assert await ch.wait() == (2, "c")
    assert ch.size == 0
    assert not waiting[1].done()
    assert ch.try_put("d")  # number 3, past the gate, with a getter waiting
    assert ch.size == 1
    assert not waiting[1].done()
    waiting[1].cancel()
    ch.abandon(waiting[1])


async def test_closing_a_gated_channel_ends_its_getters_only_once_its_store_is_empty() -> None:
    ch = Channel(asyncio.get_running_loop(), fifo_queue, 0, numbered=True)
    ch.set_producers(1)
    ch.gate = 0
    assert ch.try_put("a")
    ch.add_final("last")
    getters = [ch.getter(), ch.getter(), ch.getter()]
    assert ch.close_one()  # "a" is still stored, past the gate: the getters wait
    assert not any(g.done() for g in getters)
    assert ch.pending()
    ch.gate = 1
    ch.hand_out()
    assert getters[0].result() == (0, "a")
    finals = getters[1].result()  # then the finals, then EOF, as for any closed channel
    assert isinstance(finals, Finals)
    assert finals.values == ["last"]
    assert getters[2].result() is EOF
    assert not ch.pending()


async def test_a_getter_waiting_behind_the_gate_can_be_retired() -> None:
    ch = Channel(asyncio.get_running_loop(), fifo_queue, 0, numbered=True)
    ch.set_producers(1)
    ch.gate = 0
    assert ch.try_put("a")
    getter = ch.getter()
    assert ch.retire_one()
    assert getter.result() is RETIRE
    assert ch.size == 1


async def test_unnumbered_channels_ignore_the_gate() -> None:
    ch = Channel(asyncio.get_running_loop(), fifo_queue, 1)
    ch.set_producers(1)
    getter = ch.getter()
    assert ch.try_put("a")
    assert getter.result() == "a"
    assert ch.try_put("b")
    assert ch.ready()
    assert not ch.try_put("c")  # full
    assert ch.seq == 0  # not numbered


# -- the worker loop against a recording engine: the window never opens wider ------------------
class Engine:
    """Records what the workers ask of their run (the ``Engine`` protocol)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tally = Tally()
        self.ended = False
        self.draining = False
        self.tracked = False
        self.events: list[ErrorEvent] = []
        self.lasts: list[object] = []
        self.outside: list[object] = []  # what cancelled_outside() was told

    def abort(self, error: BaseException) -> None:
        raise AssertionError(f"aborted: {error!r}")

    async def report(self, event: ErrorEvent) -> None:
        self.events.append(event)

    async def failed_item(self, st: StageRun, item: object, exc: BaseException) -> None:
        st.live.errors += 1
        self.tally.failed += 1
        await self.report(TransformerError(item, exc, st.name))

    def scale(self, st: StageRun, *, tick: bool, enqueue: bool) -> None:
        pass

    async def last(self, st: StageRun, value: object) -> None:
        self.lasts.append(value)
        st.cut = True
        st.input.drain_items()
        st.input.close()

    def worker_exit(self, st: StageRun) -> None:
        st.live.workers -= 1
        waiter = st.final_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def maybe_finish(self, st: StageRun) -> None:
        pass

    def close_source(self) -> None:
        pass

    def cancelled_outside(
        self, st: StageRun | None, exc: asyncio.CancelledError, item: object = NO_ITEM
    ) -> None:
        self.outside.append(item)


def ordered_stage(engine: Engine, target: Any, queue_size: int) -> tuple[StageRun, Channel]:
    plan = StagePlan(
        index=0,
        name="s",
        kind=Kind.MAP,
        target=target,
        calls=PLAIN_CALLS,
        scaling=FixedScaling(1),
        queue=fifo_queue,
        queue_size=queue_size,
        ordered=True,
    )
    inbox = Channel(engine.loop, fifo_queue, queue_size, numbered=True)
    inbox.set_producers(1)
    st = StageRun(plan, inbox, Scaler(plan.scaling), target)
    out = Channel(engine.loop, fifo_queue, 0)
    out.set_producers(1)
    st.out = out
    return st, out


OUTCOMES = ("value", "drop", "error")


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(st.tuples(st.sampled_from(OUTCOMES), st.integers(0, 9)), min_size=0, max_size=50),
    workers=st.integers(1, 8),
    queue_size=st.integers(0, 3),
)
def test_property_the_window_bounds_what_is_taken_and_the_order_holds(
    plan: list[tuple[str, int]], workers: int, queue_size: int
) -> None:
    """Random per-item delays, drops and failures, with items fed while workers run."""

    async def main() -> None:
        engine = Engine()
        worst = 0

        async def work(x: int) -> Any:
            nonlocal worst
            order = st_.order
            assert order is not None
            # the gate: no item taken past the window, whatever finished first
            assert x < order.released + workers
            worst = max(worst, order.taken - order.released)
            outcome, delay = plan[x]
            await asyncio.sleep(delay / 10)
            if outcome == "drop":
                return DROP
            if outcome == "error":
                raise ValueError(x)
            return x

        st_, out = ordered_stage(engine, work, queue_size)
        st_.scaler.target = workers
        st_.live.workers = workers

        async def feed() -> None:
            for x in range(len(plan)):
                await st_.input.put(x)
            st_.input.close_one()

        with VirtualClock():
            await asyncio.gather(feed(), *(Worker(engine, st_).run() for _ in range(workers)))
        assert out.drain_items() == [x for x, (o, _) in enumerate(plan) if o == "value"]
        failed = [x for x, (o, _) in enumerate(plan) if o == "error"]
        # (a failure is reported when it happens, not in the release order)
        assert sorted(e.item for e in engine.events if isinstance(e, TransformerError)) == failed
        order = st_.order
        assert order is not None
        assert order.released == order.taken == len(plan)
        assert order.held == {}
        assert worst <= workers
        assert st_.live.workers == 0
        assert st_.live.filtered == sum(o == "drop" for o, _ in plan)

    asyncio.run(main())


# -- whole flows -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("workers", [1, 2, 5, 16])
async def test_seeded_stress_of_ordered_stages_keeps_input_order(seed: int, workers: int) -> None:
    rng = random.Random(seed * 100 + workers)
    n = rng.randint(50, 200)
    fate = [rng.choice(["ok"] * 6 + ["drop", "error"]) for _ in range(n)]
    delays = [rng.choice([0, 0, 0.1, 0.5, 2.0]) for _ in range(n)]
    counts = [rng.randint(0, 3) for _ in range(n)]
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def first(x: int) -> Any:
        await asyncio.sleep(delays[x])
        if fate[x] == "drop":
            return DROP
        if fate[x] == "error":
            raise ValueError(x)
        return x

    async def second(x: int) -> AsyncIterator[tuple[int, int]]:
        for i in range(counts[x]):
            await asyncio.sleep(delays[(x + i) % n] / 2)
            yield (x, i)

    async def third(value: tuple[int, int]) -> tuple[int, int]:
        await asyncio.sleep(delays[value[0]] / 4)
        return value

    f = flow(
        stage(first, workers=workers, queue_size=rng.randint(1, 3), ordered=True),
        stage(second, workers=max(1, workers // 2), queue_size=rng.randint(1, 3), ordered=True),
        stage(third, workers=workers, queue_size=rng.randint(1, 3), ordered=True),
        on_error=handler,
    )
    with VirtualClock():
        out = [v async for v in f.iterate(range(n))]
    kept = [x for x in range(n) if fate[x] == "ok"]
    assert out == [(x, i) for x in kept for i in range(counts[x])]
    assert sorted(e.item for e in events) == [x for x in range(n) if fate[x] == "error"]
    stats = idle(f)
    assert stats.completed == len(out)
    assert stats.failed == fate.count("error")
    assert stats.accepted + sum(max(0, counts[x] - 1) for x in kept) == (
        stats.completed + stats.failed + stats.filtered + stats.discarded
    )
    assert stats.discarded == 0


async def test_the_window_holds_back_the_queue_behind_a_slow_head_then_lets_all_through() -> None:
    pulled = 0
    started: list[int] = []

    async def source() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(30):
            pulled += 1
            yield i

    async def work(x: int) -> int:
        started.append(x)
        await asyncio.sleep(100 if x == 0 else 1)
        return x

    f = flow(stage(work, workers=4, queue_size=2, ordered=True))
    with VirtualClock():
        outputs = f.iterate(source)
        first = asyncio.create_task(anext(outputs))
        await asyncio.sleep(50)
        # items 0..3 in the window (0 slow, 1..3 held), 2 queued, 1 in the source's hand
        assert sorted(started) == [0, 1, 2, 3]
        assert pulled == 4 + 2 + 1
        stats = f.stats().stages["work"]
        assert stats.queue_length == 2
        assert stats.busy_workers == 1  # the others wait on the input, behind the window
        assert await first == 0
        rest = [v async for v in outputs]
    assert rest == list(range(1, 30))
    idle(f)


async def test_the_input_closing_while_items_wait_behind_the_window_ends_cleanly() -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(10 if x % 5 == 0 else 1)
        return x

    # every item is queued (unbounded) and the source closes at once: the idle workers
    # wait behind the window until the gate lets the queued items through, then see EOF
    f = flow(stage(work, workers=3, queue_size=0, ordered=True))
    with VirtualClock():
        out = [v async for v in f.iterate(range(23))]
    assert out == list(range(23))
    idle(f)


async def test_last_while_workers_wait_behind_the_window_ends_the_stream() -> None:
    async def work(x: int) -> Any:
        await asyncio.sleep(10 if x == 0 else 1)
        return Last(x) if x == 2 else x

    f = flow(stage(work, workers=4, queue_size=3, ordered=True))
    with VirtualClock():
        out = [v async for v in f.iterate(range(40))]
    assert out == [0, 1, 2]
    idle(f)


async def test_cancelling_while_results_are_held_and_workers_wait_leaves_nothing_behind() -> None:
    entered = 0
    exited = 0
    closed: list[int] = []

    async def work(x: int) -> int:
        try:
            await asyncio.sleep(100 if x == 0 else 1)
            return x
        finally:
            closed.append(x)

    @contextlib.asynccontextmanager
    async def pooled() -> AsyncIterator[Callable[[int], Any]]:
        nonlocal entered, exited
        entered += 1
        try:
            yield work
        finally:
            exited += 1

    f = flow(stage(pooled, workers=3, queue_size=2, ordered=True))
    with VirtualClock():
        task = asyncio.create_task(f.run(range(10)))
        await asyncio.sleep(5)  # 1 and 2 held behind 0, their workers wait behind the window
        assert f.stats().stages["pooled"].busy_workers == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert entered == exited == 3
    assert 0 in closed
    idle(f)


async def test_stop_while_workers_wait_behind_the_window_returns_promptly() -> None:
    out: list[int] = []

    async def work(x: int) -> int:
        await asyncio.sleep(100 if x == 0 else 1)
        return x

    async def sink(x: int) -> None:
        out.append(x)

    f = flow(stage(work, workers=4, queue_size=2, ordered=True), sink)
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run(range(10)))
        await asyncio.sleep(5)
        before = clock.now()
        await f.stop()
        assert clock.now() == before
        stats = await task
    assert out == []
    assert stats.completed == 0
    idle(f)


class Steps:
    """A strategy that moves the target as it is told (``target`` by loop time)."""

    min_workers = 1
    max_workers = 8

    def __init__(self, initial: int, plan: list[tuple[float, int]]) -> None:
        self.initial = initial
        self.plan = plan

    def initial_workers(self) -> int:
        return self.initial

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        wanted = self.initial
        for at, target in self.plan:
            if now >= at:
                wanted = target
        return wanted - stats.workers


@pytest.mark.parametrize(
    ("initial", "plan"),
    [
        (6, [(3.0, 2), (20.0, 6)]),  # down while results are held, then up again
        (2, [(3.0, 7), (10.0, 1)]),  # up while workers wait behind the window, then down
    ],
)
async def test_the_window_follows_the_target_as_the_stage_scales(
    initial: int, plan: list[tuple[float, int]]
) -> None:
    rng = random.Random(initial)
    delays = [rng.choice([0.5, 1.0, 4.0]) for _ in range(80)]
    strategy = Steps(initial, plan)
    in_hand: set[int] = set()
    worst: list[tuple[int, int]] = []
    f: Flow[int, int]

    async def work(x: int) -> int:
        in_hand.add(x)
        target = f.stats().stages["work"].workers
        worst.append((len(in_hand), max(target, initial, *(t for _, t in plan))))
        await asyncio.sleep(delays[x])
        return x

    async def sink(x: int) -> int:
        in_hand.discard(x)
        return x

    f = flow(stage(work, scaling=strategy, queue_size=2, ordered=True), sink)
    with VirtualClock():
        out = [v async for v in f.iterate(range(80))]
    assert out == list(range(80))
    # never more items in the stage's hands than the largest target (plus the one the sink
    # holds, and the one the released output waits with in the sink's queue)
    assert all(held <= bound + 2 for held, bound in worst)
    idle(f)


@pytest.mark.parametrize("queue_size", [1, 0])
async def test_scaling_down_retires_the_workers_waiting_behind_the_window_at_once(
    queue_size: int,
) -> None:
    # Items 1..3 are held behind the slow item 0; their workers wait on the input (the
    # window is full) like any idle worker, so the scale-down to 1 at 5 s retires them
    # then (a retired worker leaves at once), not when item 0 is out at 20 s.
    seen: dict[int, int] = {}
    f: Flow[int, int]

    async def work(x: int) -> int:
        await asyncio.sleep(20 if x == 0 else 1)
        seen[x] = f.stats().stages["work"].workers
        return x

    f = flow(stage(work, scaling=Steps(4, [(5.0, 1)]), queue_size=queue_size, ordered=True))
    with VirtualClock():
        out = [v async for v in f.iterate(range(12))]
    assert out == list(range(12))
    assert seen[1] == 4
    assert seen[0] == 1
    idle(f)
