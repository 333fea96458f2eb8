"""Stage forms, sources, iteration, naming, dump, listeners and the public surface."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import headrace_flow
from headrace_core.testing import VirtualClock
from headrace_flow import (
    DROP,
    FixedScaling,
    Flow,
    HeadraceError,
    Last,
    ScaleEvent,
    TransformerError,
    UtilizationScaling,
    batched,
    flow,
    stage,
)


async def double(x: int) -> int:
    return x * 2


async def ident(x: Any) -> Any:
    return x


class Items:
    """A plain async iterable (not a generator)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> Items:
        self.i = 0
        return self

    async def __anext__(self) -> int:
        if self.i >= self.n:
            raise StopAsyncIteration
        self.i += 1
        return self.i - 1


async def agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize(
    "source",
    [
        lambda: range(5),
        lambda: [0, 1, 2, 3, 4],
        lambda: agen(5),
        lambda: Items(5),
        lambda: lambda: agen(5),
        lambda: lambda: iter(range(5)),
    ],
)
async def test_sources(source: Any) -> None:
    out = [x async for x in flow(double).iterate(source())]
    assert out == [0, 2, 4, 6, 8]


async def test_async_generator_function_source() -> None:
    async def gen() -> AsyncIterator[int]:
        yield 1
        yield 2

    stats = await flow(double).run(gen)
    assert stats.accepted == 2
    assert stats.completed == 2


async def test_bad_source() -> None:
    with pytest.raises(TypeError, match="run"):
        await flow(double).run(42)
    assert not flow(double).running


async def test_trigger_mode_until_drain() -> None:
    count = 0

    async def tick(x: None) -> None:
        nonlocal count
        assert x is None
        count += 1
        await asyncio.sleep(0.1)

    f = flow(tick)
    with VirtualClock():
        task = asyncio.create_task(f.run())
        await asyncio.sleep(1.05)
        stats = await f.drain()
        await task
    assert 10 <= count <= 13
    assert stats.accepted == stats.completed == count


async def test_iterate_raises_stage_error() -> None:
    async def boom(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    got: list[int] = []

    async def consume() -> None:
        async for x in flow(boom).iterate(range(5)):
            got.append(x)

    with pytest.raises(ValueError, match="two"):
        await consume()
    assert got == [0, 1]


async def test_fixed_scaling_enters_every_cm_at_start() -> None:
    entered = 0

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        nonlocal entered
        entered += 1
        yield ident

    await flow(stage(factory, workers=5)).run([])
    assert entered == 5


async def test_cm_yielding_a_fan_out_function() -> None:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        async def twice(x: int) -> AsyncIterator[int]:
            yield x
            yield x

        yield twice

    out = [x async for x in flow(factory).iterate(range(3))]
    assert out == [0, 0, 1, 1, 2, 2]


async def test_fan_out_empty_is_filtered_and_errors_fail() -> None:
    events: list[Any] = []

    async def handler(e: Any) -> None:
        events.append(e)

    async def some(x: int) -> AsyncIterator[int]:
        if x == 3:
            raise ValueError
        for _ in range(x % 2):
            yield x

    stats = await flow(some, on_error=handler).run(range(5))
    assert stats.completed == 1
    assert stats.filtered == 3
    assert stats.failed == 1
    assert isinstance(events[0], TransformerError)


async def test_names() -> None:
    f = flow(double, double, stage(double, name="x"), lambda_stage := stage(ident, name="id"))
    assert f.stage_names == ["double", "double_2", "x", "id"]
    assert lambda_stage.display_name == "id"
    assert repr(f) == "<Flow double -> double_2 -> x -> id>"
    assert flow(batched(2), batched(3)).stage_names == ["batched", "batched_2"]


async def test_restage_merges_settings() -> None:
    base = stage(double, workers=3)
    again = stage(base, name="dbl", queue_size=4)
    assert again.name == "dbl"
    assert again.options.queue_size == 4
    assert isinstance(again.options.scaling, FixedScaling)


async def test_configure_overrides_and_defaults() -> None:
    async def work(x: int) -> int:
        await asyncio.sleep((5 - x) / 10)
        return x

    f = flow(stage(work, workers=1), ident)
    f.configure("work", scaling=FixedScaling(5), ordered=True, queue_size=2)
    f.configure_default(queue_size=3)
    with VirtualClock():
        out = [x async for x in f.iterate(range(5))]
    assert out == [0, 1, 2, 3, 4]
    structure = json.loads(f.dump(format="json"))["stages"]
    assert structure[0]["queue"]["maxsize"] == 2
    assert structure[0]["ordered"] is True
    assert structure[1]["queue"]["maxsize"] == 3


async def test_dump_forms() -> None:
    f = flow(double, ident)
    text = f.dump()
    assert "double" in text
    assert "(sink)" in text
    assert f.dump(format="mermaid").startswith("flowchart LR")
    assert "s0 --> s1" in f.dump(format="mermaid")
    assert f.dump(mode="stats").startswith("flow stats: no run yet")  # as flowrhythm says it
    await f.run(range(3))
    stats = json.loads(f.dump(mode="stats", format="json"))
    assert stats["completed"] == 3
    assert stats["stages"][0]["processed"] == 3
    assert "completed=3" in f.dump(mode="stats")
    with pytest.raises(ValueError, match="mode"):
        f.dump(mode="other")
    with pytest.raises(ValueError, match="format"):
        f.dump(format="yaml")
    with pytest.raises(ValueError, match="format"):
        f.dump(mode="stats", format="mermaid")


async def test_stats_before_any_run() -> None:
    stats = flow(double, ident).stats()
    assert list(stats.stages) == ["double", "ident"]
    assert stats.accepted == 0
    assert not stats.running


async def test_listeners_get_events_sync_and_async() -> None:
    sync_events: list[Any] = []
    async_events: list[Any] = []

    async def alistener(e: Any) -> None:
        async_events.append(e)

    async def boom(x: int) -> int:
        raise ValueError(x)

    async def ignore(e: Any) -> None:
        pass

    f = flow(boom, on_error=ignore)
    remove = f.add_listener(sync_events.append)
    f.add_listener(alistener)
    await f.run([1])
    await asyncio.sleep(0)
    assert [type(e) for e in sync_events] == [TransformerError]
    assert len(async_events) == 1
    remove()
    await f.run([2])
    await asyncio.sleep(0)
    assert len(sync_events) == 1


async def test_scale_events_reach_listeners() -> None:
    events: list[ScaleEvent] = []

    async def slow(x: int) -> None:
        await asyncio.sleep(0.1)

    scaling = UtilizationScaling(max_workers=3, cooldown_seconds=0)
    f = flow(stage(slow, scaling=scaling))
    f.add_listener(lambda e: events.append(e) if isinstance(e, ScaleEvent) else None)
    with VirtualClock():
        await f.run(range(30))
    assert any(e.after > e.before for e in events)
    assert all(e.stage == "slow" for e in events)


async def test_stop_and_drain_from_inside_a_stage() -> None:
    async def stopper(x: int) -> int:
        if x == 3:
            await f.stop()
        return x

    f = flow(stopper, ident)
    stats = await f.run(range(100))
    assert stats.accepted == stats.completed + stats.discarded
    assert stats.completed < 100

    async def drainer(x: int) -> int:
        if x == 3:
            await g.drain()
        return x

    g = flow(drainer)
    stats = await g.run(range(100))
    assert stats.discarded == 0
    assert stats.completed == stats.accepted < 100


async def test_drain_during_iterate_returns_and_finishes() -> None:
    f = flow(ident)
    got = []
    async for x in f.iterate(range(1000)):
        got.append(x)
        if x == 2:
            await f.drain()
    assert got == list(range(len(got)))
    assert len(got) < 1000


async def test_last_from_an_ordered_stage() -> None:
    async def work(x: int) -> Any:
        await asyncio.sleep((7 - x % 7) / 100)
        return Last(x) if x == 10 else x

    with VirtualClock():
        out = [x async for x in flow(stage(work, workers=4, ordered=True)).iterate(range(50))]
    assert out == list(range(11))


async def test_flow_reusable_after_error() -> None:
    async def once(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    f = flow(once)
    with pytest.raises(ValueError, match="negative"):
        await f.run([-1])
    assert (await f.run([1, 2])).completed == 2


async def test_builder_changes_rejected_while_running() -> None:
    gate = asyncio.Event()

    async def held(x: int) -> None:
        await gate.wait()

    f = flow(held)
    task = asyncio.create_task(f.run([1]))
    await asyncio.sleep(0)
    with pytest.raises(HeadraceError):
        f.add_transformer(double)
    gate.set()
    await task


async def test_wait_without_start() -> None:
    with pytest.raises(HeadraceError):
        await Flow().wait()


async def test_empty_flow_runs() -> None:
    assert (await Flow().run([])).accepted == 0


async def test_drop_and_filter_counts_per_stage() -> None:
    async def odd(x: int) -> Any:
        return x if x % 2 else DROP

    stats = await flow(odd, ident).run(range(10))
    assert stats.stages["odd"].filtered == 5
    assert stats.stages["odd"].processed == 10
    assert stats.stages["ident"].processed == 5
    assert stats.filtered == 5


def test_public_surface() -> None:
    names = headrace_flow.__all__
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(headrace_flow, name)
        if isinstance(obj, type) or callable(obj):
            if getattr(obj, "__module__", "").startswith("headrace_flow"):
                assert obj.__module__ == "headrace_flow", name
            assert obj.__doc__, name
    assert headrace_flow.Closed is __import__("headrace_core").Closed
    assert issubclass(headrace_flow.FlowClosed, headrace_flow.Closed)
    assert issubclass(headrace_flow.StageTimeout, __import__("headrace_core").GuardTimeout)


async def test_cm_fan_out_in_an_ordered_stage() -> None:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        async def twice(x: int) -> AsyncIterator[int]:
            yield x
            yield x

        yield twice

    out = [x async for x in flow(stage(factory, ordered=True)).iterate(range(3))]
    assert out == [0, 0, 1, 1, 2, 2]


_MODULE_FLOW = flow(double)


def test_a_flow_made_at_import_time_runs_in_successive_loops() -> None:
    for _ in range(2):
        stats = asyncio.run(_MODULE_FLOW.run(range(3)))
        assert stats.completed == 3


def test_flow_needs_a_stage() -> None:
    with pytest.raises(TypeError, match="at least one stage"):
        flow()
