import asyncio
import gc
import logging
import warnings
from collections.abc import Callable

import pytest

from headrace_core import ConfigurationTypeError
from headrace_core.stats import Listeners


def test_sync_listeners_fire_in_order_once() -> None:
    seen: list[tuple[str, int]] = []
    listeners: Listeners[int] = Listeners("headrace.test", "thing 'a'")
    listeners.add(lambda e: seen.append(("a", e)))
    listeners.add(lambda e: seen.append(("b", e)))
    listeners.emit(1)
    assert seen == [("a", 1), ("b", 1)]
    assert bool(listeners)
    assert len(listeners) == 2


def test_remove_is_idempotent() -> None:
    seen: list[int] = []
    listeners: Listeners[int] = Listeners("headrace.test")
    remove = listeners.add(seen.append)
    assert listeners.active
    remove()
    remove()
    listeners.emit(1)
    assert seen == []
    assert not listeners
    assert not listeners.active


def test_failing_listener_is_logged_and_isolated(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    listeners: Listeners[int] = Listeners("headrace.test", "breaker 'db'")

    def boom(event: int) -> None:
        raise RuntimeError("listener bug")

    listeners.add(boom)
    listeners.add(seen.append)
    with caplog.at_level(logging.ERROR, logger="headrace.test"):
        listeners.emit(7)
    assert seen == [7]
    record = caplog.records[0]
    assert record.name == "headrace.test"
    assert "breaker 'db'" in record.getMessage()
    assert record.exc_info is not None


def test_non_callable_is_rejected() -> None:
    listeners: Listeners[int] = Listeners("headrace.test")
    with pytest.raises(TypeError):
        listeners.add(3)  # type: ignore[arg-type]


async def test_async_listeners_are_tracked_and_awaited() -> None:
    seen: list[int] = []
    gate = asyncio.Event()
    listeners: Listeners[int] = Listeners("headrace.test")

    async def slow(event: int) -> None:
        await gate.wait()
        seen.append(event)

    listeners.add(slow)
    listeners.emit(1)
    assert listeners.pending == 1
    gate.set()
    await listeners.aclose()
    assert seen == [1]
    assert listeners.pending == 0


async def test_aclose_cancels_listeners_past_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled = asyncio.Event()
    listeners: Listeners[int] = Listeners("headrace.test")

    async def hang(event: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    listeners.add(hang)
    listeners.emit(1)
    await asyncio.sleep(0)
    await listeners.aclose(timeout=0)
    assert cancelled.is_set()
    assert listeners.pending == 0


async def test_async_listener_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    listeners: Listeners[int] = Listeners("headrace.test", "x")

    async def boom(event: int) -> None:
        raise ValueError("async bug")

    listeners.add(boom)
    with caplog.at_level(logging.ERROR, logger="headrace.test"):
        listeners.emit(1)
        await listeners.aclose()
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_async_listener_without_loop_is_closed_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listeners: Listeners[int] = Listeners("headrace.test")

    async def later(event: int) -> None:
        pass

    listeners.add(later)
    with caplog.at_level(logging.ERROR, logger="headrace.test"):
        listeners.emit(1)
    assert "running event loop" in caplog.records[0].getMessage()


def test_listener_may_add_and_remove_listeners_while_firing() -> None:
    seen: list[str] = []
    listeners: Listeners[int] = Listeners("headrace.test")
    removers: list[Callable[[], None]] = []

    def first(event: int) -> None:
        seen.append("first")
        removers[0]()
        listeners.add(lambda e: seen.append("late"))

    removers.append(listeners.add(first))
    listeners.add(lambda e: seen.append("second"))
    listeners.emit(1)
    assert seen == ["first", "second"]
    listeners.emit(2)
    assert seen == ["first", "second", "second", "late"]


def test_a_listener_whose_repr_raises_is_logged_by_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("repr")

        def __call__(self, event: int) -> None:
            raise ValueError("boom")

    listeners: Listeners[int] = Listeners("headrace.core", "test")
    listeners.add(Hostile())
    with caplog.at_level(logging.ERROR, logger="headrace.core"):
        listeners.emit(1)
    assert "listener" in caplog.text
    assert "Hostile" in caplog.text
    assert "boom" in caplog.text


async def test_finish_tasks_cancels_the_late_ones_and_leaves_none_pending() -> None:
    from headrace_core.lowlevel import finish_tasks
    from headrace_core.testing import VirtualClock

    with VirtualClock():
        quick = asyncio.ensure_future(asyncio.sleep(1))
        late = asyncio.ensure_future(asyncio.sleep(100))
        await finish_tasks([quick, late], timeout=5)
        assert quick.done()
        assert not quick.cancelled()
        assert late.cancelled()
        stuck = asyncio.ensure_future(asyncio.sleep(100))
        closer = asyncio.ensure_future(finish_tasks([stuck], timeout=None))
        await asyncio.sleep(1)
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        assert stuck.cancelled()


async def test_an_async_listener_task_cancelled_before_it_ran_closes_the_listener() -> None:
    ran: list[int] = []

    async def listener(event: int) -> None:
        ran.append(event)

    listeners: Listeners[int] = Listeners("headrace.test")
    listeners.add(listener)
    before = asyncio.all_tasks()
    listeners.emit(1)
    (task,) = asyncio.all_tasks() - before
    task.cancel()  # a sweep over all_tasks(), before the listener's task ever ran
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" fails the test
        await asyncio.gather(task, return_exceptions=True)
        gc.collect()
    assert task.cancelled()
    assert ran == []
    assert not listeners._tasks
    listeners.emit(2)  # later events still reach it
    await listeners.aclose()
    assert ran == [2]


async def test_an_async_listener_that_closes_its_listeners_does_not_wait_for_itself() -> None:
    closed: list[str] = []
    listeners: Listeners[int] = Listeners("headrace.test")

    async def closer(event: int) -> None:
        await listeners.aclose()  # what a listener closing its own component does
        closed.append("listener")

    listeners.add(closer)
    listeners.emit(1)
    outside = asyncio.ensure_future(listeners.aclose())
    for _ in range(10):  # bounded: a regression fails here instead of hanging
        await asyncio.sleep(0)
    done = outside.done()
    outside.cancel()
    await asyncio.gather(outside, return_exceptions=True)
    assert done
    assert closed == ["listener"]
    assert not listeners._tasks


def test_a_non_callable_listener_is_a_configuration_type_error_that_never_calls_repr() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("repr")

    listeners: Listeners[int] = Listeners("headrace.test")
    with pytest.raises(ConfigurationTypeError, match=r"callback=<.*Hostile object") as info:
        listeners.add(Hostile())  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert info.value.argument == "callback"
    with pytest.raises(ConfigurationTypeError, match="callback=42: a listener must be callable"):
        listeners.add(42)  # type: ignore[arg-type]
