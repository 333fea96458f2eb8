"""flowrhythm's two APIs on headrace-flow: the README builder API and the 0.2 API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_flow import (
    DROP,
    ConfigurationError,
    Dropped,
    DropReason,
    FixedScaling,
    Flow,
    HeadraceError,
    Last,
    StageSnapshot,
    StageStats,
    UtilizationScaling,
    fifo_queue,
    flow,
    lifo_queue,
    log_and_continue,
    priority_queue,
    router,
    stage,
    sync_stage,
)


async def test_readme_flow_interface_example() -> None:
    got: list[int] = []
    errors: list[tuple[Any, BaseException]] = []

    async def producer() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    async def transformer(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x * 2

    async def consumer(x: int) -> None:
        got.append(x)

    async def error_handler(item: Any, exc: BaseException) -> None:
        errors.append((item, exc))

    flow_ = Flow(default_scaling_strategy=UtilizationScaling(max_workers=8))
    flow_.set_producer(producer)
    flow_.add_transformer(transformer, name="double", scaling_strategy=FixedScaling(workers=2))
    flow_.set_consumer(consumer)
    flow_.set_error_handler(error_handler)

    await flow_.start()
    stats = await flow_.wait()
    assert sorted(got) == [x * 2 for x in range(10) if x != 7]
    assert [item for item, _ in errors] == [7]
    assert flow_.stage_names == ["double", "consumer"]
    assert stats.failed == 1
    assert stats.completed == 9


async def test_readme_context_manager_transformer() -> None:
    log: list[str] = []

    class Db:
        async def process(self, x: int) -> int:
            return x + 100

        async def close(self) -> None:
            log.append("closed")

    async def connect_db() -> Db:
        log.append("connected")
        return Db()

    @contextlib.asynccontextmanager
    async def transformer_with_db() -> AsyncIterator[Any]:
        db = await connect_db()

        async def transform(x: int) -> int:
            return await db.process(x)

        yield transform
        await db.close()

    out: list[int] = []

    async def consumer(x: int) -> None:
        out.append(x)

    async def producer() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    f = Flow()
    f.set_producer(producer)
    f.add_transformer(transformer_with_db, scaling_strategy=FixedScaling(workers=3))
    f.set_consumer(consumer)
    await f.start()
    await f.wait()
    assert sorted(out) == [100, 101, 102]
    assert log.count("connected") == 3
    assert log.count("closed") == 3


async def test_readme_stop_and_default_strategy() -> None:
    async def producer() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.01)

    async def consumer(x: int) -> None:
        await asyncio.sleep(0.05)

    f = Flow()
    f.set_default_scaling_strategy(FixedScaling(workers=2))
    f.set_producer(producer)
    f.set_consumer(consumer)
    with VirtualClock():
        await f.start()
        with pytest.raises(HeadraceError):
            await f.start()
        await asyncio.sleep(1)
        await f.stop()
        stats = await f.wait()
    assert stats.accepted == stats.completed + stats.discarded
    assert stats.stages["consumer"].peak_workers == 2


async def test_error_handler_as_context_manager_factory() -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def handler_cm() -> AsyncIterator[Any]:
        seen.append("enter")

        async def handle(item: Any, exc: BaseException) -> None:
            seen.append(f"error {item}")

        yield handle
        seen.append("exit")

    async def boom(x: int) -> int:
        raise RuntimeError

    f = Flow()
    f.add_transformer(boom)
    f.set_error_handler(handler_cm)
    await f.run([1, 2])
    assert seen == ["enter", "error 1", "error 2", "exit"]


async def test_stage_stats_carries_readme_fields() -> None:
    stats = StageStats("s", workers=2, busy_workers=1, idle_workers=1)
    assert stats.stage_name == "s"
    assert stats.total_workers == 2
    assert stats.utilization == 0.5
    for field in (
        "queue_length",
        "oldest_item_enqueued_at",
        "last_enqueue_at",
        "last_dequeue_at",
        "last_scale_up_at",
        "last_scale_down_at",
        "last_error_at",
    ):
        assert hasattr(stats, field)
    snap = StageSnapshot(
        stage_name="x",
        busy_workers=3,
        idle_workers=1,
        queue_length=0,
        oldest_item_enqueued_at=0.0,
        last_enqueue_at=0.0,
        last_dequeue_at=0.0,
        last_scale_up_at=0.0,
        last_scale_down_at=0.0,
        last_error_at=None,
    )
    assert snap.total_workers == 4
    assert snap.utilization == 0.75
    assert StageSnapshot("y", 0, 0, 0).utilization == 0.0


# -- flowrhythm 0.2 ---------------------------------------------------------------------
async def test_v02_flow_configure_run() -> None:
    out: list[int] = []

    async def parse(x: int) -> int:
        return x + 1

    async def store(x: int) -> None:
        out.append(x)

    chain = flow(parse, store, default_queue_size=4)
    chain.configure("parse", scaling=FixedScaling(workers=4))

    async def items() -> AsyncIterator[int]:
        for i in range(20):
            yield i

    stats = await chain.run(items)
    assert sorted(out) == list(range(1, 21))
    assert stats.stages["parse"].peak_workers == 4


async def test_v02_names_and_subflows() -> None:
    async def normalize(x: int) -> int:
        return x

    async def sink(x: int) -> None:
        pass

    inner = flow(normalize, stage(normalize, name="again"))
    outer = flow(normalize, normalize, inner, stage(inner, name="ingest"), sink)
    assert outer.stage_names == [
        "normalize",
        "normalize_2",
        "_subflow_0.normalize",
        "_subflow_0.again",
        "ingest.normalize",
        "ingest.again",
        "sink",
    ]
    outer.configure("ingest.again", scaling=FixedScaling(2))
    await outer.run(range(5))


async def test_subflow_keeps_its_configuration() -> None:
    async def work(x: int) -> int:
        return x

    inner = flow(work)
    inner.configure("work", scaling=FixedScaling(3))
    outer = flow(stage(inner, name="sub"))
    stats = await outer.run(range(10))
    assert stats.stages["sub.work"].peak_workers == 3


async def test_v02_router_with_arms_and_default() -> None:
    out: list[tuple[str, int]] = []

    async def classify(x: int) -> str:
        return "small" if x < 5 else "big" if x < 8 else "other"

    async def small(x: int) -> tuple[str, int]:
        return ("small", x)

    async def big(x: int) -> tuple[str, int]:
        return ("big", x)

    async def other(x: int) -> tuple[str, int]:
        return ("other", x)

    async def collect(pair: tuple[str, int]) -> None:
        out.append(pair)

    chain = flow(router(classify, small=small, big=flow(big), default=other), collect)
    assert chain.stage_names == [
        "classify",
        "classify.small",
        "classify.big.big",
        "classify.default",
        "collect",
    ]
    stats = await chain.run(range(10))
    assert sorted(out) == sorted(
        [("small", i) for i in range(5)]
        + [("big", 5), ("big", 6), ("big", 7)]
        + [("other", 8), ("other", 9)]
    )
    assert stats.completed == 10
    assert "classify" in chain.dump(format="mermaid")


async def test_router_name_and_lambda() -> None:
    async def a(x: int) -> int:
        return x

    named = flow(router(a, x=a, name="dispatch"))
    assert named.stage_names == ["dispatch", "dispatch.x"]


async def test_last_ends_the_stream() -> None:
    out: list[int] = []
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def until_five(x: int) -> Any:
        if x == 5:
            return Last(x * 10)
        return x

    async def sink(x: int) -> None:
        out.append(x)

    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    stats = await flow(until_five, sink, on_error=handler).run(endless)
    assert out == [0, 1, 2, 3, 4, 50]
    assert all(
        isinstance(e, Dropped) and e.reason is DropReason.UPSTREAM_TERMINATED for e in events
    )
    assert stats.accepted == stats.completed + stats.discarded


async def test_sync_stage_and_sync_callable_rejected() -> None:
    def blocking(x: int) -> int:
        return x * 3

    out: list[int] = []

    async def sink(x: int) -> None:
        out.append(x)

    await flow(sync_stage(blocking), sink).run([1, 2])
    assert sorted(out) == [3, 6]
    assert sync_stage(blocking).__name__ == "blocking"
    with pytest.raises(TypeError, match="sync_stage"):
        flow(blocking)
    with pytest.raises(TypeError):
        stage(42)


async def test_log_and_continue(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(x: int) -> int:
        raise ValueError("nope")

    stats = await flow(boom, on_error=log_and_continue).run([1, 2])
    assert stats.failed == 2
    assert "nope" in caplog.text


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (fifo_queue, [0, 1, 2, 3]),
        (lifo_queue, [3, 2, 1, 0]),
        (priority_queue, [0, 1, 2, 3]),
    ],
)
async def test_queue_factories(factory: Any, expected: list[int]) -> None:
    gate = asyncio.Event()
    out: list[int] = []

    async def first(x: int) -> int:
        return x

    async def sink(x: int) -> None:
        await gate.wait()
        out.append(x)

    f = flow(first, stage(sink, queue=factory, queue_size=0))
    items = [9, 3, 2, 1, 0] if factory is priority_queue else [9, 0, 1, 2, 3]
    task = asyncio.create_task(f.run(items))
    for _ in range(20):
        await asyncio.sleep(0)
    gate.set()
    await task
    assert out[1:] == expected


async def test_custom_queue_factory() -> None:
    made: list[int] = []

    def factory(maxsize: int = 1) -> asyncio.Queue[Any]:
        made.append(maxsize)
        return asyncio.Queue(maxsize)

    async def sink(x: int) -> None:
        pass

    stats = await flow(stage(sink, queue=factory, queue_size=3)).run(range(10))
    assert made == [3]
    assert stats.completed == 10


async def test_legacy_strategy_through_adapter() -> None:
    class Grow:
        min_workers = 1
        max_workers = 3

        def initial_workers(self) -> int:
            return 1

        def on_enqueue(self, stats: StageSnapshot) -> int:
            assert isinstance(stats, StageSnapshot)
            return 1

        def on_dequeue(self, stats: StageSnapshot) -> int:
            return 0

    async def work(x: int) -> None:
        await asyncio.sleep(0.1)

    with VirtualClock():
        stats = await flow(stage(work, scaling=Grow())).run(range(20))
    assert stats.stages["work"].peak_workers == 3


async def test_bad_strategy_rejected() -> None:
    async def work(x: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="scaling"):
        stage(work, scaling=object())
    with pytest.raises(ConfigurationError, match="default_scaling"):
        flow(work, default_scaling=3)
    with pytest.raises(ConfigurationError, match="default_scaling_strategy"):
        Flow(default_scaling_strategy="x")


async def test_drop_filters() -> None:
    async def keep_odd(x: int) -> int | Any:
        return x if x % 2 else DROP

    out = [x async for x in flow(keep_odd).iterate(range(6))]
    assert out == [1, 3, 5]
    assert repr(DROP) == "DROP"
    assert not DROP


async def test_two_workers_returning_last_at_once() -> None:
    async def stopper(x: int) -> Any:
        await asyncio.sleep(0.1)
        return Last(x) if x in (4, 5) else x

    out: list[int] = []

    async def sink(x: int) -> None:
        out.append(x)

    with VirtualClock():
        stats = await flow(stage(stopper, workers=2), sink).run(range(100))
    assert out[-1] in (4, 5)
    assert set(out) == {0, 1, 2, 3, 4, 5}
    assert stats.accepted == stats.completed + stats.discarded


async def test_last_cuts_a_stage_scaled_to_zero() -> None:
    scaling = UtilizationScaling(
        min_workers=0, max_workers=2, cooldown_seconds=0, sampling_period=0.05
    )

    async def src() -> AsyncIterator[int]:
        for i in range(10):
            yield i
            await asyncio.sleep(1)  # the middle stage idles to zero between items

    async def middle(x: int) -> int:
        return x

    async def end(x: int) -> Any:
        return Last(x) if x == 3 else x

    with VirtualClock():
        stats = await flow(middle, stage(middle, name="idle", scaling=scaling), end).run(src)
    assert stats.completed == 4
    assert stats.stages["idle"].last_scale_down_at is not None
