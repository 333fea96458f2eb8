"""Cancellation rows of the spec: hand-over, dropped items, dropped batches, health after."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_coalesce import CoalesceEvent, batch, collect
from headrace_core.testing import VirtualClock


def slow(delay: float = 1.0, **options: Any) -> tuple[Any, list[list[int]]]:
    sent: list[list[int]] = []

    @batch(**options)
    async def get(k: int) -> list[int]:
        ids = await collect(k)
        sent.append(list(ids))
        await asyncio.sleep(delay)
        return [i * 10 for i in ids]

    return get, sent


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_leader_cancelled_during_bulk_call_hands_over() -> None:
    """Row 1: followers get results; the next live caller reruns the body."""
    with VirtualClock():
        get, sent = slow()
        tasks = [asyncio.create_task(get(i)) for i in range(3)]
        await asyncio.sleep(0.5)
        assert sent == [[0, 1, 2]]
        tasks[0].cancel()
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [10, 20]
        assert sent == [[0, 1, 2], [1, 2]]
        stats = get.stats()
        assert stats.batches == 2
        assert stats.cancelled == 1
        assert stats.failed_batches == 0
        assert stats.in_flight == 0
        assert await get(7) == 70  # healthy afterwards


async def test_leader_cancelled_during_bulk_call_keeps_duplicate_item() -> None:
    with VirtualClock():
        get, sent = slow()
        tasks = [asyncio.create_task(get(k)) for k in (5, 5, 6)]
        await asyncio.sleep(0.5)
        tasks[0].cancel()
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        assert results[1:] == [50, 60]
        assert sent == [[5, 6], [5, 6]]


async def test_leader_cancelled_in_window_item_dropped() -> None:
    """Row 2: the batch runs for the rest and the decorator stays healthy."""
    get, sent = slow(0)
    tasks = [asyncio.create_task(get(i)) for i in range(3)]
    await asyncio.sleep(0)  # everybody reached collect(); the leader waits its window
    tasks[0].cancel()
    results = list(await asyncio.gather(*tasks, return_exceptions=True))
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [10, 20]
    assert sent == [[1, 2]]
    assert list(await asyncio.gather(get(3), get(4))) == [30, 40]
    assert sent[-1] == [3, 4]


async def test_leader_cancelled_in_max_wait_window_keeps_the_deadline() -> None:
    with VirtualClock() as clock:
        get, sent = slow(0, max_wait=1.0)
        start = clock.now()
        t0 = asyncio.create_task(get(0))
        await asyncio.sleep(0.1)
        t1 = asyncio.create_task(get(1))
        await asyncio.sleep(0.4)
        t0.cancel()
        assert await t1 == 10
        assert clock.now() - start == pytest.approx(1.0)
        assert sent == [[1]]
        with pytest.raises(asyncio.CancelledError):
            await t0


async def test_followers_cancelled_before_dispatch_are_not_sent() -> None:
    """Row 3."""
    get, sent = slow(0)
    tasks = [asyncio.create_task(get(i)) for i in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    tasks[3].cancel()
    results = list(await asyncio.gather(*tasks, return_exceptions=True))
    assert results[0] == 0
    assert results[2] == 20
    assert isinstance(results[1], asyncio.CancelledError)
    assert sent == [[0, 2]]
    stats = get.stats()
    assert stats.items == 2
    assert stats.cancelled == 2


async def test_all_cancelled_batch_skips_the_bulk_call() -> None:
    get, sent = slow(0)
    events: list[CoalesceEvent] = []
    get.add_listener(events.append)
    tasks = [asyncio.create_task(get(i)) for i in range(3)]
    await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    results = list(await asyncio.gather(*tasks, return_exceptions=True))
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert sent == []
    assert get.stats().batches == 0
    assert get.stats().cancelled == 3
    assert [e.kind for e in events] == ["handed_over", "dropped"] or [e.kind for e in events] == [
        "dropped"
    ]
    assert await get(1) == 10


async def test_follower_cancelled_during_bulk_call_affects_nobody() -> None:
    with VirtualClock():
        get, sent = slow()
        tasks = [asyncio.create_task(get(i)) for i in range(3)]
        await asyncio.sleep(0.5)
        tasks[1].cancel()
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        assert results[0] == 0
        assert results[2] == 20
        assert isinstance(results[1], asyncio.CancelledError)
        assert sent == [[0, 1, 2]]
        assert get.stats().batches == 1


async def test_leader_alone_cancelled_during_bulk_call_drops_batch() -> None:
    with VirtualClock():
        get, sent = slow()
        task = asyncio.create_task(get(1))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sent == [[1]]
        assert await get(2) == 20


async def test_promoted_follower_cancelled_before_resuming_hands_over_again() -> None:
    with VirtualClock():
        get, sent = slow()
        tasks = [asyncio.create_task(get(i)) for i in range(3)]
        await asyncio.sleep(0.5)
        tasks[0].cancel()
        await asyncio.sleep(0)  # the leader hands over to task 1 ...
        tasks[1].cancel()  # ... which is cancelled before it resumes
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[1], asyncio.CancelledError)
        assert results[2] == 20
        assert sent == [[0, 1, 2], [2]]


async def test_leader_and_followers_cancelled_together() -> None:
    with VirtualClock():
        get, sent = slow()
        tasks = [asyncio.create_task(get(i)) for i in range(4)]
        await asyncio.sleep(0.5)
        for t in tasks[:3]:
            t.cancel()
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        assert results[3] == 30
        assert sent == [[0, 1, 2, 3], [3]]


async def test_timeout_on_the_leader_is_its_own_business() -> None:
    with VirtualClock():
        get, _ = slow()

        async def impatient() -> int:
            async with asyncio.timeout(0.5):
                return int(await get(0))

        results = list(await asyncio.gather(impatient(), get(1), get(2), return_exceptions=True))
        assert isinstance(results[0], TimeoutError)
        assert results[1:] == [10, 20]


async def test_body_raising_cancelled_error_by_itself_fails_the_batch() -> None:
    @batch
    async def get(k: int) -> list[int]:
        await collect(k)
        raise asyncio.CancelledError

    results = list(await asyncio.gather(get(1), get(2), return_exceptions=True))
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert get.stats().failed_batches == 1
    ok, _ = slow(0)
    assert await ok(1) == 10


async def test_cancelled_before_collect_in_slow_path() -> None:
    @batch
    async def get(k: int) -> list[int]:
        await asyncio.sleep(10)
        return await collect(k)

    with VirtualClock():
        task = asyncio.create_task(get(1))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert get.stats().cancelled == 1
        assert get.stats().batches == 0


async def test_leader_cancelled_waiting_for_a_slot_hands_over() -> None:
    with VirtualClock():
        get, sent = slow(1.0, max_concurrent=1)
        first = asyncio.create_task(get(0))
        await asyncio.sleep(0.1)  # batch [0] holds the only slot
        waiting = [asyncio.create_task(get(i)) for i in (1, 2)]
        await asyncio.sleep(0.1)
        waiting[0].cancel()  # the leader of the waiting batch
        results = list(await asyncio.gather(first, *waiting, return_exceptions=True))
        assert results[0] == 0
        assert results[2] == 20
        assert isinstance(results[1], asyncio.CancelledError)
        assert sent == [[0], [2]]


async def test_all_cancelled_while_waiting_for_a_slot_frees_the_queue() -> None:
    with VirtualClock():
        get, sent = slow(1.0, max_concurrent=1)
        first = asyncio.create_task(get(0))
        await asyncio.sleep(0.1)
        waiting = [asyncio.create_task(get(i)) for i in (1, 2)]
        await asyncio.sleep(0.1)
        for t in waiting:
            t.cancel()
        list(await asyncio.gather(*waiting, return_exceptions=True))
        assert await first == 0
        assert await get(3) == 30
        assert sent == [[0], [3]]


async def test_listener_events_for_hand_over() -> None:
    with VirtualClock():
        get, _ = slow()
        kinds: list[str] = []
        get.add_listener(lambda e: kinds.append(e.kind))
        tasks = [asyncio.create_task(get(i)) for i in range(2)]
        await asyncio.sleep(0.5)
        tasks[0].cancel()
        list(await asyncio.gather(*tasks, return_exceptions=True))
        assert kinds == ["dispatched", "handed_over", "dispatched", "completed"]
