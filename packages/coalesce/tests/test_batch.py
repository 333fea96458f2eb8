"""@batch + collect(): routing, errors, windows and the semantics table of the spec."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable
from typing import Any

import pytest

from headrace_coalesce import BatchRoutingError, Loader, MissingResult, batch, collect
from headrace_core import ConfigurationError, HeadraceError
from headrace_core.testing import VirtualClock


def make(**options: Any) -> tuple[Any, list[list[Any]]]:
    """A batched function returning ``k * 10`` per item, and the log of its bulk calls."""
    sent: list[list[Any]] = []

    @batch(**options)
    async def get(k: Any) -> list[Any]:
        ids = await collect(k)
        sent.append(list(ids))
        return [i * 10 for i in ids]

    return get, sent


# -- basics -------------------------------------------------------------------------


async def test_concurrent_calls_become_one_bulk_call() -> None:
    get, sent = make()
    assert list(await asyncio.gather(*(get(i) for i in range(5)))) == [0, 10, 20, 30, 40]
    assert sent == [[0, 1, 2, 3, 4]]
    stats = get.stats()
    assert (stats.calls, stats.batches, stats.items) == (5, 1, 5)
    assert stats.batch_sizes == {5: 1}
    assert stats.in_flight == 0
    assert get.snapshot() == stats


async def test_single_call_is_a_batch_of_one() -> None:
    get, sent = make()
    assert await get(3) == 30
    assert await get(4) == 40
    assert sent == [[3], [4]]


async def test_bare_and_called_decorator_forms() -> None:
    @batch
    async def a(k: int) -> list[int]:
        return list(await collect(k))

    @batch()
    async def b(k: int) -> list[int]:
        return list(await collect(k))

    assert list(await asyncio.gather(a(1), a(2), b(3))) == [1, 2, 3]


async def test_code_before_collect_runs_per_caller_after_once() -> None:
    before: list[int] = []
    after: list[list[int]] = []

    @batch
    async def get(k: int) -> list[int]:
        before.append(k)
        ids = await collect(k)
        after.append(ids)
        return ids

    assert list(await asyncio.gather(*(get(i) for i in range(4)))) == [0, 1, 2, 3]
    assert before == [0, 1, 2, 3]
    assert after == [[0, 1, 2, 3]]


async def test_dict_routing_by_key_any_order() -> None:
    @batch
    async def get(k: int) -> dict[int, str]:
        ids = await collect(k)
        return {i: f"v{i}" for i in reversed(ids)}

    assert list(await asyncio.gather(get(1), get(2), get(3))) == ["v1", "v2", "v3"]


async def test_tuple_and_custom_sequence_results() -> None:
    @batch
    async def get(k: int) -> tuple[int, ...]:
        ids = await collect(k)
        return tuple(i + 1 for i in ids)

    assert list(await asyncio.gather(get(1), get(2))) == [2, 3]


async def test_await_inside_body_before_collect() -> None:
    """The slow path: the body awaits before collect(); awaits are forwarded to the task."""

    @batch
    async def get(k: int) -> list[int]:
        await asyncio.sleep(0)
        ids = await collect(k)
        await asyncio.sleep(0)
        return [i * 2 for i in ids]

    assert list(await asyncio.gather(*(get(i) for i in range(3)))) == [0, 2, 4]


async def test_wrapper_keeps_metadata() -> None:
    async def original(k: int) -> list[int]:
        """Doc."""
        return await collect(k)

    wrapped = batch(original)
    assert wrapped.__name__ == "original"
    assert wrapped.__doc__ == "Doc."
    assert wrapped.__wrapped__ is original
    assert "original" in repr(wrapped)


# -- errors -----------------------------------------------------------------------------


async def test_bulk_exception_reaches_every_caller_same_object() -> None:
    boom = ValueError("down")

    @batch
    async def get(k: int) -> list[int]:
        await collect(k)
        raise boom

    results = list(await asyncio.gather(*(get(i) for i in range(3)), return_exceptions=True))
    assert all(r is boom for r in results)
    assert get.stats().failed_batches == 1


async def test_exception_values_are_raised_in_their_caller_only() -> None:
    @batch
    async def get(k: int) -> list[object]:
        ids = await collect(k)
        return [KeyError(i) if i % 2 else i for i in ids]

    results = list(await asyncio.gather(*(get(i) for i in range(4)), return_exceptions=True))
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], KeyError)
    assert isinstance(results[3], KeyError)
    assert get.stats().failed_batches == 0


async def test_stop_iteration_value_becomes_runtime_error() -> None:
    @batch
    async def get(k: int) -> list[object]:
        ids = await collect(k)
        return [StopIteration(i) for i in ids]

    results = list(await asyncio.gather(get(1), get(2), return_exceptions=True))
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.mark.parametrize("size", [1, 5])
async def test_wrong_length_is_routing_error_for_every_caller(size: int) -> None:
    @batch
    async def get(k: int) -> list[int]:
        await collect(k)
        return list(range(size))

    results = list(await asyncio.gather(*(get(i) for i in range(3)), return_exceptions=True))
    assert all(isinstance(r, BatchRoutingError) for r in results)
    assert isinstance(results[0], TypeError)
    assert isinstance(results[0], HeadraceError)
    assert get.stats().failed_batches == 1


@pytest.mark.parametrize("bad", [None, 42, "abc", {1, 2}])
async def test_unroutable_result_is_routing_error(bad: object) -> None:
    @batch
    async def get(k: int) -> Any:
        await collect(k)
        return bad

    results = list(await asyncio.gather(get(1), get(2), get(3), return_exceptions=True))
    assert all(isinstance(r, BatchRoutingError) for r in results)


async def test_mapping_missing_key_fails_that_caller_only() -> None:
    @batch
    async def get(k: int) -> dict[int, int]:
        ids = await collect(k)
        return {i: i for i in ids if i != 2}

    results = list(await asyncio.gather(get(1), get(2), get(3), return_exceptions=True))
    assert results[0] == 1
    assert results[2] == 3
    assert isinstance(results[1], MissingResult)
    assert isinstance(results[1], KeyError)
    assert results[1].key == 2
    assert "2" in str(results[1])


async def test_mapping_missing_key_for_leader() -> None:
    @batch
    async def get(k: int) -> dict[int, int]:
        ids = await collect(k)
        return {i: i for i in ids if i != 1}

    results = list(await asyncio.gather(get(1), get(2), return_exceptions=True))
    assert isinstance(results[0], MissingResult)
    assert results[1] == 2


async def test_returning_without_collect_is_runtime_error() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return [k]

    with pytest.raises(RuntimeError, match="collect"):
        await get(1)


async def test_returning_without_collect_after_await_is_runtime_error() -> None:
    @batch
    async def get(k: int) -> list[int]:
        await asyncio.sleep(0)
        return [k]

    with pytest.raises(RuntimeError, match="collect"):
        await get(1)


async def test_collect_twice_is_runtime_error() -> None:
    @batch
    async def get(k: int) -> list[int]:
        await collect(k)
        return await collect(k)

    results = list(await asyncio.gather(get(1), get(2), return_exceptions=True))
    assert all(isinstance(r, RuntimeError) for r in results)
    # the decorator stays healthy
    ok, _ = make()
    assert await ok(1) == 10


async def test_collect_outside_batch_is_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="collect") as info:
        await collect(1)
    assert "@batch function" in str(info.value)
    assert "bad yield" not in str(info.value)  # not the event loop's words
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_collect_in_another_task_is_runtime_error() -> None:
    @batch
    async def get(k: int) -> list[int]:
        return await asyncio.create_task(_collect_in_task(k))

    with pytest.raises(RuntimeError, match="collect") as info:
        await get(1)
    assert "in the call's own task" in str(info.value)


async def _collect_in_task(k: int) -> list[int]:
    return await collect(k)


async def test_error_before_collect_reaches_only_that_caller() -> None:
    sent: list[list[int]] = []

    @batch
    async def get(k: int) -> list[int]:
        if k == 1:
            raise LookupError("bad input")
        ids = await collect(k)
        sent.append(ids)
        return ids

    results = list(await asyncio.gather(get(0), get(1), get(2), return_exceptions=True))
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], LookupError)
    assert sent == [[0, 2]]


async def test_except_exception_in_body_cannot_swallow_the_parking() -> None:
    """Row 14: followers leave their body with a BaseException-level close, not an Exception."""

    @batch
    async def get(k: int) -> Any:
        try:
            ids = await collect(k)
        except Exception:  # pragma: no cover - must never run
            return "swallowed"
        return [i * 10 for i in ids]

    assert list(await asyncio.gather(get(1), get(2), get(3))) == [10, 20, 30]


async def test_follower_finally_runs_once_result_is_in() -> None:
    cleaned: list[int] = []

    @batch
    async def get(k: int) -> list[int]:
        try:
            return await collect(k)
        finally:
            cleaned.append(k)

    assert list(await asyncio.gather(get(1), get(2), get(3))) == [1, 2, 3]
    assert sorted(cleaned) == [1, 2, 3]


def test_non_async_function_is_type_error() -> None:
    def sync(k: int) -> list[int]:
        return [k]

    with pytest.raises(TypeError, match="async"):
        batch(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        batch(max_size=2)(sync)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("max_size", 0),
        ("max_size", 1.5),
        ("max_size", True),
        ("max_wait", -1),
        ("max_wait", float("nan")),
        ("max_wait", float("inf")),
        ("max_wait", "1"),
        ("max_concurrent", 0),
        ("max_concurrent", 2.0),
        ("key", 3),
        ("group_by", "tenant"),
        ("dedupe", "yes"),
    ],
)
def test_bad_options_fail_at_decoration(argument: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=argument) as info:
        batch(**{argument: value})  # type: ignore[call-overload]
    assert isinstance(info.value, ValueError)
    assert repr(value)[:3] in str(info.value)


# -- de-duplication -----------------------------------------------------------------


async def test_duplicates_are_sent_once_and_everyone_is_served() -> None:
    get, sent = make()
    assert list(await asyncio.gather(get(1), get(1), get(2), get(1))) == [10, 10, 20, 10]
    assert sent == [[1, 2]]
    stats = get.stats()
    assert stats.deduplicated == 2
    assert stats.items == 2
    assert stats.batch_sizes == {2: 1}


async def test_dedupe_off_sends_every_item() -> None:
    get, sent = make(dedupe=False)
    assert list(await asyncio.gather(get(1), get(1), get(2))) == [10, 10, 20]
    assert sent == [[1, 1, 2]]


async def test_key_function_for_dedupe_and_mapping_routing() -> None:
    sent: list[list[dict[str, int]]] = []

    @batch(key=lambda item: item["id"])
    async def get(item: dict[str, int]) -> dict[int, int]:
        items = await collect(item)
        sent.append(items)
        return {i["id"]: i["id"] * 100 for i in items}

    results = list(await asyncio.gather(get({"id": 1}), get({"id": 1}), get({"id": 2})))
    assert results == [100, 100, 200]
    assert sent == [[{"id": 1}, {"id": 2}]]


async def test_key_function_without_dedupe_still_routes_mappings() -> None:
    @batch(key=lambda item: item[0], dedupe=False)
    async def get(item: tuple[int, str]) -> dict[int, str]:
        items = await collect(item)
        return {i[0]: i[1].upper() for i in items}

    assert list(await asyncio.gather(get((1, "a")), get((2, "b")))) == ["A", "B"]


async def test_unhashable_items_allowed_not_deduped() -> None:
    sent: list[list[list[int]]] = []

    @batch
    async def get(item: list[int]) -> list[int]:
        items = await collect(item)
        sent.append(items)
        return [sum(i) for i in items]

    assert list(await asyncio.gather(get([1, 2]), get([1, 2]), get([3]))) == [3, 3, 3]
    assert sent == [[[1, 2], [1, 2], [3]]]


async def test_unhashable_items_with_mapping_result_fail_per_caller() -> None:
    @batch
    async def get(item: Any) -> dict[Hashable, int]:
        await collect(item)
        return {}

    results = list(await asyncio.gather(get([1]), get(2), return_exceptions=True))
    assert isinstance(results[0], BatchRoutingError)
    assert isinstance(results[1], MissingResult)


# -- windows ----------------------------------------------------------------------------


async def test_zero_config_window_is_one_loop_iteration() -> None:
    """Row 17: a caller that yields once before collect() lands in the next batch."""
    sent: list[list[int]] = []

    @batch
    async def get(k: int, hops: int) -> list[int]:
        for _ in range(hops):
            await asyncio.sleep(0)
        ids = await collect(k)
        sent.append(ids)
        return ids

    list(await asyncio.gather(get(0, 0), get(1, 1), get(2, 0)))
    assert sent == [[0, 2], [1]]


async def test_max_size_splits_greedily_in_call_order() -> None:
    get, sent = make(max_size=2)
    assert list(await asyncio.gather(*(get(i) for i in range(5)))) == [0, 10, 20, 30, 40]
    assert sent == [[0, 1], [2, 3], [4]]
    assert get.stats().batch_sizes == {1: 1, 2: 2}


async def test_max_size_counts_unique_items() -> None:
    get, sent = make(max_size=2)
    list(await asyncio.gather(get(1), get(1), get(2), get(3)))
    assert sent == [[1, 2], [3]]


async def test_max_wait_collects_across_iterations() -> None:
    with VirtualClock() as clock:
        get, sent = make(max_wait=0.5)
        start = clock.now()

        async def late(k: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return int(await get(k))

        results = list(await asyncio.gather(late(0, 0), late(1, 0.2), late(2, 0.49), late(3, 0.6)))
        assert results == [0, 10, 20, 30]
        assert sent == [[0, 1, 2], [3]]
        assert clock.now() - start == pytest.approx(1.1)


async def test_max_size_dispatches_before_max_wait() -> None:
    with VirtualClock() as clock:
        get, sent = make(max_wait=10, max_size=3)
        start = clock.now()
        assert list(await asyncio.gather(*(get(i) for i in range(3)))) == [0, 10, 20]
        assert clock.now() - start < 0.001
        assert sent == [[0, 1, 2]]


async def test_max_concurrent_pending_batch_keeps_growing() -> None:
    """Row 18: while the slot is taken, the waiting batch accepts every trickled call."""
    with VirtualClock():
        sent: list[list[int]] = []
        running = 0
        peak = 0

        @batch(max_concurrent=1)
        async def get(k: int) -> list[int]:
            nonlocal running, peak
            ids = await collect(k)
            running += 1
            peak = max(peak, running)
            sent.append(ids)
            await asyncio.sleep(1)
            running -= 1
            return ids

        async def trickle(k: int) -> int:
            await asyncio.sleep(k * 0.1)
            return int(await get(k))

        assert list(await asyncio.gather(*(trickle(i) for i in range(5)))) == [0, 1, 2, 3, 4]
        assert sent == [[0], [1, 2, 3, 4]]
        assert peak == 1


async def test_max_concurrent_with_max_size_queues_full_batches_in_order() -> None:
    with VirtualClock():
        sent: list[list[int]] = []

        @batch(max_concurrent=1, max_size=2)
        async def get(k: int) -> list[int]:
            ids = await collect(k)
            sent.append(ids)
            await asyncio.sleep(1)
            return ids

        assert list(await asyncio.gather(*(get(i) for i in range(5)))) == [0, 1, 2, 3, 4]
        assert sent == [[0, 1], [2, 3], [4]]
        assert get.stats().batches == 3


async def test_max_concurrent_slot_freed_by_failure() -> None:
    with VirtualClock():

        @batch(max_concurrent=1)
        async def get(k: int) -> list[int]:
            ids = await collect(k)
            await asyncio.sleep(1)
            if 0 in ids:
                raise ValueError("first batch fails")
            return ids

        async def later() -> int:
            await asyncio.sleep(0.5)
            return int(await get(1))

        results = list(await asyncio.gather(get(0), later(), return_exceptions=True))
        assert isinstance(results[0], ValueError)
        assert results[1] == 1


# -- groups, instances, loops -----------------------------------------------------------


async def test_group_by_keeps_extra_arguments_apart() -> None:
    """Row 13: calls with different group keys never share a batch."""

    @batch(group_by=lambda k, tenant: tenant)
    async def get(k: int, tenant: str) -> list[str]:
        ids = await collect(k)
        return [f"{tenant}:{i}" for i in ids]

    results = list(await asyncio.gather(get(1, "t1"), get(2, "t2"), get(3, "t1")))
    assert results == ["t1:1", "t2:2", "t1:3"]
    assert get.stats().batches == 2


async def test_tuple_items_carry_extra_arguments() -> None:
    @batch
    async def get(k: int, tenant: str) -> list[str]:
        pairs = await collect((k, tenant))
        return [f"{t}:{i}" for i, t in pairs]

    assert list(await asyncio.gather(get(1, "t1"), get(2, "t2"))) == ["t1:1", "t2:2"]


async def test_group_by_error_reaches_that_caller() -> None:
    @batch(group_by=lambda k: {"unhashable": k})  # type: ignore[arg-type,return-value]
    async def get(k: int) -> list[int]:
        return await collect(k)

    with pytest.raises(TypeError, match="group_by"):
        await get(1)


class Repo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[list[int]] = []

    @batch
    async def get(self, k: int) -> list[str]:
        ids = await collect(k)
        self.sent.append(ids)
        return [f"{self.name}:{i}" for i in ids]


async def test_methods_batch_per_instance() -> None:
    """Row 12: B's item is never fetched through A."""
    a, b = Repo("A"), Repo("B")
    assert list(await asyncio.gather(a.get(1), b.get(2), a.get(3))) == ["A:1", "B:2", "A:3"]
    assert a.sent == [[1, 3]]
    assert b.sent == [[2]]
    assert Repo.get.stats().batches == 2
    assert Repo.__dict__["get"].__get__(None, Repo) is Repo.__dict__["get"]
    assert "bound" in repr(a.get)
    assert a.get.__name__ == "get"


async def test_instance_lanes_are_forgotten_when_idle() -> None:
    a = Repo("A")
    list(await asyncio.gather(a.get(1), a.get(2)))
    core = Repo.__dict__["get"]._core
    state = core.per_loop.get()
    assert state.lanes == {}


def test_state_is_per_event_loop_across_runs() -> None:
    """Row 11: one decorator, successive asyncio.run() calls."""
    get, sent = make()

    async def main() -> list[Any]:
        return list(await asyncio.gather(get(1), get(2)))

    assert asyncio.run(main()) == [10, 20]
    assert asyncio.run(main()) == [10, 20]
    assert sent == [[1, 2], [1, 2]]


def test_two_loops_in_two_threads_never_pool() -> None:
    seen: dict[str, list[tuple[str, str]]] = {}
    barrier = threading.Barrier(2)

    @batch
    async def get(item: tuple[str, str]) -> list[str]:
        items = await collect(item)
        await asyncio.sleep(0.01)
        return [f"{i[0]}@{threading.current_thread().name}" for i in items]

    def run(name: str) -> None:
        async def main() -> None:
            barrier.wait()
            seen[name] = [
                (name, r)
                for r in list(await asyncio.gather(*(get((name, str(i))) for i in range(3))))
            ]

        asyncio.run(main())

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("A", "B"):
        assert all(r == f"{name}@{name}" for _, r in seen[name])


# -- nesting ----------------------------------------------------------------------------


async def test_nested_batched_call_after_collect() -> None:
    inner, inner_sent = make()

    @batch
    async def outer(k: int) -> list[int]:
        ids = await collect(k)
        return list(await asyncio.gather(*(inner(i) for i in ids)))

    assert list(await asyncio.gather(outer(1), outer(2), outer(3))) == [10, 20, 30]
    assert inner_sent == [[1, 2, 3]]


async def test_nested_batched_call_before_collect() -> None:
    inner, inner_sent = make()

    @batch
    async def outer(k: int) -> list[int]:
        v = await inner(k)
        ids = await collect(v)
        return [i + 1 for i in ids]

    assert list(await asyncio.gather(outer(1), outer(2))) == [11, 21]
    assert inner_sent == [[1, 2]]


async def test_sequential_calls_in_one_task() -> None:
    """Row 15: no per-call state leaks into the next call of the same task."""
    get, sent = make()
    assert await get(1) == 10
    assert await get(2) == 20

    @batch
    async def bad(k: int) -> list[int]:
        return [7, 7]

    with pytest.raises(RuntimeError):
        await bad(1)
    assert await get(3) == 30
    assert sent == [[1], [2], [3]]


async def test_same_function_called_from_its_own_body() -> None:
    @batch
    async def get(k: int) -> list[int]:
        ids = await collect(k)
        if 0 in ids:
            return [int(await get(100)) for _ in ids]
        return ids

    assert list(await asyncio.gather(get(0), get(1))) == [100, 100]


async def test_methods_called_through_the_class_batch_per_instance() -> None:
    a, b = Repo("A"), Repo("B")
    results = list(await asyncio.gather(Repo.get(a, 1), Repo.get(b, 2), a.get(3)))
    assert results == ["A:1", "B:2", "A:3"]
    assert a.sent == [[1, 3]]
    assert b.sent == [[2]]


async def test_follower_awaiting_in_finally_keeps_its_value() -> None:
    @batch
    async def get(k: int) -> list[int]:
        try:
            return await collect(k)
        finally:
            await asyncio.sleep(0)

    results = list(await asyncio.gather(get(1), get(2)))
    assert results == [1, 2]


# -- user code that fails inside the machinery ------------------------------------------


async def _settle(awaitable: Any) -> Any:
    try:
        async with asyncio.timeout(10):
            return await awaitable
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("max_wait", [0.0, 0.5])
async def test_key_raising_for_the_first_caller_leaves_no_leaderless_batch(
    max_wait: float,
) -> None:
    def key(item: int) -> int:
        if item == 0:
            raise LookupError("no key for 0")
        return item

    get, sent = make(key=key, max_wait=max_wait)
    with VirtualClock():
        got = await asyncio.gather(*(_settle(get(i)) for i in range(3)))
        assert isinstance(got[0], LookupError)
        assert got[1:] == [10, 20]  # the next caller leads the window
        assert sent == [[1, 2]]
        assert await _settle(get(3)) == 30  # later calls never hang
    assert get.stats().in_flight == 0


async def test_item_hash_raising_for_the_first_caller_leaves_no_leaderless_batch() -> None:
    class Bad:
        def __hash__(self) -> int:
            raise LookupError("no hash")

    @batch
    async def get(item: object) -> list[int]:
        items = await collect(item)
        return [1 for _ in items]

    with VirtualClock():
        got = await asyncio.gather(*(_settle(get(x)) for x in (Bad(), 2, 3)))
        assert isinstance(got[0], LookupError)
        assert got[1:] == [1, 1]
        assert await _settle(get(4)) == 1


async def test_result_whose_reads_fail_reaches_every_caller() -> None:
    class Unreadable(list[int]):
        def __iter__(self) -> Any:
            raise LookupError("cannot iterate")

        def __getitem__(self, index: Any) -> Any:
            raise LookupError("cannot index")

    @batch
    async def get(k: int) -> list[int]:
        ids = await collect(k)
        return Unreadable(ids)

    with VirtualClock():
        got = await asyncio.gather(*(_settle(get(i)) for i in range(3)))
    assert all(isinstance(r, LookupError) for r in got), got  # no follower left waiting
    assert get.stats().failed_batches == 1
    assert get.stats().in_flight == 0


@pytest.mark.parametrize("loader", [False, True])
async def test_a_list_whose_iteration_yields_fewer_values_routes_by_index(loader: bool) -> None:
    class Short(list[int]):
        """Its len() and indexing are right; its iteration stops early."""

        def __iter__(self) -> Any:
            return iter(list.__getitem__(self, slice(0, 1)))

    async def fetch(ids: list[int]) -> list[int]:
        return Short([i * 10 for i in ids])

    with VirtualClock():
        if loader:
            load = Loader(fetch, cache=False)
            got = await asyncio.gather(*(_settle(load.load(i)) for i in range(3)))
        else:

            @batch
            async def get(k: int) -> list[int]:
                return await fetch(await collect(k))

            got = await asyncio.gather(*(_settle(get(i)) for i in range(3)))
    assert got == [0, 10, 20]  # every caller answered (zip over it left two waiting)


async def test_mapping_lookup_failing_for_one_key_fails_that_caller_only() -> None:
    class Partial(dict[int, int]):
        def __getitem__(self, key: int) -> int:
            if key == 1:
                raise LookupError("backend lost 1")
            return super().__getitem__(key)

    @batch
    async def get(k: int) -> Any:
        ids = await collect(k)
        return Partial({i: i * 10 for i in ids})

    with VirtualClock():
        got = await asyncio.gather(*(_settle(get(i)) for i in range(3)))
    assert got[0] == 0
    assert got[2] == 20
    assert isinstance(got[1], LookupError)


async def test_missing_result_does_not_call_the_key_repr_while_routing() -> None:
    class Sku:
        def __init__(self, n: int) -> None:
            self.n = n

        def __repr__(self) -> str:
            raise LookupError("repr")

    skus = [Sku(0), Sku(1)]

    @batch
    async def get(sku: Sku) -> dict[Sku, int]:
        items = await collect(sku)
        return {s: s.n for s in items if s.n != 1}

    with VirtualClock():
        got = await asyncio.gather(*(_settle(get(s)) for s in skus))
    assert got[0] == 0
    assert isinstance(got[1], MissingResult)
    assert got[1].key is skus[1]
    assert "repr failed" in str(got[1])


async def test_leader_cancelled_in_window_whose_finally_raises_hands_over() -> None:
    @batch(max_wait=1.0)
    async def get(k: int) -> list[int]:
        served = False
        try:
            ids = await collect(k)
            served = True
            return [i * 10 for i in ids]
        finally:
            if k == 0 and not served:
                raise LookupError("cleanup failed")

    with VirtualClock():
        leader = asyncio.create_task(_settle(get(0)))
        await asyncio.sleep(0)
        others = asyncio.gather(_settle(get(1)), _settle(get(2)))
        await asyncio.sleep(0.5)
        leader.cancel()
        lost = await leader
        assert isinstance(lost, LookupError)  # the body's own error, as in plain Python
        assert list(await others) == [10, 20]
    assert get.stats().in_flight == 0


async def test_group_by_returning_an_unhashable_value_names_group_by() -> None:
    @batch(group_by=lambda k: [k])  # type: ignore[arg-type,return-value]
    async def get(k: int) -> list[int]:
        return await collect(k)

    with pytest.raises(TypeError, match=r"group_by .* returned a value of type list"):
        await get(1)


def test_the_collect_awaitable_takes_both_throw_forms() -> None:
    for form in ((KeyError("k"),), (KeyError, KeyError("k")), (KeyError,)):
        awaitable = collect(1).__await__()
        assert next(awaitable)[1] == 1  # the box, handed to the wrapper
        with pytest.raises(KeyError):
            awaitable.throw(*form)
    misplaced = collect(2).__await__()
    next(misplaced)
    with pytest.raises(RuntimeError, match="@batch function"):
        misplaced.throw(RuntimeError("Task got bad yield: [...]"))
