"""Fault injection at every point where headrace-coalesce calls user code.

Each driver runs one window of several callers with one misbehaving callback, then checks
what every point keeps whatever the callback does: every caller ends (under a deadline)
with its own value or the user's error (or a headrace error chaining it), no caller gets
another's value, the stats are back to idle with no batch left open or pending, and the
next call works. ``run_injection`` runs every driver under a ``VirtualClock``, so the
drivers' sleeps and deadlines take no real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest

import headrace_coalesce
from headrace_coalesce import (
    BatchFunction,
    BatchRoutingError,
    CoalesceEvent,
    Loader,
    MissingResult,
    batch,
    collect,
)
from shared import faults
from shared.faults import (
    ASYNC_FAULTS,
    SYNC_FAULTS,
    Fault,
    FaultError,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    missing_points,
    run_injection,
)

DEADLINE = 60.0  # each caller's own deadline, in virtual seconds
INTERRUPTS = (KeyboardInterrupt, SystemExit)
ITERABLE_FAULTS = (*SYNC_FAULTS, Fault.EARLY_END)


# -- helpers ----------------------------------------------------------------------------


async def outcome(awaitable: Awaitable[Any], deadline: float = DEADLINE) -> Any:
    """Await one call under its own deadline; return its value or the exception it raised."""
    return await faults.outcome(awaitable, deadline)


async def outcomes(*awaitables: Awaitable[Any]) -> list[Any]:
    """Run calls concurrently (one window), each under its own deadline."""
    return list(await asyncio.gather(*(outcome(a) for a in awaitables)))


def is_user_error(result: object, fault: Fault) -> bool:
    """The user's error of ``fault``, or a headrace error chaining it."""
    expected = expected_error(fault)
    assert expected is not None
    seen: BaseException | None = result if isinstance(result, BaseException) else None
    while seen is not None:
        if isinstance(seen, expected):
            return True
        seen = seen.__cause__
    return False


def assert_user_error(result: object, fault: Fault) -> None:
    if fault is Fault.HANG:
        assert isinstance(result, TimeoutError), result
    else:
        assert is_user_error(result, fault), repr(result)


def assert_batch_idle(fn: BatchFunction[Any, Any]) -> None:
    """No bulk call in flight, no batch open or waiting, no group lane left behind."""
    stats = fn.stats()
    assert stats.in_flight == 0, stats
    core = fn._core
    state = core.per_loop.get(asyncio.get_running_loop())
    lanes = [state.lane, *state.lanes.values()]
    for lane in lanes:
        assert lane.open is None
        assert lane.in_flight == 0
        assert not lane.queue
    assert not state.lanes, state.lanes


def assert_loader_idle(loader: Loader[Any, Any]) -> None:
    """No load in flight, no batch open or waiting, no pending entry, no batch task."""
    stats = loader.stats()
    assert stats.in_flight == 0, stats
    lane = loader._per_loop.get(asyncio.get_running_loop())
    assert lane.open is None
    assert lane.in_flight == 0
    assert not lane.queue
    assert all(entry.batch is None for entry in loader._cache.values())
    assert not loader._runners


async def check_batch_next_call(fn: BatchFunction[Any, Any], expect: Callable[[Any], Any]) -> None:
    """A fresh window after the fault: every caller gets its own value."""
    got = await outcomes(fn(7), fn(8), fn(7))
    assert got == [expect(7), expect(8), expect(7)]
    assert_batch_idle(fn)


async def check_loader_next_call(loader: Loader[Any, Any]) -> None:
    loader.clear_all()
    got = await outcomes(loader.load(7), loader.load(8), loader.load_many([9, 7]))
    assert got == [70, 80, [90, 70]]
    assert_loader_idle(loader)


class Switch:
    """Arms a fault for one callback; the drivers turn it off for the next call."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.armed = True


# -- @batch: the body -------------------------------------------------------------------


async def drive_body_before_collect(fault: Fault) -> None:
    switch = Switch(fault)

    @batch
    async def get(k: int) -> list[int]:
        if switch.armed and k == 1:
            await ainject(fault, wrong=None)
            return []  # WRONG: returns without awaiting collect()
        ids = await collect(k)
        return [i * 10 for i in ids]

    got = await outcomes(get(0), get(1), get(2))
    assert got[0] == 0
    assert got[2] == 20
    if fault is Fault.WRONG:
        assert isinstance(got[1], RuntimeError)
        assert "collect" in str(got[1])
    else:
        assert_user_error(got[1], fault)
    assert_batch_idle(get)
    switch.armed = False
    await check_batch_next_call(get, lambda k: k * 10)


async def drive_body_after_collect(fault: Fault) -> None:
    switch = Switch(fault)
    sent: list[list[int]] = []

    @batch(max_concurrent=1)
    async def get(k: int) -> list[int]:
        ids = await collect(k)
        sent.append(ids)
        if switch.armed:
            return await ainject(fault, wrong=[1])  # type: ignore[no-any-return]
        return [i * 10 for i in ids]

    got = await outcomes(get(0), get(1), get(2))
    for result in got:
        if fault is Fault.WRONG:
            assert isinstance(result, BatchRoutingError)
        else:
            assert_user_error(result, fault)
    if fault is Fault.HANG:
        assert sent[0] == [0, 1, 2]  # every caller's deadline ended its wait, leader or not
    else:
        assert sent == [[0, 1, 2]]
        assert get.stats().failed_batches == 1
    assert_batch_idle(get)
    switch.armed = False
    await check_batch_next_call(get, lambda k: k * 10)


async def drive_body_finally(fault: Fault) -> None:
    """The ``finally`` of a body that coalesce closes (a follower served, a leader gone)."""
    switch = Switch(fault)

    @batch(max_wait=1.0)
    async def get(k: int) -> list[int]:
        served = False
        try:
            ids = await collect(k)
            served = True
            return [i * 10 for i in ids]
        finally:
            if switch.armed and not served and k == 1:
                if fault is Fault.WRONG:
                    return [99]  # noqa: B012 - swallows the close: the value stands
                inject(fault)

    # a follower's body is closed once its value is in: its finally runs in its own call,
    # so what it raises reaches that caller, as it would in plain Python
    got = await outcomes(get(0), get(1), get(2))
    assert got[0] == 0
    assert got[2] == 20
    if fault is Fault.WRONG:
        assert got[1] == 10
    else:
        assert_user_error(got[1], fault)
    assert_batch_idle(get)

    # the leader is cancelled in the window: its finally runs while the batch goes on
    leader = asyncio.create_task(outcome(get(1)))
    await asyncio.sleep(0)
    others = asyncio.gather(outcome(get(0)), outcome(get(2)))
    await asyncio.sleep(0.5)
    leader.cancel()
    lost = await leader
    if fault is Fault.WRONG:
        assert isinstance(lost, asyncio.CancelledError)
    else:
        assert_user_error(lost, fault)
    assert list(await others) == [0, 20]
    assert get.stats().batches == 2
    assert_batch_idle(get)
    switch.armed = False
    await check_batch_next_call(get, lambda k: k * 10)


def wrong_result_driver(
    wrong: Callable[[list[int]], object],
    check: Callable[[list[Any]], None],
    **options: Any,
) -> Callable[[Fault], Awaitable[None]]:
    async def drive(fault: Fault) -> None:
        switch = Switch(fault)

        @batch(**options)
        async def get(k: int) -> Any:
            ids = await collect(k)
            if switch.armed:
                return inject(fault, wrong=wrong(ids))
            return [i * 10 for i in ids]

        got = await outcomes(get(0), get(1), get(2))
        check(got)
        assert_batch_idle(get)
        switch.armed = False
        await check_batch_next_call(get, lambda k: k * 10)

    return drive


def every_caller(kind: type[BaseException]) -> Callable[[list[Any]], None]:
    def check(got: list[Any]) -> None:
        assert all(isinstance(r, kind) for r in got), got

    return check


def missing_key_one_caller(got: list[Any]) -> None:
    assert got[0] == 0
    assert got[2] == 20
    assert isinstance(got[1], MissingResult)
    assert got[1].key in (1, "k1")


class BadSequence(list[int]):
    """A list whose reads fail: ``__len__`` works, iterating and indexing raise."""

    def __iter__(self) -> Iterator[int]:
        raise FaultError("iteration failed")

    def __getitem__(self, index: Any) -> Any:
        raise FaultError("indexing failed")


class BadMapping(Mapping[int, int]):
    """A Mapping whose lookups raise for one key."""

    def __init__(self, data: dict[int, int], bad: int) -> None:
        self.data = data
        self.bad = bad

    def __getitem__(self, key: int) -> int:
        if key == self.bad:
            raise FaultError("lookup failed")
        return self.data[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def bad_mapping_one_caller(got: list[Any]) -> None:
    assert got[0] == 0
    assert got[2] == 20
    assert isinstance(got[1], FaultError)


# -- @batch: key, group_by, listeners ----------------------------------------------------


async def drive_batch_key(fault: Fault) -> None:
    for bad in (0, 1):  # the leader of the window, then a follower
        switch = Switch(fault)

        def key(item: int, bad: int = bad, switch: Switch = switch) -> Any:
            if switch.armed and item == bad:
                return inject(fault, wrong=[item])  # WRONG: an unhashable key
            return item

        get = batch(max_wait=0.5, max_size=10, key=key)(_tens)
        got = await outcomes(get(0), get(1), get(2))
        for item, result in enumerate(got):
            if item == bad and fault is not Fault.WRONG:
                assert_user_error(result, fault)
            else:
                assert result == item * 10  # an unhashable key: sent, never de-duplicated
        assert_batch_idle(get)
        switch.armed = False
        await check_batch_next_call(get, lambda k: k * 10)


async def _tens(k: int) -> list[int]:
    ids = await collect(k)
    return [i * 10 for i in ids]


async def drive_group_by(fault: Fault) -> None:
    switch = Switch(fault)

    def group(k: int) -> Any:
        if switch.armed and k == 1:
            return inject(fault, wrong=[k])  # WRONG: an unhashable group key
        return k % 2

    get = batch(group_by=group)(_tens)
    got = await outcomes(get(0), get(1), get(2), get(3))
    assert (got[0], got[2], got[3]) == (0, 20, 30)
    if fault is Fault.WRONG:
        assert isinstance(got[1], TypeError)
        assert "group_by" in str(got[1])
    else:
        assert_user_error(got[1], fault)
    assert_batch_idle(get)
    switch.armed = False
    await check_batch_next_call(get, lambda k: k * 10)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class capture_logs:
    """Collect the records of the ``headrace.coalesce`` logger."""

    def __enter__(self) -> Captured:
        self.handler = Captured()
        self.loggers = [logging.getLogger("headrace.coalesce")]
        for logger in self.loggers:
            logger.addHandler(self.handler)
        return self.handler

    def __exit__(self, *exc: object) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.handler)


def one_shot_listener(fault: Fault, on: str) -> Callable[[CoalesceEvent], Any]:
    fired: list[str] = []

    def listener(event: CoalesceEvent) -> Any:
        if event.kind == on and not fired:
            fired.append(event.kind)
            return inject(fault, wrong=object())
        return None

    return listener


async def drive_batch_sync_listener(fault: Fault) -> None:
    interrupt = fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)
    with capture_logs() as logs:
        # the leader's bulk call is about to start: an interrupt ends the leader only, the
        # next caller leads the batch
        get = batch(_tens)
        seen: list[str] = []
        get.add_listener(one_shot_listener(fault, "dispatched"))
        get.add_listener(lambda event: seen.append(event.kind))
        got = await outcomes(get(0), get(1), get(2))
        if interrupt:
            assert_user_error(got[0], fault)
            assert got[1:] == [10, 20]
            assert seen == ["dispatched", "handed_over", "dispatched", "completed"]
            assert get.stats().batches == 1
        else:
            assert got == [0, 10, 20]
            assert seen == ["dispatched", "completed"]
            assert bool(logs.records) is (fault is not Fault.WRONG)  # isolated and logged
        assert_batch_idle(get)

        # the results are routed: an interrupt reaches the leader, the others keep theirs
        get = batch(_tens)
        get.add_listener(one_shot_listener(fault, "completed"))
        got = await outcomes(get(0), get(1), get(2))
        if interrupt:
            assert_user_error(got[0], fault)
            assert got[1:] == [10, 20]
        else:
            assert got == [0, 10, 20]
        assert_batch_idle(get)

        # the bulk call failed: the followers keep the user's error, an interrupt reaches
        # the leader with that error as its context
        boom = FaultError("body")

        @batch
        async def failing(k: int) -> list[int]:
            await collect(k)
            raise boom

        failing.add_listener(one_shot_listener(fault, "failed"))
        got = await outcomes(failing(0), failing(1))
        assert got[1] is boom
        if interrupt:
            assert_user_error(got[0], fault)
            assert got[0].__context__ is boom
        else:
            assert got[0] is boom
        assert_batch_idle(failing)
    await check_batch_next_call(get, lambda k: k * 10)


async def drive_batch_async_listener(fault: Fault) -> None:
    get = batch(_tens)
    hold = Switch(fault)

    async def listener(event: CoalesceEvent) -> object:
        if hold.armed:
            return await ainject(fault, wrong=object())
        return None

    get.add_listener(listener)
    with capture_logs():
        assert await outcomes(get(0), get(1), get(2)) == [0, 10, 20]
        assert_batch_idle(get)
        hold.armed = False
        await check_batch_next_call(get, lambda k: k * 10)
        await _close_listeners(get, fault)


async def _close_listeners(component: Any, fault: Fault) -> None:
    """``aclose()`` awaits the async listeners; under a deadline it cancels a hung one."""
    if fault is Fault.HANG:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await component.aclose()
    else:
        await component.aclose()
    rec = component._core.rec if isinstance(component, BatchFunction) else component._rec
    assert rec.listeners.pending == 0


# -- @batch: what coalesce calls on the user's items and errors -------------------------


class Item:
    """A user item whose dunders misbehave for one value while ``switch`` is armed."""

    def __init__(self, value: int, switch: Switch, bad: str, *, collide: bool = False) -> None:
        self.value = value
        self.switch = switch
        self.bad = bad
        self.collide = collide

    def _fault(self, dunder: str, wrong: object) -> Any:
        if self.switch.armed and self.bad == dunder and self.value == 1:
            return inject(self.switch.fault, wrong=wrong)
        return None

    def __hash__(self) -> int:
        wrong = self._fault("__hash__", "not an int")
        if wrong is not None:
            return wrong  # type: ignore[no-any-return]
        return 0 if self.collide else hash(self.value)

    def __eq__(self, other: object) -> bool:
        wrong = self._fault("__eq__", NotImplemented)
        if wrong is not None:
            return wrong  # type: ignore[no-any-return]
        return isinstance(other, Item) and other.value == self.value

    def __repr__(self) -> str:
        wrong = self._fault("__repr__", 42)
        if wrong is not None:
            return wrong  # type: ignore[no-any-return]
        return f"Item({self.value})"


def own_value_or_user_error(got: list[Any], expected: list[Any], fault: Fault) -> None:
    """Each caller has its own value or the user's error; some caller has the error.

    An ``__eq__`` that raises fails the call whose item was being compared (it joined
    after the bad item), so which caller sees the error depends on the order of joins.
    """
    errors = 0
    for result, value in zip(got, expected, strict=True):
        if result != value:
            assert_user_error(result, fault)
            errors += 1
    assert errors >= (0 if fault is Fault.WRONG else 1), got


def item_driver(dunder: str, *, mapping: bool = False) -> Callable[[Fault], Awaitable[None]]:
    async def drive(fault: Fault) -> None:
        switch = Switch(fault)

        @batch
        async def get(item: Item) -> Any:
            items = await collect(item)
            if mapping:  # routed by key: item 1 is missing, so its repr is in the error
                return {i: i.value * 10 for i in items if i.value != 1}
            return [i.value * 10 for i in items]

        # one hash for items 0, 1 and 2, so == is called on them
        got = await outcomes(*(get(Item(v, switch, dunder, collide=True)) for v in range(3)))
        if mapping:
            assert got[0] == 0
            assert got[2] == 20
            assert isinstance(got[1], MissingResult)
            expected = expected_error(fault)
            if expected in INTERRUPTS:
                with pytest.raises(expected):  # the user's repr, called by the user
                    str(got[1])
            elif fault is not Fault.WRONG:
                assert "repr failed" in str(got[1])
        else:
            own_value_or_user_error(got, [0, 10, 20], fault)
        assert_batch_idle(get)
        # the first caller's item misbehaves: the window is not left without a leader
        got = await outcomes(*(get(Item(v, switch, dunder)) for v in (1, 0, 2)))
        if dunder == "__hash__":
            own_value_or_user_error(got, [10, 0, 20], fault)
        else:
            assert got[1:] == [0, 20]
        assert_batch_idle(get)
        switch.armed = False
        got = await outcomes(*(get(Item(v, switch, dunder)) for v in (3, 4)))
        assert got == [30, 40]
        assert_batch_idle(get)

    return drive


class UserError(FaultError):
    """A user's exception whose ``add_note`` and ``__repr__`` misbehave while armed."""

    switch: Switch | None = None

    def add_note(self, note: str) -> None:
        switch = type(self).switch
        if switch is not None and switch.armed:
            inject(switch.fault, wrong=None)
        super().add_note(note)

    def __repr__(self) -> str:
        switch = type(self).switch
        if switch is not None and switch.armed:
            return inject(switch.fault, wrong=42)  # type: ignore[no-any-return]
        return "UserError()"


async def drive_user_error(fault: Fault) -> None:
    """The same exception objects, raised batch after batch, reach their callers as they are."""
    switch = Switch(fault)
    UserError.switch = switch
    try:
        bulk = UserError("bulk")
        bulk.__notes__ = ["the user's own note"]
        item = UserError("item")
        item.__notes__ = ["the user's own note"]

        @batch
        async def get(k: int) -> list[object]:
            ids = await collect(k)
            if ids[0] == 0:
                raise bulk
            return [item if i == 2 else i for i in ids]

        for _ in range(3):
            got = await outcomes(get(0), get(1))
            assert got[0] is bulk
            assert got[1] is bulk
            got = await outcomes(get(1), get(2), get(3))
            assert got[0] == 1
            assert got[1] is item
            assert got[2] == 3
            assert_batch_idle(get)
        assert get.stats().failed_batches == 3

        async def load_fn(keys: list[int]) -> list[object]:
            if 0 in keys:
                raise bulk
            return [item if k == 2 else k * 10 for k in keys]

        loader: Loader[int, Any] = Loader(load_fn)
        for _ in range(3):
            got = await outcomes(loader.load(0), loader.load(1))
            assert got[0] is bulk
            assert got[1] is bulk
            got = await outcomes(loader.load(1), loader.load(2))
            assert got[0] == 10
            assert got[1] is item
            assert_loader_idle(loader)
            loader.clear_all()
        # coalesce never annotates a user's error: no note gained per run
        assert bulk.__notes__ == ["the user's own note"]
        assert item.__notes__ == ["the user's own note"]
    finally:
        UserError.switch = None


# -- Loader ------------------------------------------------------------------------------


def _loader_fn(value: Callable[[int], Any]) -> Callable[[list[int]], Awaitable[list[Any]]]:
    async def load_fn(keys: list[int]) -> list[Any]:
        return [value(k) for k in keys]

    return load_fn


async def drive_load_fn(fault: Fault) -> None:
    switch = Switch(fault)
    sent: list[list[int]] = []

    async def load_fn(keys: list[int]) -> list[int]:
        sent.append(keys)
        if switch.armed:
            return await ainject(fault, wrong=[1])  # type: ignore[no-any-return]
        return [k * 10 for k in keys]

    loader: Loader[int, int] = Loader(load_fn, max_concurrent=1)
    got = await outcomes(loader.load(0), loader.load(1), loader.load_many([2, 0]))
    for result in got:
        if fault is Fault.WRONG:
            assert isinstance(result, BatchRoutingError)
        else:
            assert_user_error(result, fault)
    assert sent == [[0, 1, 2]]
    stats = loader.stats()
    assert stats.failed_batches == (0 if fault is Fault.HANG else 1)
    assert_loader_idle(loader)
    assert not loader._cache  # a failed or abandoned load is never cached
    switch.armed = False
    await check_loader_next_call(loader)


def loader_wrong_driver(
    wrong: Callable[[list[int]], object], check: Callable[[list[Any]], None]
) -> Callable[[Fault], Awaitable[None]]:
    async def drive(fault: Fault) -> None:
        switch = Switch(fault)

        async def load_fn(keys: list[int]) -> Any:
            if switch.armed:
                return inject(fault, wrong=wrong(keys))
            return [k * 10 for k in keys]

        loader: Loader[int, int] = Loader(load_fn)
        check(await outcomes(loader.load(0), loader.load(1), loader.load(2)))
        assert_loader_idle(loader)
        switch.armed = False
        await check_loader_next_call(loader)

    return drive


async def drive_loader_key(fault: Fault) -> None:
    switch = Switch(fault)

    def key(k: int) -> Any:
        if switch.armed and k == 1:
            return inject(fault, wrong=[k])  # WRONG: an unhashable cache key
        return k

    def failed(result: object) -> None:
        if fault is Fault.WRONG:
            assert isinstance(result, TypeError)
            assert "key=" in str(result)
        else:
            assert_user_error(result, fault)

    variants: list[tuple[bool, dict[str, Any]]] = [
        (True, {}),
        (False, {}),
        (True, {"max_size": 2, "max_wait": 1.0}),
    ]
    for cache, options in variants:
        sent: list[list[int]] = []

        async def load_fn(keys: list[int], sent: list[list[int]] = sent) -> list[int]:
            sent.append(keys)
            return [k * 10 for k in keys]

        switch.armed = True
        loader: Loader[int, int] = Loader(load_fn, key=key, cache=cache, **options)
        # the first load of the window, a middle one, and a load_many: only they fail
        got = await outcomes(
            loader.load(1), loader.load(0), loader.load(1), loader.load_many([2, 1, 3])
        )
        failed(got[0])
        failed(got[2])
        failed(got[3])
        assert got[1] == 0
        assert sent == [[0]]  # nothing of the failed calls was registered
        assert_loader_idle(loader)
        # a load_many alone, whose first keys already filled a batch of their own
        got = await outcomes(loader.load_many([2, 3, 4, 1]))
        failed(got[0])
        assert sent == [[0]]
        assert_loader_idle(loader)
        for method, args in ((loader.prime, (1, 10)), (loader.clear, (1,))):
            try:
                method(*args)
            except BaseException as exc:
                failed(exc)
            else:
                raise AssertionError(f"{method.__name__} did not raise")
        switch.armed = False
        await check_loader_next_call(loader)


async def drive_load_many_keys(fault: Fault) -> None:
    switch = Switch(fault)

    def keys() -> Iterator[Any]:
        yield 0
        yield 1
        if switch.armed:
            if fault is Fault.EARLY_END:
                return
            yield inject(fault, wrong=[2])  # WRONG: an unhashable key
        yield 2

    sent: list[list[int]] = []

    async def load_fn(ks: list[int]) -> list[int]:
        sent.append(ks)
        return [k * 10 for k in ks]

    loader: Loader[int, int] = Loader(load_fn)
    # another caller's load opens the window first: it is served, and nothing of the
    # failed load_many is sent with it
    got = await outcomes(loader.load(5), loader.load_many(keys()))
    assert got[0] == 50
    if fault is Fault.EARLY_END:
        assert got[1] == [0, 10]  # the keys that were given
        assert sent == [[5, 0, 1]]
    else:
        if fault is Fault.WRONG:
            assert isinstance(got[1], TypeError)
            assert "unhashable" in str(got[1])
        else:
            assert_user_error(got[1], fault)
        assert sent == [[5]]
    assert_loader_idle(loader)
    switch.armed = False
    await check_loader_next_call(loader)


class Key:
    """A user key whose dunders misbehave for key 1 while ``switch`` is armed."""

    def __init__(self, value: int, switch: Switch, bad: str) -> None:
        self.value = value
        self.switch = switch
        self.bad = bad

    def _fault(self, dunder: str, wrong: object) -> Any:
        if self.switch.armed and self.bad == dunder and self.value == 1:
            return inject(self.switch.fault, wrong=wrong)
        return None

    def __hash__(self) -> int:
        wrong = self._fault("__hash__", "not an int")
        if wrong is not None:
            return wrong  # type: ignore[no-any-return]
        return 0  # every key collides, so == is called on them

    def __eq__(self, other: object) -> bool:
        wrong = self._fault("__eq__", NotImplemented)
        if wrong is not None:
            return wrong  # type: ignore[no-any-return]
        return isinstance(other, Key) and other.value == self.value

    def __repr__(self) -> str:
        wrong = self._fault("__repr__", 42)
        if wrong is not None:
            return wrong  # type: ignore[no-any-return]
        return f"Key({self.value})"


def key_driver(dunder: str) -> Callable[[Fault], Awaitable[None]]:
    async def drive(fault: Fault) -> None:
        switch = Switch(fault)

        async def load_fn(keys: list[Key]) -> dict[Key, int]:
            # routed by key; key 1 is missing, so its repr is in the error
            return {k: k.value * 10 for k in keys if k.value != 1}

        for cache in (True, False):
            switch.armed = True
            loader: Loader[Key, int] = Loader(load_fn, cache=cache)

            def k(v: int) -> Key:
                return Key(v, switch, dunder)

            # key 1 first (opens the window), in the middle, and inside a load_many
            got = await outcomes(
                loader.load(k(1)),
                loader.load(k(0)),
                loader.load(k(1)),
                loader.load_many([k(2), k(1)]),
            )
            if dunder == "__repr__":  # called only when the user shows the error
                assert got[1] == 0
                for result in (got[0], got[2], got[3]):
                    assert isinstance(result, MissingResult)
                expected = expected_error(fault)
                if expected in INTERRUPTS:
                    with pytest.raises(expected):
                        str(got[0])
                elif fault is not Fault.WRONG:
                    assert "repr failed" in str(got[0])
            elif fault is Fault.WRONG:  # hash() refuses a non-int; == falls back to identity
                assert got[1] == 0
                for result in (got[0], got[2], got[3]):
                    assert isinstance(result, (TypeError, MissingResult)), result
            else:
                # == is called on whichever keys meet key 1 in a dict: any of those calls
                # may fail; every other caller has its own outcome (key 1 is missing)
                assert got[1] == 0 or is_user_error(got[1], fault), got[1]
                for result in (got[0], got[2], got[3]):
                    assert isinstance(result, MissingResult) or is_user_error(result, fault)
            assert_loader_idle(loader)
            switch.armed = False
            loader.clear_all()
            got = await outcomes(loader.load(k(3)), loader.load_many([k(4), k(3)]))
            assert got == [30, [40, 30]]
            assert_loader_idle(loader)

    return drive


async def drive_loader_sync_listener(fault: Fault) -> None:
    interrupt = fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)
    with capture_logs() as logs:
        # before the load starts: an interrupt reaches the callers waiting for the batch
        # (the batch's own task has no caller); the load is not made
        sent: list[list[int]] = []

        async def load_fn(keys: list[int]) -> list[int]:
            sent.append(keys)
            return [k * 10 for k in keys]

        loader: Loader[int, int] = Loader(load_fn)
        loader.add_listener(one_shot_listener(fault, "dispatched"))
        got = await outcomes(loader.load(0), loader.load(1))
        if interrupt:
            assert all(is_user_error(r, fault) for r in got), got
            assert sent == []
            assert not loader._cache
        else:
            assert got == [0, 10]
            assert bool(logs.records) is (fault is not Fault.WRONG)
        assert_loader_idle(loader)
        await check_loader_next_call(loader)

        # after the callers were answered: isolated, an interrupt is logged
        for kind in ("completed", "failed"):
            logs.records.clear()

            async def load_or_fail(keys: list[int], kind: str = kind) -> list[int]:
                if kind == "failed" and keys[0] == 0:
                    raise FaultError("load")
                return [k * 10 for k in keys]

            loader = Loader(load_or_fail)
            loader.add_listener(one_shot_listener(fault, kind))
            got = await outcomes(loader.load(0), loader.load(1))
            if kind == "failed":
                assert all(isinstance(r, FaultError) and str(r) == "load" for r in got)
            else:
                assert got == [0, 10]
            if fault is not Fault.WRONG:
                assert logs.records
            assert_loader_idle(loader)
            await check_loader_next_call(loader)


async def drive_loader_async_listener(fault: Fault) -> None:
    loader: Loader[int, int] = Loader(_loader_fn(lambda k: k * 10))
    hold = Switch(fault)

    async def listener(event: CoalesceEvent) -> object:
        if hold.armed:
            return await ainject(fault, wrong=object())
        return None

    loader.add_listener(listener)
    with capture_logs():
        assert await outcomes(loader.load(0), loader.load(1)) == [0, 10]
        assert_loader_idle(loader)
        hold.armed = False
        await check_loader_next_call(loader)
        await _close_listeners(loader, fault)


# -- the table ---------------------------------------------------------------------------

WRONG = (Fault.WRONG,)

POINTS = [
    Point("batch.fn", ASYNC_FAULTS, drive_body_before_collect),
    Point("batch.fn.after_collect", ASYNC_FAULTS, drive_body_after_collect),
    Point("batch.fn.finally", SYNC_FAULTS, drive_body_finally),
    Point(
        "batch.fn.returns_wrong_type",
        WRONG,
        wrong_result_driver(lambda ids: 42, every_caller(BatchRoutingError)),
    ),
    Point(
        "batch.fn.returns_none",
        WRONG,
        wrong_result_driver(lambda ids: None, every_caller(BatchRoutingError)),
    ),
    Point(
        "batch.fn.returns_text",
        WRONG,
        wrong_result_driver(lambda ids: "abc", every_caller(BatchRoutingError)),
    ),
    Point(
        "batch.fn.returns_too_many",
        WRONG,
        wrong_result_driver(lambda ids: [*ids, 99], every_caller(BatchRoutingError)),
    ),
    Point(
        "batch.fn.returns_mapping_missing_key",
        WRONG,
        wrong_result_driver(lambda ids: {i: i * 10 for i in ids if i != 1}, missing_key_one_caller),
    ),
    Point(
        "batch.fn.returns_mapping_missing_key_by_key",
        WRONG,
        wrong_result_driver(
            lambda ids: {f"k{i}": i * 10 for i in ids if i != 1},
            missing_key_one_caller,
            key=lambda i: f"k{i}",
        ),
    ),
    Point(
        "batch.fn.returns_unreadable_sequence",
        WRONG,
        wrong_result_driver(lambda ids: BadSequence(ids), every_caller(FaultError)),
    ),
    Point(
        "batch.fn.returns_mapping_failing_lookup",
        WRONG,
        wrong_result_driver(
            lambda ids: BadMapping({i: i * 10 for i in ids}, bad=1), bad_mapping_one_caller
        ),
    ),
    Point("batch.key", SYNC_FAULTS, drive_batch_key),
    Point("batch.group_by", SYNC_FAULTS, drive_group_by),
    Point("BatchFunction.add_listener.callback", SYNC_FAULTS, drive_batch_sync_listener),
    Point("BatchFunction.add_listener.callback(async)", ASYNC_FAULTS, drive_batch_async_listener),
    Point("item.__hash__", SYNC_FAULTS, item_driver("__hash__")),
    Point("item.__eq__", SYNC_FAULTS, item_driver("__eq__")),
    Point("item.__repr__", SYNC_FAULTS, item_driver("__repr__", mapping=True)),
    Point("error.add_note", SYNC_FAULTS, drive_user_error, also=("error.__repr__",)),
    Point("Loader.load_fn", ASYNC_FAULTS, drive_load_fn),
    Point(
        "Loader.load_fn.returns_wrong_type",
        WRONG,
        loader_wrong_driver(lambda keys: 42, every_caller(BatchRoutingError)),
    ),
    Point(
        "Loader.load_fn.returns_none",
        WRONG,
        loader_wrong_driver(lambda keys: None, every_caller(BatchRoutingError)),
    ),
    Point(
        "Loader.load_fn.returns_mapping_missing_key",
        WRONG,
        loader_wrong_driver(
            lambda keys: {k: k * 10 for k in keys if k != 1}, missing_key_one_caller
        ),
    ),
    Point(
        "Loader.load_fn.returns_unreadable_sequence",
        WRONG,
        loader_wrong_driver(lambda keys: BadSequence(keys), every_caller(FaultError)),
    ),
    Point(
        "Loader.load_fn.returns_mapping_failing_lookup",
        WRONG,
        loader_wrong_driver(
            lambda keys: BadMapping({k: k * 10 for k in keys}, bad=1), bad_mapping_one_caller
        ),
    ),
    Point("Loader.key", SYNC_FAULTS, drive_loader_key),
    Point("Loader.load_many.keys", ITERABLE_FAULTS, drive_load_many_keys),
    Point("key.__hash__", SYNC_FAULTS, key_driver("__hash__")),
    Point("key.__eq__", SYNC_FAULTS, key_driver("__eq__")),
    Point("key.__repr__", SYNC_FAULTS, key_driver("__repr__")),
    Point("Loader.add_listener.callback", SYNC_FAULTS, drive_loader_sync_listener),
    Point("Loader.add_listener.callback(async)", ASYNC_FAULTS, drive_loader_async_listener),
]


def test_every_callable_parameter_is_in_the_table() -> None:
    assert missing_points(headrace_coalesce, POINTS) == []


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float) -> None:
    run_injection(point.drive, fault, start=start)
