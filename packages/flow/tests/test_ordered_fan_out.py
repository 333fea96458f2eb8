"""``ordered=True`` on a fan-out stage: each item's outputs go out together, in input order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core import HeadraceError
from headrace_core.testing import VirtualClock
from headrace_flow import (
    Flow,
    FlowStats,
    Last,
    TransformerError,
    flow,
    lifo_queue,
    stage,
)
from shared.faults import ITERATOR_FAULTS, Fault, ainject, expected_error, run_injection

Expand = Callable[[int], AsyncIterator[tuple[int, int]]]


def expected(items: range | list[int], counts: Callable[[int], int]) -> list[tuple[int, int]]:
    return [(x, i) for x in items for i in range(counts(x))]


def idle(f: Flow[Any, Any]) -> FlowStats:
    stats = f.stats()
    assert not f.running
    assert not stats.running
    assert all(s.workers == 0 and s.busy_workers == 0 for s in stats.stages.values()), stats
    return stats


def jittery(rng: random.Random, counts: Callable[[int], int]) -> Expand:
    """Yield ``counts(x)`` outputs for ``x``, each after a random (virtual) delay."""

    async def expand(x: int) -> AsyncIterator[tuple[int, int]]:
        await asyncio.sleep(rng.random())
        for i in range(counts(x)):
            await asyncio.sleep(rng.random() / 4)
            yield (x, i)

    return expand


# -- order and grouping ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
async def test_random_delays_keep_each_items_outputs_together_in_input_order(seed: int) -> None:
    rng = random.Random(seed)
    workers = rng.randint(2, 8)
    n = rng.randint(20, 80)
    sizes = [rng.randint(0, 4) for _ in range(n)]
    running = 0
    peak = 0
    inner = jittery(rng, sizes.__getitem__)

    async def expand(x: int) -> AsyncIterator[tuple[int, int]]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            async for value in inner(x):
                yield value
        finally:
            running -= 1

    f = flow(stage(expand, workers=workers, queue_size=rng.randint(0, 3), ordered=True))
    with VirtualClock():
        out = [v async for v in f.iterate(range(n))]
    assert out == expected(range(n), sizes.__getitem__)
    assert peak > 1  # the items ran side by side: the order does not serialise them
    stats = idle(f)
    assert stats.completed == sum(sizes)
    assert stats.filtered == sizes.count(0)
    assert stats.stages["expand"].filtered == sizes.count(0)
    assert stats.failed == stats.discarded == 0


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 4), max_size=40),
    delays=st.lists(st.integers(0, 9), min_size=1, max_size=7),
    workers=st.integers(1, 6),
    queue_size=st.integers(0, 3),
    next_queue_size=st.integers(0, 2),
)
def test_property_outputs_are_released_in_input_order(
    sizes: list[int], delays: list[int], workers: int, queue_size: int, next_queue_size: int
) -> None:
    def delay(x: int, i: int) -> float:
        return delays[(x * 7 + i) % len(delays)] / 10

    async def expand(x: int) -> AsyncIterator[tuple[int, int]]:
        for i in range(sizes[x]):
            await asyncio.sleep(delay(x, i))
            yield (x, i)

    async def record(value: tuple[int, int]) -> tuple[int, int]:
        await asyncio.sleep(delays[0] / 20)  # a slow next stage: the release waits for room
        return value

    async def main() -> tuple[list[tuple[int, int]], FlowStats]:
        f = flow(
            stage(expand, workers=workers, queue_size=queue_size, ordered=True),
            stage(record, queue_size=next_queue_size),  # one worker: it keeps the order
        )
        with VirtualClock():
            out = [value async for value in f.iterate(range(len(sizes)))]
        return out, f.stats()

    out, stats = asyncio.run(main())
    assert out == expected(range(len(sizes)), sizes.__getitem__)
    assert stats.completed == sum(sizes)
    assert stats.filtered == sizes.count(0)
    assert stats.failed == stats.discarded == 0


async def test_an_item_that_yields_nothing_leaves_a_hole_nobody_waits_for() -> None:
    async def expand(x: int) -> AsyncIterator[int]:
        await asyncio.sleep((5 - x) / 10)  # later items finish first
        if x % 2:
            return
        yield x
        yield x

    with VirtualClock():
        f = flow(stage(expand, workers=5, ordered=True))
        out = [v async for v in f.iterate(range(5))]
    assert out == [0, 0, 2, 2, 4, 4]
    assert idle(f).filtered == 2


async def test_a_later_item_waits_for_a_slow_head_then_goes_out_at_once() -> None:
    times: dict[int, float] = {}
    loop = asyncio.get_running_loop()

    async def expand(x: int) -> AsyncIterator[int]:
        await asyncio.sleep(10 if x == 0 else 1)
        yield x

    async def sink(x: int) -> None:
        times[x] = loop.time()

    with VirtualClock() as clock:
        start = clock.now()
        await flow(stage(expand, workers=3, ordered=True), sink).run(range(3))
    # items 1 and 2 were ready at 1 s, held until item 0 left at 10 s
    assert [times[x] - start for x in range(3)] == [10, 10, 10]


async def test_a_context_manager_stage_giving_a_fan_out_function_is_ordered_too() -> None:
    opened = 0
    closed = 0

    @contextlib.asynccontextmanager
    async def pooled() -> AsyncIterator[Callable[[int], AsyncIterator[int]]]:
        nonlocal opened, closed
        opened += 1

        async def expand(x: int) -> AsyncIterator[int]:
            await asyncio.sleep((x * 37) % 7 / 10)
            for _ in range(x % 3):
                yield x

        try:
            yield expand
        finally:
            closed += 1

    with VirtualClock():
        f = flow(stage(pooled, workers=3, ordered=True))
        out = [v async for v in f.iterate(range(12))]
    assert out == [x for x in range(12) for _ in range(x % 3)]
    assert opened == closed == 3


async def test_with_a_lifo_queue_the_release_follows_the_entry_order() -> None:
    async def expand(x: int) -> AsyncIterator[int]:
        await asyncio.sleep((x * 13) % 5 / 10)
        yield x
        yield -x

    with VirtualClock():
        f = flow(stage(expand, workers=2, queue=lifo_queue, queue_size=0, ordered=True))
        out = [v async for v in f.iterate(range(10))]
    assert out == [v for x in range(10) for v in (x, -x)]


async def test_the_stage_holds_at_most_its_workers_items_behind_a_slow_head() -> None:
    pulled = 0

    async def source() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield i

    async def expand(x: int) -> AsyncIterator[int]:
        await asyncio.sleep(100 if x == 0 else 0.1)
        yield x
        yield x

    f = flow(stage(expand, workers=3, queue_size=1, ordered=True))
    with VirtualClock():
        outputs = f.iterate(source)
        task = asyncio.create_task(anext(outputs))
        await asyncio.sleep(50)
        # 3 items in flight or held (the window), 1 queued, 1 held by the source
        assert pulled <= 3 + 1 + 1
        assert f.stats().stages["expand"].queue_length == 1
        assert await task == 0
        rest = [v async for v in outputs]
    assert rest == [0] + [x for x in range(1, 50) for _ in range(2)]


# -- failures ----------------------------------------------------------------------------------
async def test_a_generator_failing_midway_releases_what_it_yielded_in_its_place() -> None:
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    async def expand(x: int) -> AsyncIterator[str]:
        await asyncio.sleep((7 - x) / 10)  # the failing item finishes after later ones
        yield f"{x}a"
        if x == 2:
            raise ValueError("broken item")
        yield f"{x}b"

    with VirtualClock():
        f = flow(stage(expand, workers=4, ordered=True), on_error=handler)
        out = [v async for v in f.iterate(range(6))]
    assert out == ["0a", "0b", "1a", "1b", "2a", "3a", "3b", "4a", "4b", "5a", "5b"]
    assert len(events) == 1
    assert isinstance(events[0], TransformerError)
    assert events[0].item == 2
    assert events[0].stage == "expand"
    assert isinstance(events[0].exception, ValueError)
    stats = idle(f)
    assert stats.failed == 1
    assert stats.completed == 11
    assert stats.stages["expand"].errors == 1


async def test_a_generator_failing_without_a_handler_aborts_the_run_with_its_error() -> None:
    started: list[int] = []

    async def expand(x: int) -> AsyncIterator[int]:
        started.append(x)
        await asyncio.sleep(5 if x == 0 else 1)
        yield x
        if x == 3:
            raise ValueError("broken item")

    f = flow(stage(expand, workers=4, ordered=True))
    with VirtualClock(), pytest.raises(ValueError, match="broken item") as info:
        await f.run(range(20))
    assert any("on item 3" in n for n in info.value.__notes__)
    stats = idle(f)
    assert stats.completed == 0  # item 0 never came out: the run ended before
    assert 3 in started


async def test_a_handler_raising_while_outputs_are_held_aborts_with_its_error() -> None:
    async def handler(event: Any) -> None:
        raise RuntimeError("handler gave up")

    async def expand(x: int) -> AsyncIterator[int]:
        await asyncio.sleep(10 if x == 0 else 1)
        if x == 2:
            raise ValueError("broken")
        yield x

    f = flow(stage(expand, workers=3, ordered=True), on_error=handler)
    with VirtualClock(), pytest.raises(RuntimeError, match="handler gave up"):
        await f.run(range(6))
    idle(f)


@pytest.mark.parametrize("fault", ITERATOR_FAULTS, ids=lambda f: f.value)
def test_every_fault_of_an_ordered_generator_ends_the_run_or_reaches_the_handler(
    fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    async def drive(fault: Fault) -> None:
        hit = False

        async def expand(x: int) -> AsyncIterator[Any]:
            nonlocal hit
            await asyncio.sleep((5 - x) / 10)
            yield x
            if x == 2 and not hit:
                hit = True
                if fault is Fault.EARLY_END:
                    return
                yield await ainject(fault, wrong="wrong")
            yield x

        events: list[Any] = []

        async def handler(event: Any) -> None:
            events.append(event)

        f = flow(stage(expand, workers=3, ordered=True), on_error=handler)
        error = expected_error(fault)
        raised: BaseException | None = None
        out: list[Any] = []
        try:
            async with asyncio.timeout(60), contextlib.aclosing(f.iterate(range(6))) as items:
                async for value in items:
                    out.append(value)
        except BaseException as exc:
            raised = exc
        idle(f)
        if fault is Fault.HANG:
            assert isinstance(raised, TimeoutError)
        elif error in (KeyboardInterrupt, SystemExit):
            assert isinstance(raised, error)
        else:
            assert raised is None, raised
            if fault is Fault.WRONG:
                expect = [0, 0, 1, 1, 2, "wrong", 2, 3, 3, 4, 4, 5, 5]
            else:  # the item keeps the output it yielded before failing, or ending early
                expect = [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5]
            assert out == expect
            failures = [e for e in events if isinstance(e, TransformerError)]
            if error is None:
                assert failures == []
            else:
                assert [e.item for e in failures] == [2]
                assert isinstance(failures[0].exception, error)
        # the same flow runs again
        stats = await f.run(range(6))
        assert stats.completed == 12

    with caplog.at_level(logging.CRITICAL, logger="headrace"):
        run_injection(drive, fault)


async def test_a_generator_raising_cancelled_error_itself_is_the_items_failure() -> None:
    async def expand(x: int) -> AsyncIterator[int]:
        yield x
        if x == 1:
            raise asyncio.CancelledError

    f = flow(stage(expand, workers=2, ordered=True))
    with pytest.raises(HeadraceError) as info:
        await f.run(range(4))
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    idle(f)


# -- stop, drain, cancellation while outputs are held back --------------------------------------
def slow_head() -> tuple[Expand, list[int]]:
    closed: list[int] = []

    async def expand(x: int) -> AsyncIterator[tuple[int, int]]:
        try:
            await asyncio.sleep(100 if x == 0 else 1)
            for i in range(2):
                yield (x, i)
        finally:
            closed.append(x)

    return expand, closed


async def test_stop_while_outputs_are_held_discards_them_and_returns_promptly() -> None:
    expand, closed = slow_head()
    out: list[tuple[int, int]] = []

    async def sink(value: tuple[int, int]) -> None:
        out.append(value)

    f = flow(stage(expand, workers=4, ordered=True), sink)
    with VirtualClock() as clock:
        task = asyncio.create_task(f.run(range(10)))
        await asyncio.sleep(5)  # items 1..3 are done, held behind item 0
        before = clock.now()
        await f.stop()
        assert clock.now() == before
        stats = await task
    assert out == []  # nothing held went out of order, nothing after the stop
    assert stats.completed == 0
    assert stats.discarded >= 4
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded - 3
    assert 0 in closed  # the slow generator was closed
    idle(f)


async def test_drain_while_outputs_are_held_finishes_them_in_order() -> None:
    expand, _ = slow_head()

    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.5)

    f = flow(stage(expand, workers=4, ordered=True))
    out: list[tuple[int, int]] = []
    with VirtualClock():

        async def consume() -> None:
            async for value in f.iterate(endless):
                out.append(value)

        task = asyncio.create_task(consume())
        await asyncio.sleep(5)
        stats = await f.drain()  # iterate(): returns at once, the consumer keeps reading
        assert stats.running
        await task
    accepted = f.stats().accepted
    assert out == expected(range(accepted), lambda x: 2)
    assert f.stats().discarded == 0
    idle(f)


async def test_cancelling_the_run_while_outputs_are_held_leaves_nothing_behind() -> None:
    expand, closed = slow_head()
    entered = 0
    exited = 0

    @contextlib.asynccontextmanager
    async def pooled() -> AsyncIterator[Expand]:
        nonlocal entered, exited
        entered += 1
        try:
            yield expand
        finally:
            exited += 1

    f = flow(stage(pooled, workers=3, ordered=True))
    with VirtualClock():
        task = asyncio.create_task(f.run(range(10)))
        await asyncio.sleep(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert entered == exited == 3
    assert 0 in closed
    idle(f)


async def test_a_downstream_last_while_outputs_are_held_ends_the_stream() -> None:
    async def expand(x: int) -> AsyncIterator[int]:
        await asyncio.sleep(3 if x % 4 == 0 else 1)
        yield x
        yield x

    async def until(x: int) -> Any:
        return Last(x) if x == 5 else x

    with VirtualClock():
        f = flow(stage(expand, workers=4, ordered=True), until)
        out = [v async for v in f.iterate(range(40))]
    assert out[-1] == 5
    assert out == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    idle(f)
