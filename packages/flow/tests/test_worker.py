"""The worker: its one loop and the handler of each stage kind, against a recording engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_flow import DROP, Dropped, DropReason, FixedScaling, Last, TransformerError
from headrace_flow._autoscale import Scaler
from headrace_flow._channel import Channel
from headrace_flow._errors import ErrorEvent
from headrace_flow._plan import PLAIN_CALLS, Batching, Kind, StagePlan
from headrace_flow._queues import fifo_queue
from headrace_flow._state import NO_ITEM, StageRun, Tally
from headrace_flow._worker import Worker


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
        self.exits: list[str] = []
        self.finished: list[str] = []
        self.aborted: BaseException | None = None

    def abort(self, error: BaseException) -> None:
        self.aborted = error

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

    def worker_exit(self, st: StageRun) -> None:
        st.live.workers -= 1
        self.exits.append(st.name)
        waiter = st.final_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def maybe_finish(self, st: StageRun) -> None:
        self.finished.append(st.name)

    def close_source(self) -> None:
        pass

    def cancelled_outside(
        self, st: StageRun | None, exc: asyncio.CancelledError, item: object = NO_ITEM
    ) -> None:
        self.outside.append(item)


def make_stage(
    engine: Engine,
    kind: Kind,
    target: Any,
    *,
    ordered: bool = False,
    batching: Batching | None = None,
    queue_size: int = 0,
) -> tuple[StageRun, Channel]:
    """A stage fed by one producer (the test), whose outputs go to a channel it returns."""
    plan = StagePlan(
        index=0,
        name="s",
        kind=kind,
        target=target,
        calls=PLAIN_CALLS,
        scaling=FixedScaling(1),
        queue=fifo_queue,
        queue_size=queue_size,
        ordered=ordered,
        batching=batching,
    )
    inbox = Channel(engine.loop, fifo_queue, queue_size, numbered=plan.numbered)
    inbox.set_producers(1)
    call = target if kind in (Kind.MAP, Kind.ROUTER) else None
    st = StageRun(plan, inbox, Scaler(plan.scaling), call)
    out = Channel(engine.loop, fifo_queue, 0)
    out.set_producers(1)
    st.out = out
    return st, out


async def serve(engine: Engine, st: StageRun, items: list[object], workers: int = 1) -> None:
    """Put ``items`` in, close the input, run ``workers`` workers until they all leave."""
    for item in items:
        assert st.input.try_put(item)
    st.input.close_one()
    st.scaler.target = workers
    st.live.workers = workers
    await asyncio.gather(*(Worker(engine, st).run() for _ in range(workers)))


# -- map: the loop routes the item function's result ------------------------------------------
async def test_map_hands_outputs_on_and_routes_drop_failure_and_last() -> None:
    engine = Engine()

    async def work(x: int) -> Any:
        if x == 1:
            return DROP
        if x == 2:
            raise ValueError(x)
        if x == 4:
            return Last("end")
        return x * 10

    st, out = make_stage(engine, Kind.MAP, work)
    await serve(engine, st, [0, 1, 2, 3, 4, 5])
    assert out.drain_items() == [0, 30]
    assert engine.lasts == ["end"]  # and the worker left: 5 is still waiting
    assert st.input.drain_items() == [5]
    assert [type(e) for e in engine.events] == [TransformerError]
    assert st.live.processed == 4
    assert st.live.errors == 1
    assert st.live.filtered == 1
    assert engine.tally.filtered == 1
    assert engine.tally.failed == 1
    assert st.live.busy == 0
    assert engine.exits == ["s"]


async def test_a_sink_counts_its_outputs_completed() -> None:
    engine = Engine()

    async def sink(x: int) -> None:
        return None

    st, _ = make_stage(engine, Kind.MAP, sink)
    st.out = None
    await serve(engine, st, [1, 2, 3])
    assert engine.tally.completed == 3


async def test_ordered_map_releases_in_entry_order_whatever_finishes_first() -> None:
    engine = Engine()

    async def work(x: int) -> Any:
        await asyncio.sleep((5 - x) / 10)
        return DROP if x == 2 else x

    st, out = make_stage(engine, Kind.MAP, work, ordered=True)
    with VirtualClock():
        await serve(engine, st, list(range(6)), workers=3)
    assert out.drain_items() == [0, 1, 3, 4, 5]
    assert st.order is not None
    assert st.order.released == st.order.taken == 6
    assert st.order.held == {}


async def test_ordered_map_holds_a_last_and_discards_what_follows_it() -> None:
    engine = Engine()

    async def work(x: int) -> Any:
        await asyncio.sleep((5 - x) / 10)
        return Last(x) if x == 2 else x

    st, out = make_stage(engine, Kind.MAP, work, ordered=True)
    with VirtualClock():
        await serve(engine, st, list(range(6)), workers=3)
    assert out.drain_items() == [0, 1]
    assert engine.lasts == [2]


# -- fan-out -------------------------------------------------------------------------------------
async def test_fan_out_counts_the_units_it_adds_and_the_items_with_no_output() -> None:
    engine = Engine()

    async def expand(x: int) -> AsyncIterator[int]:
        for _ in range(x):
            yield x
        if x == 3:
            raise ValueError("after three")

    st, out = make_stage(engine, Kind.GEN, expand)
    await serve(engine, st, [0, 1, 2, 3])
    assert out.drain_items() == [1, 2, 2, 3, 3, 3]
    assert st.live.filtered == 1  # 0 yielded nothing
    assert engine.tally.failed == 1
    # 2 yields one more unit than it takes; 3 three (its failure counts the item itself)
    assert engine.tally.extra == 1 + 3


async def test_ordered_fan_out_groups_each_items_outputs() -> None:
    engine = Engine()

    async def expand(x: int) -> AsyncIterator[str]:
        for i in range(x % 3):
            await asyncio.sleep((7 - x) / 10)
            yield f"{x}.{i}"

    st, out = make_stage(engine, Kind.GEN, expand, ordered=True)
    with VirtualClock():
        await serve(engine, st, list(range(7)), workers=4)
    assert out.drain_items() == ["1.0", "2.0", "2.1", "4.0", "5.0", "5.1"]


# -- router --------------------------------------------------------------------------------------
async def test_router_puts_each_item_in_its_arms_input_and_drops_a_miss() -> None:
    engine = Engine()

    async def classify(x: int) -> object:
        return {0: "a", 1: "b"}.get(x % 3, 42)  # 42: not a label

    st, _ = make_stage(engine, Kind.ROUTER, classify)
    arms = {}
    for label in ("a", "b"):
        arm, _ = make_stage(engine, Kind.MAP, classify)
        arm.input.set_producers(1)
        arms[label] = arm
    st.routes = arms
    await serve(engine, st, list(range(6)))
    assert arms["a"].input.drain_items() == [0, 3]
    assert arms["b"].input.drain_items() == [1, 4]
    assert [(e.item, e.reason) for e in engine.events if isinstance(e, Dropped)] == [
        (2, DropReason.ROUTER_MISS),
        (5, DropReason.ROUTER_MISS),
    ]
    assert st.live.filtered == 2
    assert st.live.processed == 6


# -- batched -------------------------------------------------------------------------------------
async def test_batch_flushes_when_full_and_the_rest_at_the_end() -> None:
    engine = Engine()
    st, out = make_stage(engine, Kind.BATCHED, None, batching=Batching(3))
    await serve(engine, st, list(range(8)))
    assert out.drain_items() == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert st.live.processed == 3
    assert engine.tally.extra == -(2 + 2 + 1)  # eight items became three units


async def test_batch_flushes_max_wait_after_its_first_item() -> None:
    engine = Engine()
    st, out = make_stage(engine, Kind.BATCHED, None, batching=Batching(10, max_wait=1.0))
    st.scaler.target = st.live.workers = 1
    with VirtualClock() as clock:
        start = clock.now()
        task = asyncio.create_task(Worker(engine, st).run())
        st.input.try_put("a")
        await asyncio.sleep(0.5)
        st.input.try_put("b")
        await asyncio.sleep(0.6)  # 1.1 s after "a": flushed at 1.0 s
        assert out.drain_items() == [["a", "b"]]
        assert clock.now() - start == pytest.approx(1.1)
        st.input.try_put("c")
        st.input.close_one()
        await task
    assert out.drain_items() == [["c"]]


# -- the loop itself ---------------------------------------------------------------------------
async def test_a_retired_worker_leaves_the_rest_to_the_others() -> None:
    engine = Engine()
    seen: list[int] = []

    async def work(x: int) -> int:
        seen.append(x)
        await asyncio.sleep(1)
        return x

    st, _ = make_stage(engine, Kind.MAP, work)
    st.input.set_producers(1)
    st.scaler.target = st.live.workers = 1
    with VirtualClock():
        task = asyncio.create_task(Worker(engine, st).run())
        await asyncio.sleep(0)
        st.input.try_put(1)
        await asyncio.sleep(0.5)
        st.scaler.target = 0  # scaled down: it finishes its item and leaves
        st.input.try_put(2)
        await task
    assert seen == [1]
    assert st.input.drain_items() == [2]
    assert engine.exits == ["s"]


async def test_a_cut_stage_worker_leaves_without_taking_more() -> None:
    engine = Engine()

    async def work(x: int) -> int:
        return x

    st, out = make_stage(engine, Kind.MAP, work)
    st.cut = True
    await serve(engine, st, [1, 2])
    assert out.drain_items() == []
    assert st.input.drain_items() == [1, 2]


async def test_finals_go_last_and_only_once_the_worker_is_alone() -> None:
    engine = Engine()
    order: list[object] = []

    async def work(x: Any) -> Any:
        await asyncio.sleep(1 if x == "slow" else 0)
        order.append(x)
        return x

    st, out = make_stage(engine, Kind.MAP, work)
    st.input.try_put("slow")
    st.input.add_final("final")
    with VirtualClock():
        await serve(engine, st, ["quick"], workers=2)
    assert order == ["quick", "slow", "final"]
    assert out.drain_items() == ["quick", "slow", "final"]  # the final one after the others


async def test_a_context_manager_stage_enters_per_worker_and_exits_on_leaving() -> None:
    engine = Engine()
    log: list[str] = []

    @contextlib.asynccontextmanager
    async def pooled() -> AsyncIterator[Callable[[int], Awaitable[int]]]:
        log.append("enter")

        async def work(x: int) -> int:
            return -x

        yield work
        log.append("exit")

    st, out = make_stage(engine, Kind.CM, pooled)
    await serve(engine, st, [1, 2, 3], workers=2)
    assert set(out.drain_items()) == {-3, -2, -1}
    assert log.count("enter") == log.count("exit") == 2
    assert log[-1] == "exit"


async def test_a_context_manager_failing_to_enter_counts_the_worker_out_at_once() -> None:
    engine = Engine()

    def broken() -> Any:
        raise OSError("no connection")

    st, _ = make_stage(engine, Kind.CM, broken)
    await serve(engine, st, [1])
    assert [type(e.exception) for e in engine.events if isinstance(e, TransformerError)] == [
        OSError
    ]
    assert st.live.workers == 0
    assert engine.finished == ["s"]
    assert engine.exits == []
    assert isinstance(engine.aborted, OSError)  # items wait and no worker is left


async def test_a_stage_plan_is_frozen() -> None:
    engine = Engine()
    st, _ = make_stage(engine, Kind.MAP, None)
    with pytest.raises(AttributeError):
        st.plan.name = "other"  # type: ignore[misc]
    assert replace(st.plan, name="other").name == "other"
