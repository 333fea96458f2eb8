"""Loader: batching, the cache, and the DataLoader rows of the spec."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from headrace_coalesce import BatchRoutingError, Loader, MissingResult
from headrace_core import ConfigurationError
from headrace_core.testing import VirtualClock


class Backend:
    """A load_fn that records its calls; optional delay and per-key errors."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.calls: list[list[Any]] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, keys: list[Any]) -> list[Any]:
        self.calls.append(list(keys))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [k * 10 if not isinstance(k, str) else k.upper() for k in keys]


async def test_loads_in_one_window_become_one_call() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    assert list(await asyncio.gather(*(loader.load(i) for i in range(4)))) == [0, 10, 20, 30]
    assert backend.calls == [[0, 1, 2, 3]]
    stats = loader.stats()
    assert (stats.calls, stats.batches, stats.items, stats.cache_hits) == (4, 1, 4, 0)
    assert loader.snapshot() == stats


async def test_cache_serves_repeated_keys() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    assert list(await asyncio.gather(loader.load(1), loader.load(1), loader.load(2))) == [
        10,
        10,
        20,
    ]
    assert await loader.load(1) == 10
    assert backend.calls == [[1, 2]]
    assert loader.stats().cache_hits == 2


async def test_cache_hit_creates_no_task_and_does_not_suspend() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    await loader.load(1)
    created: list[object] = []
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()

    def factory_spy(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    loop.set_task_factory(factory_spy)
    try:
        coro = loader.load(1)
        with pytest.raises(StopIteration) as info:
            coro.send(None)  # completes without yielding to the loop
        assert info.value.value == 10
    finally:
        loop.set_task_factory(factory)
    assert created == []


async def test_load_many_keeps_order_and_dedupes() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    assert await loader.load_many([3, 1, 3, 2]) == [30, 10, 30, 20]
    assert backend.calls == [[3, 1, 2]]
    assert await loader.load_many(iter([2, 4])) == [20, 40]
    assert backend.calls[-1] == [4]


async def test_load_many_joins_loads_of_the_same_window() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    results = list(await asyncio.gather(loader.load(1), loader.load_many([2, 3]), loader.load(4)))
    assert results == [10, [20, 30], 40]
    assert backend.calls == [[1, 2, 3, 4]]


async def test_load_many_raises_first_failed_key_after_all() -> None:
    async def fn(keys: list[int]) -> list[object]:
        return [ValueError(k) if k % 2 else k for k in keys]

    loader: Loader[int, object] = Loader(fn)
    with pytest.raises(ValueError, match="3"):
        await loader.load_many([2, 3, 4, 5])


async def test_load_many_split_by_max_size() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend, max_size=2)
    assert await loader.load_many(range(5)) == [0, 10, 20, 30, 40]
    assert backend.calls == [[0, 1], [2, 3], [4]]


async def test_mapping_results_and_missing_keys() -> None:
    async def fn(keys: list[int]) -> dict[int, str]:
        return {k: f"v{k}" for k in keys if k != 2}

    loader: Loader[int, str] = Loader(fn)
    results = list(await asyncio.gather(loader.load(1), loader.load(2), return_exceptions=True))
    assert results[0] == "v1"
    assert isinstance(results[1], MissingResult)


async def test_mapping_routes_by_cache_key() -> None:
    async def fn(keys: list[dict[str, int]]) -> dict[int, int]:
        return {k["id"]: k["id"] * 2 for k in keys}

    loader: Loader[dict[str, int], int] = Loader(fn, key=lambda k: k["id"])
    assert list(await asyncio.gather(loader.load({"id": 1}), loader.load({"id": 1}))) == [2, 2]


async def test_wrong_length_fails_every_key_and_is_not_cached() -> None:
    calls = 0

    async def fn(keys: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        return [1]

    loader: Loader[int, int] = Loader(fn)
    results = list(await asyncio.gather(loader.load(1), loader.load(2), return_exceptions=True))
    assert all(isinstance(r, BatchRoutingError) for r in results)
    with pytest.raises(BatchRoutingError):
        await loader.load_many([1, 2])
    assert calls == 2
    assert loader.stats().failed_batches == 2


async def test_item_errors_raised_per_key_not_cached_by_default() -> None:
    calls: list[list[int]] = []

    async def fn(keys: list[int]) -> list[object]:
        calls.append(keys)
        return [KeyError(k) if k == 2 else k for k in keys]

    loader: Loader[int, object] = Loader(fn)
    results = list(await asyncio.gather(loader.load(1), loader.load(2), return_exceptions=True))
    assert results[0] == 1
    assert isinstance(results[1], KeyError)
    with pytest.raises(KeyError):
        await loader.load(2)
    assert calls == [[1, 2], [2]]


async def test_item_errors_cached_with_cache_errors() -> None:
    calls: list[list[int]] = []

    async def fn(keys: list[int]) -> list[object]:
        calls.append(keys)
        return [KeyError(k) for k in keys]

    loader: Loader[int, object] = Loader(fn, cache_errors=True)
    for _ in range(2):
        with pytest.raises(KeyError):
            await loader.load(1)
    assert calls == [[1]]


async def test_whole_batch_failure_is_not_cached() -> None:
    """Row 5 (strawberry caches it): the next load calls load_fn again."""
    backend = Backend(fail=ConnectionError("down"))
    loader: Loader[int, int] = Loader(backend)
    results = list(await asyncio.gather(loader.load(1), loader.load(2), return_exceptions=True))
    assert all(isinstance(r, ConnectionError) for r in results)
    assert results[0] is results[1]
    backend.fail = None
    assert await loader.load(1) == 10
    assert backend.calls == [[1, 2], [1]]


async def test_cache_false_dedupes_inside_one_batch_only() -> None:
    """graphql/dataloader#280."""
    backend = Backend()
    loader: Loader[int, int] = Loader(backend, cache=False)
    assert list(await asyncio.gather(loader.load(1), loader.load(1), loader.load(2))) == [
        10,
        10,
        20,
    ]
    assert await loader.load(1) == 10
    assert backend.calls == [[1, 2], [1]]
    stats = loader.stats()
    assert stats.deduplicated == 1
    assert stats.cache_hits == 0


def _assert_idle(loader: Loader[Any, Any]) -> None:
    lane = loader._per_loop.get(asyncio.get_running_loop())
    assert lane.open is None
    assert lane.in_flight == 0
    assert not lane.queue
    assert all(entry.batch is None for entry in loader._cache.values())
    assert loader.stats().in_flight == 0


@pytest.mark.parametrize("cache", [True, False])
async def test_unhashable_keys_raise_a_clear_type_error_at_every_call(cache: bool) -> None:
    backend = Backend()
    loader: Loader[Any, int] = Loader(backend, cache=cache)
    calls: list[Any] = [
        lambda: loader.prime([1], 10),
        lambda: loader.clear([1]),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"key of type list is unhashable.*pass key="):
            call()
    with pytest.raises(TypeError, match=r"key of type list is unhashable.*pass key="):
        await loader.load([1, 2])
    with pytest.raises(TypeError, match=r"key of type list is unhashable.*pass key="):
        await loader.load_many([3, [1, 2], 4])
    assert backend.calls == []  # nothing of those calls was registered or sent
    _assert_idle(loader)
    assert await loader.load_many([3, 4]) == [30, 40]
    assert backend.calls == [[3, 4]]

    # key= is the remedy; a key= that returns an unhashable value is named as the culprit
    fixed: Loader[list[int], int] = Loader(_sums, key=tuple, cache=cache)
    assert list(await asyncio.gather(fixed.load([1, 2]), fixed.load([1, 2]))) == [3, 3]
    fixed.prime([5], 5)
    fixed.clear([5])
    broken: Loader[list[int], int] = Loader(_sums, key=_as_list, cache=cache)
    with pytest.raises(TypeError, match="key= returned a value of type list"):
        await broken.load([1])


def _as_list(key: list[int]) -> Any:
    return list(key)


async def _sums(keys: list[list[int]]) -> list[int]:
    return [sum(k) for k in keys]


@pytest.mark.parametrize("cache", [True, False])
async def test_first_load_with_a_failing_hash_leaves_no_open_batch(cache: bool) -> None:
    class Bad:
        def __hash__(self) -> int:
            raise LookupError("no hash")

    backend = Backend()
    loader: Loader[Any, int] = Loader(backend, cache=cache)
    with VirtualClock():
        async with asyncio.timeout(10):
            first, second = await asyncio.gather(
                loader.load(Bad()), loader.load(2), return_exceptions=True
            )
        assert isinstance(first, LookupError)
        assert second == 20
        async with asyncio.timeout(10):
            assert await loader.load(3) == 30  # never hangs on a batch nobody runs
    _assert_idle(loader)


async def test_load_many_registers_nothing_when_a_key_fails() -> None:
    def key(k: int) -> int:
        if k == 3:
            raise LookupError("no key for 3")
        return k

    backend = Backend()
    with VirtualClock():
        loader: Loader[int, int] = Loader(backend, key=key, max_size=2, max_wait=1.0)
        with pytest.raises(LookupError):
            await loader.load_many([1, 2, 3])  # 1 and 2 filled a batch of their own
        _assert_idle(loader)
        assert not loader._cache
        async with asyncio.timeout(10):
            assert await loader.load_many([1, 2]) == [10, 20]
    assert backend.calls == [[1, 2]]


async def test_load_many_raises_an_interrupt_before_another_keys_error() -> None:
    async def fn(keys: list[int]) -> list[BaseException]:
        return [ValueError(k) if k == 1 else SystemExit(k) for k in keys]

    loader: Loader[int, int] = Loader(fn)
    with pytest.raises(SystemExit):
        await loader.load_many([1, 2])


async def test_prime_clear_clear_all() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    loader.prime(1, 111)
    assert await loader.load(1) == 111
    loader.prime(1, 222)  # already cached: ignored
    assert await loader.load(1) == 111
    loader.prime(1, 222, force=True)
    assert await loader.load(1) == 222
    loader.prime(2, ValueError("primed"))
    with pytest.raises(ValueError, match="primed"):
        await loader.load(2)
    loader.clear(1)
    assert await loader.load(1) == 10
    loader.clear(99)  # unknown key: nothing happens
    loader.clear_all()
    assert await loader.load_many([1, 2]) == [10, 20]
    assert backend.calls == [[1], [1, 2]]


async def test_prime_ignores_a_pending_key_unless_forced() -> None:
    backend = Backend(delay=1)
    loader: Loader[int, int] = Loader(backend)
    with VirtualClock():
        task = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.5)
        loader.prime(1, 5)
        assert await loader.load(1) == 10  # joined the pending load
        loader.prime(1, 7, force=True)
        assert await task == 10  # the pending load finishes for its waiters
        assert await loader.load(1) == 7


def test_prime_outside_a_loop_and_no_loop_bound_at_construction() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    loader.prime(5, 55)

    async def main() -> list[int]:
        return list(await asyncio.gather(loader.load(5), loader.load(6)))

    assert asyncio.run(main()) == [55, 60]
    assert asyncio.run(main()) == [55, 60]  # a second loop: no "Event loop is closed"
    assert backend.calls == [[6]]


def test_prime_with_cache_disabled_is_a_no_op() -> None:
    loader: Loader[int, int] = Loader(Backend(), cache=False)
    loader.prime(1, 1)

    async def main() -> int:
        return await loader.load(1)

    assert asyncio.run(main()) == 10


def test_pending_entry_from_a_dead_loop_is_reloaded() -> None:
    backend = Backend(delay=100)
    loader: Loader[int, int] = Loader(backend)

    async def abandon() -> None:
        task = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        list(await asyncio.gather(task, return_exceptions=True))

    asyncio.run(abandon())
    backend.delay = 0

    async def main() -> int:
        return await loader.load(1)

    assert asyncio.run(main()) == 10


async def test_shared_pending_load_survives_one_waiter_cancelled() -> None:
    """Row 4: cancelling one caller must not cancel the shared load."""
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        first = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(loader.load(1))  # a cache hit on the pending entry
        await asyncio.sleep(0.1)
        second.cancel()
        assert await first == 10
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await loader.load(1) == 10
        assert backend.calls == [[1]]


async def test_first_caller_cancelled_during_load_does_not_cancel_it() -> None:
    """The load runs on its own: one waiter's cancellation never reruns or cancels it."""
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        tasks = [asyncio.create_task(loader.load(i)) for i in range(3)]
        await asyncio.sleep(0.5)
        tasks[0].cancel()
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [10, 20]
        assert backend.calls == [[0, 1, 2]]
        assert loader.stats().batches == 1
        # the load of key 0 completed, so its value is cached
        assert await loader.load(0) == 0
        assert backend.calls == [[0, 1, 2]]


async def test_pending_waiter_of_another_batch_keeps_the_key_alive() -> None:
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        owner = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.5)
        hitter = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.1)
        owner.cancel()
        assert await hitter == 10
        assert backend.calls == [[1]]
        with pytest.raises(asyncio.CancelledError):
            await owner


async def test_cancelled_load_never_stays_in_the_cache() -> None:
    """Row 5 (aiodataloader: CANCELLED forever)."""
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        task = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await loader.load(1) == 10
        assert backend.calls == [[1], [1]]


async def test_leader_cancelled_in_window_others_still_loaded() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    tasks = [asyncio.create_task(loader.load(i)) for i in range(3)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    results = list(await asyncio.gather(*tasks, return_exceptions=True))
    assert results[1:] == [10, 20]
    assert backend.calls == [[1, 2]]


async def test_all_waiters_cancelled_skips_load_fn() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    tasks = [asyncio.create_task(loader.load(i)) for i in range(3)]
    await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    list(await asyncio.gather(*tasks, return_exceptions=True))
    assert backend.calls == []
    assert loader.stats().cancelled == 3
    assert await loader.load(1) == 10


async def test_follower_cancelled_before_dispatch_not_sent() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    tasks = [asyncio.create_task(loader.load(i)) for i in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    results = list(await asyncio.gather(*tasks, return_exceptions=True))
    assert results[0] == 0
    assert results[2] == 20
    assert backend.calls == [[0, 2]]


async def test_all_waiters_cancelled_during_load_stop_it() -> None:
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        tasks = [asyncio.create_task(loader.load(i)) for i in range(2)]
        await asyncio.sleep(0.5)
        tasks[0].cancel()
        await asyncio.sleep(0.1)  # key 1 still has a waiter: the load goes on
        tasks[1].cancel()  # nobody waits any more: the load is cancelled
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)
        assert backend.calls == [[0, 1]]
        assert loader.stats().in_flight == 0
        assert await loader.load(1) == 10  # nothing cached from the cancelled load
        assert backend.calls == [[0, 1], [1]]


class Held:
    """A load_fn that records its calls and whether it was cancelled, and waits for a go."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.cancelled = 0
        self.go = asyncio.Event()

    async def __call__(self, keys: list[int]) -> list[int]:
        self.calls.append(list(keys))
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [k * 10 for k in keys]


@pytest.mark.parametrize("cache", [True, False])
async def test_a_cancel_seen_after_the_dispatch_leaves_a_wanted_load_running(cache: bool) -> None:
    """A caller cancelled in the window, whose task runs only after the load has started.

    Its key is not sent, and its late bookkeeping must not count as the last waiter gone.
    """
    held = Held()
    loader: Loader[int, int] = Loader(held, cache=cache)
    first = asyncio.create_task(loader.load(1))  # its first step starts the batch's task
    second = asyncio.create_task(loader.load(2))
    await asyncio.sleep(0)  # both wait; the batch's task runs next, before `first` again
    first.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert first.cancelled()
    assert held.calls == [[2]]
    assert not second.done()
    held.go.set()
    assert await second == 20
    assert held.cancelled == 0
    assert loader.stats().cancelled == 1


@pytest.mark.parametrize("cache", [True, False])
async def test_a_load_runs_while_one_waiter_of_any_key_is_left(cache: bool) -> None:
    """Two waiters of one key (a duplicate, or a hit on the pending entry) and one other.

    The load goes on until the last of the three is cancelled, then stops; nothing is kept.
    """
    held = Held()
    loader: Loader[int, int] = Loader(held, cache=cache)
    tasks = [asyncio.create_task(loader.load(k)) for k in (1, 1, 2)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert held.calls == [[1, 2]]
    for task in tasks:
        assert held.cancelled == 0
        task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        assert task.cancelled()
    assert held.cancelled == 1
    assert loader.stats().in_flight == 0
    held.go.set()
    assert await loader.load(1) == 10  # nothing was cached from the stopped load
    assert held.calls == [[1, 2], [1]]


async def test_cancelled_duplicates_in_the_window_are_pruned_with_their_key() -> None:
    """Both waiters of key 1 are cancelled in the window: the load is of key 2 only, and
    it stops once key 2's waiter is cancelled too (the pruned waiters are counted once)."""
    held = Held()
    loader: Loader[int, int] = Loader(held, cache=False)
    tasks = [asyncio.create_task(loader.load(k)) for k in (1, 1, 2)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    tasks[1].cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert held.calls == [[2]]
    assert held.cancelled == 0
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)
    assert held.cancelled == 1
    assert loader.stats().cancelled == 3


@pytest.mark.parametrize("options", [{}, {"max_concurrent": 1}, {"max_size": 2}])
async def test_calls_count_every_load_at_any_moment(options: dict[str, Any]) -> None:
    """``stats().calls`` counts each load once, while its batch collects and after, however
    it joined (a duplicate, a failed key, a withdrawn ``load_many``)."""
    held = Held()
    loader: Loader[Any, int] = Loader(held, cache=False, **options)
    first = [asyncio.create_task(loader.load(k)) for k in (1, 2, 1)]
    await asyncio.sleep(0)  # all three joined; the batch has not started yet
    assert loader.stats().calls == 3
    with pytest.raises(TypeError):
        await loader.load([])  # unhashable: it joins nothing, and it counts
    assert loader.stats().calls == 4
    with pytest.raises(TypeError):
        await loader.load_many([3, 3, []])  # withdrawn, all three keys counted
    assert loader.stats().calls == 7
    second = [asyncio.create_task(loader.load(k)) for k in (4, 5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert loader.stats().calls == 9  # running, or waiting for a slot
    held.go.set()
    assert await asyncio.gather(*first, *second) == [10, 20, 10, 40, 50]
    stats = loader.stats()
    assert (stats.calls, stats.in_flight) == (9, 0)
    if "max_size" not in options:  # both duplicates met their key in its batch
        assert stats.deduplicated == 2
    assert not loader._unfolded


async def test_load_many_cancelled_as_the_last_waiter_stops_the_load() -> None:
    """The load_many's own future is cancelled with it: it still counts as gone."""
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend, max_concurrent=1)
        many = asyncio.create_task(loader.load_many([1]))
        await asyncio.sleep(0.5)
        many.cancel()
        await asyncio.sleep(0)
        assert await loader.load(2) == 20  # the slot was freed at once
        assert asyncio.get_running_loop().time() == pytest.approx(1.5)
        assert await loader.load(1) == 10  # loaded again: nothing kept from the stopped load
        assert backend.calls == [[1], [2], [1]]


async def test_a_hit_on_a_load_being_stopped_starts_a_new_one() -> None:
    """The last waiter was cancelled and the load asked to stop; a new load of the same key
    in that loop iteration gets its value, not the stopped load's cancellation."""
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        first = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.5)
        first.cancel()
        # its task runs first, and asks the load to stop; then this one's first step
        second = asyncio.create_task(loader.load(1))
        assert await second == 10
        assert first.cancelled()
        assert backend.calls == [[1], [1]]


@pytest.mark.parametrize("keys", [[1, 2], [0, 1, 2]])
async def test_load_many_cancelled_after_a_key_was_answered_stops_at_once(keys: list[int]) -> None:
    """The cancel arrives after one key's future got its value, before the task runs again."""
    with VirtualClock():
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []

        async def load_fn(batch: list[int]) -> list[Any]:
            if batch == [0]:
                await asyncio.sleep(0.5)
                return [KeyError("e0")]
            if batch == [1]:
                await asyncio.sleep(1)
                loop.call_soon(tasks[0].cancel)  # after key 1's answer, before the task runs
                return [ValueError("e1")]
            await asyncio.sleep(10)
            return ["v2"]

        loader: Loader[int, Any] = Loader(load_fn, max_size=1)
        tasks.append(asyncio.create_task(loader.load_many(keys)))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert loop.time() == pytest.approx(1.0)
        assert tasks[0].cancelled()
        await asyncio.sleep(0)
        assert loader.stats().in_flight == 0  # key 2's load, which nobody wants, was stopped


async def test_aclose_returns_when_a_batch_task_was_cancelled_before_its_first_step() -> None:
    with VirtualClock():
        loader: Loader[int, int] = Loader(Backend(), cache=False)
        waiter = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0)  # the batch and its task exist; the task has not run yet
        (runner,) = loader._runners
        runner.cancel()
        waiter.cancel()
        await asyncio.gather(runner, waiter, return_exceptions=True)
        closing = asyncio.create_task(loader.aclose())
        for _ in range(20):
            await asyncio.sleep(0)
        done = closing.done()
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        assert done  # it does not wait for the task that never ran
        assert not loader._runners


@pytest.mark.parametrize("cache", [False, True])
async def test_a_batch_task_cancelled_before_its_first_step_answers_its_callers(
    cache: bool,
) -> None:
    with VirtualClock():
        backend = Backend()
        loader: Loader[int, int] = Loader(backend, cache=cache)
        waiters = [asyncio.create_task(loader.load(k)) for k in (1, 2, 1)]
        await asyncio.sleep(0)  # the batch and its task exist; the task has not run yet
        (runner,) = loader._runners
        runner.cancel()  # somebody else's sweep, not a waiter's cancellation
        for _ in range(20):  # bounded: a regression fails here instead of hanging
            await asyncio.sleep(0)
        ended = [w.done() for w in waiters]
        for w in waiters:
            w.cancel()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert ended == [True, True, True]  # the dropped batch cancelled their futures
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert not loader._runners
        assert backend.calls == []
        # the window is closed: later loads start a batch of their own and get values
        assert list(await asyncio.gather(loader.load(1), loader.load(3))) == [10, 30]
        assert backend.calls == [[1, 3]]
        _assert_idle(loader)


def test_a_loop_with_its_own_create_future_makes_the_futures() -> None:
    made: list[asyncio.Future[Any]] = []

    class Loop(asyncio.SelectorEventLoop):
        def create_future(self) -> asyncio.Future[Any]:
            fut = super().create_future()
            made.append(fut)
            return fut

    async def main() -> list[int]:
        loader: Loader[int, int] = Loader(Backend(), cache=False)
        return list(await asyncio.gather(*(loader.load(k) for k in (0, 1, 2, 1))))

    loop = Loop()
    try:
        assert loop.run_until_complete(main()) == [0, 10, 20, 10]
    finally:
        loop.close()
    assert len(made) >= 4  # one per load, each from the loop's own create_future


async def test_a_cancelled_error_value_is_one_keys_error_in_load_many() -> None:
    """A CancelledError returned as a key's value fails that key; the call is not cancelled."""

    async def load_fn(keys: list[int]) -> list[Any]:
        values = {1: ValueError("one"), 2: asyncio.CancelledError(), 3: 30}
        return [values[k] for k in keys]

    loader: Loader[int, Any] = Loader(load_fn)
    with pytest.raises(ValueError, match="one"):  # the first failed key's error, in order
        await loader.load_many([1, 2, 3])
    assert loader.stats().cancelled == 0
    assert await loader.load(3) == 30


async def test_load_many_cancelled_while_leading() -> None:
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        many = asyncio.create_task(loader.load_many([1, 2]))
        other = asyncio.create_task(loader.load(3))
        await asyncio.sleep(0.5)
        many.cancel()
        assert await other == 30
        with pytest.raises(asyncio.CancelledError):
            await many
        assert backend.calls == [[1, 2, 3]]


async def test_load_many_cancelled_while_waiting_for_others() -> None:
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        first = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0)
        many = asyncio.create_task(loader.load_many([1, 2]))
        await asyncio.sleep(0.5)
        many.cancel()
        assert await first == 10
        with pytest.raises(asyncio.CancelledError):
            await many


async def test_load_fn_raising_cancelled_error_by_itself() -> None:
    async def fn(keys: list[int]) -> list[int]:
        raise asyncio.CancelledError

    loader: Loader[int, int] = Loader(fn)
    results = list(await asyncio.gather(loader.load(1), loader.load(2), return_exceptions=True))
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert loader.stats().failed_batches == 1


async def test_max_wait_and_max_concurrent() -> None:
    with VirtualClock() as clock:
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend, max_wait=0.5, max_concurrent=1)
        start = clock.now()

        async def at(delay: float, k: int) -> int:
            await asyncio.sleep(delay)
            return await loader.load(k)

        results = list(await asyncio.gather(at(0, 1), at(0.4, 2), at(0.6, 3), at(1.2, 4)))
        assert results == [10, 20, 30, 40]
        assert backend.calls == [[1, 2], [3, 4]]
        assert clock.now() - start == pytest.approx(2.5)


async def test_key_function_caches_by_key() -> None:
    calls: list[list[dict[str, int]]] = []

    async def fn(keys: list[dict[str, int]]) -> list[int]:
        calls.append(keys)
        return [k["id"] for k in keys]

    loader: Loader[dict[str, int], int] = Loader(fn, key=lambda k: k["id"])
    assert list(await asyncio.gather(loader.load({"id": 1}), loader.load({"id": 1, "x": 2}))) == [
        1,
        1,
    ]
    assert len(calls) == 1


def test_async_callables_are_accepted() -> None:
    backend = Backend()
    Loader(backend)
    Loader(functools.partial(Backend()))

    async def fn(keys: list[int], scale: int) -> list[int]:
        return [k * scale for k in keys]

    loader: Loader[int, int] = Loader(functools.partial(fn, scale=3))
    assert asyncio.run(loader.load(2)) == 6


def test_non_async_load_fn_is_type_error() -> None:
    def fn(keys: list[int]) -> list[int]:
        return keys

    with pytest.raises(TypeError, match="async"):
        Loader(fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        Loader(functools.partial(fn))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Loader(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("max_size", 0),
        ("max_wait", -0.1),
        ("max_concurrent", 0),
        ("cache", "yes"),
        ("cache_errors", 1),
        ("key", "id"),
    ],
)
def test_bad_options_fail_at_construction(argument: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Loader(Backend(), **{argument: value})  # type: ignore[arg-type]


async def test_listener_receives_events() -> None:
    loader: Loader[int, int] = Loader(Backend())
    events: list[str] = []
    remove = loader.add_listener(lambda e: events.append(e.kind))
    await loader.load(1)
    remove()
    await loader.load(2)
    assert events == ["dispatched", "completed"]
    assert "Loader" in repr(loader)


async def test_load_many_of_nothing() -> None:
    backend = Backend()
    loader: Loader[int, int] = Loader(backend)
    assert await loader.load_many([]) == []
    assert backend.calls == []


async def test_clear_all_while_pending_keeps_the_waiters() -> None:
    with VirtualClock():
        backend = Backend(delay=1)
        loader: Loader[int, int] = Loader(backend)
        task = asyncio.create_task(loader.load(1))
        await asyncio.sleep(0.5)
        loader.clear_all()
        assert await task == 10
        assert await loader.load(1) == 10  # forgotten: loaded again
        assert backend.calls == [[1], [1]]


async def test_a_key_whose_hash_fails_after_it_was_cached_never_strands_a_caller() -> None:
    class Flaky:
        """Hashable while it is loaded; its hash fails once the load has answered."""

        broken = False

        def __hash__(self) -> int:
            if Flaky.broken:
                raise LookupError("the hash is gone")
            return 7

        def __eq__(self, other: object) -> bool:
            return self is other

    key = Flaky()

    async def fetch(keys: list[Any]) -> list[Any]:
        Flaky.broken = True  # before the batch's results are routed and evicted
        return [ValueError("no value") for _ in keys]

    with VirtualClock():
        loader: Loader[Any, Any] = Loader(fetch)  # cache_errors=False: the error is evicted
        waiter = asyncio.ensure_future(loader.load(key))
        for _ in range(20):  # bounded: a regression fails here instead of hanging
            await asyncio.sleep(0)
        done = waiter.done()
        waiter.cancel()
        outcome = (await asyncio.gather(waiter, return_exceptions=True))[0]
    assert done
    assert isinstance(outcome, ValueError)  # its own error, not the eviction's
    assert loader.stats().in_flight == 0


async def test_a_coroutine_returned_instead_of_awaited_is_a_clear_routing_error() -> None:
    async def inner(keys: list[int]) -> list[int]:
        return keys

    async def fetch(keys: list[int]) -> Any:
        return inner(keys)  # the await is missing

    with VirtualClock():
        loader: Loader[int, int] = Loader(fetch, cache=False)
        with pytest.raises(BatchRoutingError, match="returned a coroutine: an await is missing"):
            await loader.load(1)
