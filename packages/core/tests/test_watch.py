"""``Deadlines``: one loop timer for many same-length deadlines, each its own asyncio.Timeout."""

import asyncio
from typing import Any

import pytest

from headrace_core._watch import Deadlines, Watched
from headrace_core.testing import VirtualClock


class Owned(Watched):
    __slots__ = ("name",)

    def __init__(self, scope: asyncio.Timeout, name: str) -> None:
        super().__init__(scope)
        self.name = name


class Timers:
    """Counts the timers a ``Deadlines`` arms on the running loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, deadlines: Deadlines[Any]) -> None:
        self.count = 0
        loop = asyncio.get_running_loop()
        real = loop.call_at

        def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            if callback == deadlines.fire:
                self.count += 1
            return real(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", call_at)


def timer(deadlines: Deadlines[Any]) -> asyncio.TimerHandle | None:
    return deadlines.handle


async def bounded(deadlines: Deadlines[Any], watched: Watched, seconds: float) -> str:
    """Sleep ``seconds`` under the deadline of ``watched``; 'ok' or 'timeout'."""
    scope = watched.scope
    assert scope is not None
    deadlines.add(watched)
    try:
        async with scope:
            await asyncio.sleep(seconds)
    except TimeoutError:
        return "timeout"
    finally:
        deadlines.done(watched)
    return "ok"


@pytest.mark.virtual_clock
async def test_many_calls_share_one_timer_and_only_the_late_ones_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expired: list[str] = []
    deadlines: Deadlines[Owned] = Deadlines(
        asyncio.get_running_loop(), 5.0, lambda w: expired.append(w.name)
    )
    timers = Timers(monkeypatch, deadlines)
    durations = {f"c{i}": d for i, d in enumerate([1, 7, 2, 9, 4.9, 5.1, 0, 3])}
    results = await asyncio.gather(
        *(
            bounded(deadlines, Owned(asyncio.Timeout(None), name), seconds)
            for name, seconds in durations.items()
        )
    )
    outcome = dict(zip(durations, results, strict=True))
    assert outcome == {n: "timeout" if d > 5 else "ok" for n, d in durations.items()}
    assert expired == ["c1", "c3", "c5"]  # in deadline (= add) order
    assert timers.count == 1  # one timer for eight deadlines
    assert not deadlines.entries


async def test_a_deadline_expires_at_its_own_time_after_earlier_ones_ended() -> None:
    with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[Watched] = Deadlines(loop, 10.0)
        start = clock.now()
        assert await bounded(deadlines, Watched(asyncio.Timeout(None)), 1) == "ok"
        await asyncio.sleep(2)  # the timer still waits for the first deadline (start + 10)
        late = Watched(asyncio.Timeout(None))
        assert await bounded(deadlines, late, 100) == "timeout"
        assert late.when == start + 13
        assert clock.now() == start + 13  # re-armed for it, not expired at start + 10
        assert late.scope is None


async def test_expired_scope_is_asyncio_own_timeout_with_its_bookkeeping() -> None:
    with VirtualClock():
        deadlines: Deadlines[Watched] = Deadlines(asyncio.get_running_loop(), 1.0)
        scope = asyncio.Timeout(None)
        watched = Watched(scope)
        task = asyncio.current_task()
        assert task is not None
        assert await bounded(deadlines, watched, 5) == "timeout"
        assert scope.expired()
        assert task.cancelling() == 0  # asyncio's Timeout took its cancel back


async def test_callers_cancel_wins_and_the_deadline_is_dropped() -> None:
    expired: list[Watched] = []
    with VirtualClock() as clock:
        deadlines: Deadlines[Watched] = Deadlines(asyncio.get_running_loop(), 10.0, expired.append)
        watched = Watched(asyncio.Timeout(None))
        task = asyncio.create_task(bounded(deadlines, watched, 100))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelling() == 1
        await asyncio.sleep(20)  # past the deadline: nothing is left to expire
        assert clock.now() >= 21
    assert expired == []
    assert watched.scope is None
    assert not deadlines.entries


@pytest.mark.parametrize("cancel_first", [False, True])
async def test_caller_cancel_in_the_iteration_of_the_deadline_still_wins(
    cancel_first: bool,
) -> None:
    with VirtualClock():
        loop = asyncio.get_running_loop()
        task: asyncio.Task[str] | None = None

        def on_expire(watched: Watched) -> None:
            if not cancel_first:
                assert task is not None
                task.cancel()  # right after the deadline rescheduled the scope

        deadlines: Deadlines[Watched] = Deadlines(loop, 1.0, on_expire)
        if cancel_first:
            # Armed before the deadline's timer, due at the same time: runs just before it.
            loop.call_at(loop.time() + 1.0, lambda: task is not None and task.cancel())
        task = asyncio.create_task(bounded(deadlines, Watched(asyncio.Timeout(None)), 5))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelling() == 1


async def test_own_timeout_error_of_the_call_is_not_an_expiry() -> None:
    mine = TimeoutError("the call's own")

    async def raising(deadlines: Deadlines[Watched], watched: Watched) -> None:
        scope = watched.scope
        assert scope is not None
        deadlines.add(watched)
        try:
            async with scope:
                raise mine
        finally:
            deadlines.done(watched)

    with VirtualClock():
        deadlines: Deadlines[Watched] = Deadlines(asyncio.get_running_loop(), 5.0)
        scope = asyncio.Timeout(None)
        with pytest.raises(TimeoutError) as info:
            await raising(deadlines, Watched(scope))
        assert info.value is mine
        assert not scope.expired()
        assert not deadlines.entries


async def test_a_scope_already_left_is_skipped() -> None:
    # done() not called (a caller's bug): the timer finds the scope exited and moves on.
    expired: list[Watched] = []
    with VirtualClock():
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[Watched] = Deadlines(loop, 1.0, expired.append)
        left = Watched(asyncio.Timeout(None))
        assert left.scope is not None
        deadlines.add(left)
        async with left.scope:
            pass
        other = Watched(asyncio.Timeout(None))
        assert await bounded(deadlines, other, 5) == "timeout"
    assert expired == [other]
    assert not deadlines.entries


async def test_close_cancels_the_idle_timer_but_keeps_a_live_one() -> None:
    with VirtualClock():
        deadlines: Deadlines[Watched] = Deadlines(asyncio.get_running_loop(), 5.0)
        assert await bounded(deadlines, Watched(asyncio.Timeout(None)), 1) == "ok"
        handle = deadlines.handle
        assert handle is not None
        deadlines.close()
        assert handle.cancelled()
        assert deadlines.handle is None
        deadlines.close()  # idempotent

        watched = Watched(asyncio.Timeout(None))
        task = asyncio.create_task(bounded(deadlines, watched, 100))
        await asyncio.sleep(0)
        deadlines.close()  # a deadline is live: the timer stays
        assert timer(deadlines) is not None
        assert await task == "timeout"


async def test_exactly_at_the_deadline_one_outcome_each() -> None:
    # A call finishing in the very iteration of its deadline: asyncio decides by callback
    # order (as with asyncio.timeout). Each call gets exactly one outcome, none is lost.
    with VirtualClock():
        deadlines: Deadlines[Watched] = Deadlines(asyncio.get_running_loop(), 5.0)
        results = await asyncio.gather(
            *(bounded(deadlines, Watched(asyncio.Timeout(None)), 5) for _ in range(6))
        )
    assert set(results) <= {"ok", "timeout"}
    assert len(results) == 6
    assert not deadlines.entries


async def test_nested_deadlines_of_one_task_expire_innermost_first() -> None:
    with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        outer_d: Deadlines[Watched] = Deadlines(loop, 3.0)
        inner_d: Deadlines[Watched] = Deadlines(loop, 1.0)
        start = clock.now()

        async def inner() -> str:
            return await bounded(inner_d, Watched(asyncio.Timeout(None)), 10)

        outer = Watched(asyncio.Timeout(None))
        scope = outer.scope
        assert scope is not None
        outer_d.add(outer)
        try:
            async with scope:
                assert await inner() == "timeout"
                assert clock.now() == start + 1
                await asyncio.sleep(10)
        except TimeoutError:
            pass
        finally:
            outer_d.done(outer)
        assert scope.expired()
        assert clock.now() == start + 3
