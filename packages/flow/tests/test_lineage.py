"""Acknowledged sources: an item is acknowledged once, after everything it became left the run.

``Acking`` is a source of the kind ``headrace_flow.redis`` builds on: it yields each item
with a ticket and records when the run tells it the item is done. Whatever the stages do
(map, filter, fail, fan out, batch, route, order, end the stream), an item is
acknowledged exactly once, and only after every output descending from it reached the
end of the run, was filtered, or failed or was dropped under a handler that let the run
go on. What a stop or an error ending the run discards is never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_core.testing import VirtualClock
from headrace_flow import (
    DROP,
    ErrorEvent,
    Last,
    batched,
    flow,
    log_and_continue,
    priority_queue,
    router,
    stage,
    thread_stage,
)
from headrace_flow._lineage import Ticket, Tracked, TrackedSource


class Acking(TrackedSource):
    """Yields ``items`` with tickets; records acknowledgements and settles."""

    def __init__(self, items: list[Any], *, settle_error: BaseException | None = None) -> None:
        self.items = items
        self.acked: list[int] = []  # positions, in acknowledgement order
        self.settled = 0
        self.yielded = 0
        self.settle_error = settle_error
        self.on_ack: Any = None

    def __aiter__(self) -> AsyncIterator[Tracked]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Tracked]:
        for position, item in enumerate(self.items):
            self.yielded += 1
            yield Tracked(item, Ticket(position, self._done))

    def _done(self, position: object) -> None:
        assert isinstance(position, int)
        assert position not in self.acked, f"item {position} acknowledged twice"
        if self.on_ack is not None:
            self.on_ack(position)
        self.acked.append(position)

    async def settle(self) -> None:
        self.settled += 1
        if self.settle_error is not None:
            raise self.settle_error


def plain(value: object) -> None:
    assert not isinstance(value, Tracked), "a stage function saw the engine's wrapper"


async def test_a_map_pipeline_acknowledges_each_item_after_the_sink() -> None:
    sunk: list[int] = []
    src = Acking(list(range(20)))
    src.on_ack = lambda position: sunk.index(position * 2)  # raises if not sunk yet

    async def double(x: int) -> int:
        plain(x)
        return x * 2

    async def sink(x: int) -> None:
        plain(x)
        sunk.append(x)

    stats = await flow(stage(double, workers=4), stage(sink, workers=3)).run(src)
    assert stats.completed == 20
    assert sorted(src.acked) == list(range(20))
    assert src.settled == 1


async def test_filtered_failed_and_routed_items_are_acknowledged() -> None:
    events: list[ErrorEvent] = []

    async def handler(event: ErrorEvent) -> None:
        plain(getattr(event, "item", None))
        events.append(event)

    async def check(x: int) -> int:
        if x % 3 == 0:
            return DROP  # type: ignore[return-value]
        if x % 3 == 1:
            raise ValueError(x)
        return x

    async def label(x: int) -> str:
        plain(x)
        return "even" if x % 2 == 0 else "nowhere"  # odd ones miss every arm: dropped

    async def even(x: int) -> int:
        plain(x)
        return x

    src = Acking(list(range(12)))
    f = flow(stage(check), router(label, even=stage(even)))
    f.set_error_handler(handler)
    await f.run(src)
    assert sorted(src.acked) == list(range(12))
    assert {type(e).__name__ for e in events} == {"TransformerError", "Dropped"}
    assert all(not isinstance(getattr(e, "item", None), Tracked) for e in events)


async def test_a_fan_out_item_is_acknowledged_after_its_last_output() -> None:
    sunk: list[tuple[int, int]] = []
    gate = asyncio.Event()
    src = Acking([0, 1, 2])

    def acked(position: int) -> None:
        assert {k for (x, k) in sunk if x == position} == set(range(position + 1))

    src.on_ack = acked

    async def spread(x: int) -> Any:
        for k in range(x + 1):
            yield (x, k)

    async def sink(pair: tuple[int, int]) -> None:
        if pair == (2, 0):
            await gate.wait()  # the first output of 2 is the last to finish
        sunk.append(pair)

    async def release() -> None:
        while len(sunk) < 5:
            await asyncio.sleep(0)
        assert 2 not in src.acked
        gate.set()

    opener = asyncio.create_task(release())
    await flow(stage(spread), stage(sink, workers=4)).run(src)
    await opener
    assert sorted(src.acked) == [0, 1, 2]


async def test_a_fan_out_with_no_output_and_one_that_fails_midway() -> None:
    async def spread(x: int) -> Any:
        if x == 1:
            yield "a"
            raise ValueError("midway")
        if x == 2:
            return
        yield x

    src = Acking([0, 1, 2, 3])
    f = flow(stage(spread), stage(lambda_sink))
    f.set_error_handler(log_and_continue)
    stats = await f.run(src)
    assert stats.failed == 1
    assert sorted(src.acked) == [0, 1, 2, 3]


async def lambda_sink(x: object) -> None:
    plain(x)


async def test_a_batch_acknowledges_all_of_its_items() -> None:
    batches: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        plain(batch)
        assert all(not isinstance(x, Tracked) for x in batch)
        batches.append(batch)

    src = Acking(list(range(10)))
    with VirtualClock():
        await flow(batched(4, max_wait=1.0), stage(sink)).run(src)
    assert sorted(x for b in batches for x in b) == list(range(10))
    assert sorted(src.acked) == list(range(10))


async def test_ordered_stages_and_a_priority_queue_keep_their_semantics() -> None:
    out: list[int] = []

    async def jitter(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        return x

    async def sink(x: int) -> None:
        out.append(x)

    src = Acking(list(range(15)))
    with VirtualClock():
        await flow(stage(jitter, workers=4, ordered=True), stage(sink)).run(src)
    assert out == list(range(15))
    assert sorted(src.acked) == list(range(15))
    # a priority queue orders tracked items by their items
    assert Tracked(1, Ticket(0, print)) < Tracked(2, Ticket(1, print))
    src = Acking([5, 3, 4])
    seen: list[int] = []

    async def keep(x: int) -> None:
        seen.append(x)

    await flow(stage(keep, queue=priority_queue, queue_size=0)).run(src)
    assert sorted(seen) == [3, 4, 5]
    assert sorted(src.acked) == [0, 1, 2]


async def test_a_failure_that_ends_the_run_is_not_acknowledged() -> None:
    async def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    src = Acking(list(range(5)))
    with pytest.raises(ValueError, match="two"):
        await flow(stage(fail_on_two)).run(src)
    assert 2 not in src.acked
    assert set(src.acked) <= {0, 1}
    assert src.settled == 1


async def test_a_stop_acknowledges_only_what_was_finished() -> None:
    hold = asyncio.Event()
    finished: list[int] = []

    async def work(x: int) -> None:
        if x >= 3:
            await hold.wait()
        finished.append(x)

    src = Acking(list(range(8)))
    f = flow(stage(work, workers=2))
    task = asyncio.create_task(f.run(src))
    while len(finished) < 3:
        await asyncio.sleep(0)
    await f.stop()
    await task
    assert sorted(src.acked) == sorted(finished) == [0, 1, 2]
    assert src.settled == 1


async def test_a_last_value_and_what_it_cuts_are_acknowledged() -> None:
    async def until(x: int) -> Any:
        return Last(x) if x == 4 else x

    seen: list[int] = []

    async def sink(x: int) -> None:
        seen.append(x)

    src = Acking(list(range(10)))
    await flow(stage(until), stage(sink)).run(src)
    assert seen[-1] == 4
    # every item the source yielded was finished or dropped by the cut
    assert sorted(src.acked) == list(range(src.yielded))


async def test_iterate_acknowledges_when_the_consumer_asks_for_more() -> None:
    async def same(x: int) -> int:
        return x

    src = Acking([1, 2, 3])
    got = []
    async with contextlib.aclosing(flow(stage(same)).iterate(src)) as items:
        async for x in items:
            plain(x)
            got.append(x)
            if x == 2:
                assert src.acked == [0]  # 2 is with the consumer
                break
    assert src.acked == [0]
    assert src.settled == 1


async def test_thread_stages_see_plain_items() -> None:
    def square(x: int) -> int:
        plain(x)
        return x * x

    src = Acking([1, 2, 3])
    out: list[int] = []

    async def sink(x: int) -> None:
        out.append(x)

    await flow(thread_stage(square, workers=2), stage(sink)).run(src)
    assert sorted(out) == [1, 4, 9]
    assert sorted(src.acked) == [0, 1, 2]


async def test_a_settle_that_fails_fails_the_run_and_an_interrupt_reaches_the_caller() -> None:
    async def keep(x: int) -> None:
        pass

    with pytest.raises(ConnectionError, match="gone") as caught:
        await flow(stage(keep)).run(Acking([1], settle_error=ConnectionError("gone")))
    assert any("acknowledged" in n for n in caught.value.__notes__)
    with pytest.raises(KeyboardInterrupt):
        await flow(stage(keep)).run(Acking([1], settle_error=KeyboardInterrupt()))


# -- the property -------------------------------------------------------------------------
STEP = st.sampled_from(["map", "drop", "fail", "fan", "batch", "ordered", "route"])


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(STEP, min_size=1, max_size=4),
    n=st.integers(0, 25),
    seed=st.integers(0, 2**16),
    stop_after=st.one_of(st.none(), st.integers(0, 30)),
)
def test_property_every_item_is_acknowledged_once_after_its_descendants(
    steps: list[str], n: int, seed: int, stop_after: int | None
) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        src = Acking(list(range(n)))

        async def nap() -> None:
            await asyncio.sleep(rng.choice([0, 0, 0.001]))

        def make(kind: str, i: int) -> Any:
            if kind == "fan":

                async def fan(x: Any) -> Any:
                    await nap()
                    for k in range(rng.randint(0, 2)):
                        yield (x, k)

                return stage(fan, name=f"s{i}", workers=2)
            if kind == "batch":
                return batched(3, max_wait=0.01)
            if kind == "route":

                async def label(x: Any) -> str:
                    return rng.choice(["a", "b", "none"])

                async def arm(x: Any) -> Any:
                    await nap()
                    return x

                return router(label, a=stage(arm), b=stage(arm))

            async def fn(x: Any) -> Any:
                await nap()
                if kind == "drop" and rng.random() < 0.3:
                    return DROP
                if kind == "fail" and rng.random() < 0.3:
                    raise ValueError(x)
                return x

            return stage(fn, name=f"s{i}", workers=3, ordered=kind == "ordered")

        async def sink(x: Any) -> None:
            await nap()

        f = flow(*(make(kind, i) for i, kind in enumerate(steps)), stage(sink, workers=2))
        f.set_error_handler(log_and_continue)
        if stop_after is None:
            await f.run(src)
            assert sorted(src.acked) == list(range(n))  # everything, once
        else:
            task = asyncio.create_task(f.run(src))
            for _ in range(stop_after):
                await asyncio.sleep(0)
            await f.stop()
            await task
            assert len(set(src.acked)) == len(src.acked) <= src.yielded
        assert src.settled == 1

    async def virtual() -> None:
        with VirtualClock():
            await main()

    asyncio.run(virtual())
