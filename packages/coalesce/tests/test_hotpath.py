"""The mechanisms behind the fast paths: the collect box, resuming a leader, call counting.

``collect()`` returns a box (an ``itertools.repeat`` of ``(COLLECT, item)``, once) that the
wrapper takes; a leader's box is switched to return the batch's items, found along the
body's awaits (a helper coroutine, a generator, or an awaitable of another kind, which
gets the items by a throw). A call counts itself in ``calls`` and leaves through
``ended``: ``aclose()`` waits for the difference. The bulk calls in flight are derived
from the batch-size histogram and the settled count. Each test states what the user sees.
"""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_coalesce import BatchFunction, batch, collect
from headrace_coalesce._collect import COLLECT, MISPLACED, Box, resume
from headrace_core.testing import VirtualClock

# -- the box ----------------------------------------------------------------------------


def test_a_box_hands_its_pair_over_once() -> None:
    box: Any = collect(7)  # typed as a coroutine for the bodies that await it
    assert type(box) is Box
    assert box.__await__() is box  # its own iterator: no frame per await
    assert next(box) == (COLLECT, 7)
    with pytest.raises(StopIteration) as stop:
        next(box)  # a second step: nothing more (only a leader's box returns items)
    assert stop.value.value is None


def test_a_leaders_box_returns_the_items() -> None:
    async def body(k: int) -> list[int]:
        return await collect(k)

    coro = body(3)
    assert coro.send(None) == (COLLECT, 3)
    leading = resume(coro, [3, 4])
    with pytest.raises(StopIteration) as stop:
        leading.send(None)
    assert stop.value.value == [3, 4]


def test_the_box_translates_a_bad_yield_after_it_was_handed_over() -> None:
    box: Any = collect(1)
    next(box)
    with pytest.raises(RuntimeError, match="@batch function") as info:
        box.throw(RuntimeError("Task got bad yield: (...)"))
    assert str(info.value) == MISPLACED
    with pytest.raises(StopIteration):
        box.send(None)  # sending is stepping: the box has nothing more to give
    with pytest.raises(KeyError):
        box.throw(KeyError("k"))


# -- collect() awaited further down -----------------------------------------------------


async def _helper(k: int) -> list[int]:
    return await collect(k)


@types.coroutine
def _generator_helper(k: int) -> Generator[Any, Any, list[int]]:
    ids: list[int] = yield from collect(k).__await__()
    return ids


class _Relay:
    """An awaitable of another kind in between: it passes every step on to ``inner``."""

    def __init__(self, awaitable: Any) -> None:
        self.inner = awaitable.__await__()

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.inner.send(None)

    def send(self, value: Any) -> Any:
        return self.inner.send(value)

    def throw(self, *args: Any) -> Any:
        return self.inner.throw(*args)


def _relayed(k: int) -> _Relay:
    return _Relay(collect(k))


NESTINGS: dict[str, Callable[[int], Awaitable[list[int]]]] = {
    "coroutine": _helper,
    "generator": _generator_helper,
    "relay": _relayed,
}


@pytest.mark.virtual_clock
@pytest.mark.parametrize("nesting", sorted(NESTINGS))
async def test_collect_awaited_in_what_the_body_awaits(nesting: str) -> None:
    wrap = NESTINGS[nesting]
    sent: list[list[int]] = []
    cleaned: list[int] = []

    @batch
    async def get(k: int) -> list[int]:
        try:
            ids = await wrap(k)
            sent.append(ids)
            await asyncio.sleep(1.0)  # the leader's body awaits after collect()
            return [i * 10 for i in ids]
        finally:
            cleaned.append(k)

    assert list(await asyncio.gather(get(1), get(2), get(2), get(3))) == [10, 20, 20, 30]
    assert sent == [[1, 2, 3]]
    assert sorted(cleaned) == [1, 2, 2, 3]  # every body closed or finished
    assert get.stats().deduplicated == 1


@pytest.mark.virtual_clock
@pytest.mark.parametrize("nesting", sorted(NESTINGS))
async def test_a_nested_leader_cancelled_in_its_bulk_call_hands_over(nesting: str) -> None:
    wrap = NESTINGS[nesting]
    sent: list[list[int]] = []

    @batch
    async def get(k: int) -> list[int]:
        ids = await wrap(k)
        sent.append(ids)
        await asyncio.sleep(1.0)
        return [i * 10 for i in ids]

    leader = asyncio.create_task(get(1))
    others = asyncio.gather(get(2), get(3))
    await asyncio.sleep(0.5)  # the leader's bulk call is under way
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert list(await others) == [20, 30]
    assert sent == [[1, 2, 3], [2, 3]]  # the next caller reran the bulk call
    stats = get.stats()
    assert (stats.batches, stats.in_flight, stats.cancelled) == (2, 0, 1)


async def test_a_relayed_leader_that_is_closed_closes_its_body() -> None:
    """The caller's coroutine is driven by hand here, inside the running loop."""

    closed: list[str] = []

    @batch
    async def get(k: int) -> list[int]:
        try:
            ids: list[int] = await _Relay(collect(k))
            await asyncio.Event().wait()  # never set: the caller's coroutine is closed
            return ids
        finally:
            closed.append("body")

    call = get(1)
    pending = call.send(None)  # the window's hop
    assert pending is None
    pending = call.send(None)  # dispatched: the body waits on the event
    assert isinstance(pending, asyncio.Future)
    call.close()  # GeneratorExit travels down the relay to the body
    assert closed == ["body"]
    assert get.stats().in_flight == 0


# -- the default lane -------------------------------------------------------------------


async def test_unbound_calls_share_the_loops_default_lane() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return await collect(k)

    calls = [asyncio.create_task(get(k)) for k in range(3)]
    await asyncio.sleep(0)  # every call joined; the window is still open
    state = get._core.per_loop.get(asyncio.get_running_loop())
    assert state.lane.open is not None
    assert state.lane.open.items == [0, 1, 2]
    assert state.lanes == {}  # no per-group lane for a plain function
    assert [await c for c in calls] == [0, 1, 2]


async def test_keyword_and_positional_calls_share_a_batch() -> None:
    sent: list[list[int]] = []

    @batch
    async def get(k: int, *, scale: int = 1) -> list[int]:
        ids = await collect(k * scale)
        sent.append(ids)
        return ids

    assert list(await asyncio.gather(get(1), get(k=2), get(3, scale=2))) == [1, 2, 6]
    assert sent == [[1, 2, 6]]


# -- calls in flight ---------------------------------------------------------------------


FATES = ("value", "raise_before", "raise_in_finally", "cancel", "await_in_finally")


@settings(max_examples=60, deadline=None)
@given(fates=st.lists(st.sampled_from(FATES), min_size=1, max_size=12), seed=st.integers(0, 99))
def test_every_call_is_counted_until_it_ends(fates: list[str], seed: int) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        @batch(max_wait=0.01)
        async def get(i: int) -> list[int]:
            fate = fates[i]
            if fate == "raise_before":
                raise LookupError(i)
            try:
                ids = await collect(i)
                return [j * 10 for j in ids]
            finally:
                if fate == "raise_in_finally":
                    raise KeyError(i)
                if fate == "await_in_finally":
                    await asyncio.sleep(0)

        with VirtualClock():
            tasks = [asyncio.create_task(get(i)) for i in range(len(fates))]
            await asyncio.sleep(rng.choice((0, 0.005)))
            for i, fate in enumerate(fates):
                if fate == "cancel":
                    tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            core = get._core
            assert core.ended == core.calls.value == len(fates)  # none in flight
            async with asyncio.timeout(1):
                await get.aclose()  # returns at once: nobody to wait for
        failing = {i for i, fate in enumerate(fates) if fate == "raise_in_finally"}
        for i, (fate, result) in enumerate(zip(fates, results, strict=True)):
            if fate == "raise_before":
                assert isinstance(result, LookupError)
            elif fate == "cancel":
                assert isinstance(result, asyncio.CancelledError)
            elif isinstance(result, KeyError):
                # a follower's finally raises in its own call; a leader's finally raises
                # in its bulk call, so every caller of that batch gets the leader's error
                assert result.args[0] in failing
            else:
                assert fate != "raise_in_finally"
                assert result == i * 10
        assert get.stats().in_flight == 0

    asyncio.run(main())


@pytest.mark.virtual_clock
async def test_aclose_returns_once_every_call_has_ended() -> None:
    release = asyncio.Event()
    order: list[str] = []

    @batch(max_wait=1.0)
    async def get(k: int) -> list[int]:
        try:
            return await collect(k)
        finally:
            if k == 2:
                order.append("finally")

    async def slow_caller() -> int:
        value = await get(2)
        await release.wait()
        return value

    calls = [asyncio.create_task(get(1)), asyncio.create_task(slow_caller())]
    await asyncio.sleep(0)
    closing = asyncio.create_task(get.aclose())
    await asyncio.sleep(0.5)
    assert closing.done()  # both calls have returned: slow_caller waits on its own
    assert order == ["finally"]
    release.set()
    assert [await c for c in calls] == [1, 2]


@pytest.mark.virtual_clock
async def test_aclose_waits_for_the_callers_still_in_a_window() -> None:
    @batch(max_wait=60.0)
    async def get(k: int) -> list[int]:
        ids = await collect(k)
        await asyncio.sleep(1.0)
        return ids

    calls = [asyncio.create_task(get(k)) for k in range(3)]
    await asyncio.sleep(0)
    core = get._core
    assert core.calls.value - core.ended == 3
    await get.aclose()  # the window is sent now, and every call has ended
    assert core.calls.value == core.ended
    assert all(c.done() for c in calls)
    assert [c.result() for c in calls] == [0, 1, 2]


# -- stats derived from sizes -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.integers(0, 20), min_size=1, max_size=25),
    max_size=st.none() | st.integers(1, 4),
    max_concurrent=st.none() | st.integers(1, 3),
)
def test_batches_items_and_in_flight_follow_the_bulk_calls(
    keys: list[int], max_size: int | None, max_concurrent: int | None
) -> None:
    running = 0
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        @batch(max_size=max_size, max_concurrent=max_concurrent)
        async def get(k: int) -> list[int]:
            nonlocal running
            ids = await collect(k)
            running += 1
            seen.append((running, get.stats().in_flight))
            await asyncio.sleep(0.01)
            running -= 1
            return ids

        with VirtualClock():
            assert list(await asyncio.gather(*(get(k) for k in keys))) == keys
        stats = get.stats()
        assert stats.in_flight == 0
        assert stats.batches == sum(stats.batch_sizes.values())
        assert stats.items == sum(size * n for size, n in stats.batch_sizes.items())
        assert stats.items + stats.deduplicated == len(keys)  # a new item, or a duplicate
        assert stats.calls == len(keys)

    asyncio.run(main())
    assert all(in_flight == running_now for running_now, in_flight in seen)


def test_a_batch_function_is_still_what_batch_returns() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return await collect(k)

    assert isinstance(get, BatchFunction)
    assert repr(get).startswith("<batch function")


@pytest.mark.parametrize("nesting", [None, *sorted(NESTINGS)])
@pytest.mark.parametrize("seed", range(4))
async def test_seeded_cancellations_with_collect_awaited_anywhere(
    seed: int, nesting: str | None
) -> None:
    rng = random.Random(seed)
    wrap: Callable[[int], Awaitable[list[int]]] = NESTINGS[nesting] if nesting else collect
    cancelled: set[int] = set()
    n = 30

    @batch(max_size=rng.choice((None, 4)))
    async def get(k: int) -> list[int]:
        await asyncio.sleep(rng.choice((0, 0, 0.01)))
        ids = await wrap(k)
        await asyncio.sleep(rng.choice((0, 0.02)))  # the bulk call may be cancelled here
        return [i * 10 for i in ids]

    with VirtualClock():
        tasks = [asyncio.create_task(get(k)) for k in range(n)]
        for _ in range(n // 3):
            await asyncio.sleep(rng.random() * 0.02)
            victim = rng.randrange(n)
            if not tasks[victim].done():
                cancelled.add(victim)
                tasks[victim].cancel()
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks, return_exceptions=True)
    for k, result in enumerate(results):
        if isinstance(result, BaseException):
            assert isinstance(result, asyncio.CancelledError)
            assert k in cancelled
        else:
            assert result == k * 10
    core = get._core
    assert core.ended == core.calls.value == n
    assert get.stats().in_flight == 0
