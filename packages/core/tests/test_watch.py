"""``Deadlines``: one loop timer for many same-length deadlines, each its own asyncio.Timeout."""

import asyncio
from typing import Any

import pytest

from headrace_core._watch import Deadlines
from headrace_core.testing import VirtualClock


class Call:
    """One call under a deadline: its ``asyncio.Timeout`` and, once added, its entry."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.scope = asyncio.Timeout(None)
        self.entry: list[Any] = []


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


async def bounded(deadlines: Deadlines[Call], call: Call, seconds: float) -> str:
    """Sleep ``seconds`` under the deadline of ``call``; 'ok' or 'timeout'."""
    call.entry = deadlines.add(call.scope, call)
    try:
        async with call.scope:
            await asyncio.sleep(seconds)
    except TimeoutError:
        return "timeout"
    finally:
        deadlines.done(call.entry)
    return "ok"


def names(expired: list[list[Any]]) -> list[str]:
    return [entry[2].name for entry in expired]


@pytest.mark.virtual_clock
async def test_many_calls_share_one_timer_and_only_the_late_ones_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expired: list[list[Any]] = []
    deadlines: Deadlines[Call] = Deadlines(asyncio.get_running_loop(), 5.0, expired.append)
    timers = Timers(monkeypatch, deadlines)
    durations = {f"c{i}": d for i, d in enumerate([1, 7, 2, 9, 4.9, 5.1, 0, 3])}
    calls = [Call(name) for name in durations]
    results = await asyncio.gather(
        *(bounded(deadlines, call, durations[call.name]) for call in calls)
    )
    outcome = dict(zip(durations, results, strict=True))
    assert outcome == {n: "timeout" if d > 5 else "ok" for n, d in durations.items()}
    assert names(expired) == ["c1", "c3", "c5"]  # in deadline (= add) order
    assert timers.count == 1  # one timer for eight deadlines
    assert not deadlines.entries
    for call in calls:  # an expired entry has no deadline left; every entry is done
        assert call.entry[0] is None if durations[call.name] > 5 else call.entry[0] is not None
        assert call.entry[1] is None
        assert call.entry[2] is call


async def test_add_returns_the_entry_it_watches() -> None:
    with VirtualClock() as clock:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop(), 2.0)
        scope = asyncio.Timeout(None)
        entry = deadlines.add(scope, "owner")
        assert entry == [clock.now() + 2.0, scope, "owner"]
        assert list(deadlines.entries) == [entry]
        handle = timer(deadlines)
        assert handle is not None
        assert handle.when() == entry[0]
        deadlines.done(entry)
        assert entry[1] is None
        assert not deadlines.entries
        assert timer(deadlines) is handle  # kept for a later deadline
        deadlines.close()


async def test_a_deadline_expires_at_its_own_time_after_earlier_ones_ended() -> None:
    with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[Call] = Deadlines(loop, 10.0)
        start = clock.now()
        assert await bounded(deadlines, Call(), 1) == "ok"
        await asyncio.sleep(2)  # the timer still waits for the first deadline (start + 10)
        late = Call()
        assert await bounded(deadlines, late, 100) == "timeout"
        assert late.scope.when() == start + 13  # rescheduled to the time it expired
        assert clock.now() == start + 13  # re-armed for it, not expired at start + 10
        assert late.entry[0] is None
        assert late.entry[1] is None


async def test_expired_scope_is_asyncio_own_timeout_with_its_bookkeeping() -> None:
    with VirtualClock():
        deadlines: Deadlines[Call] = Deadlines(asyncio.get_running_loop(), 1.0)
        call = Call()
        task = asyncio.current_task()
        assert task is not None
        assert await bounded(deadlines, call, 5) == "timeout"
        assert call.scope.expired()
        assert task.cancelling() == 0  # asyncio's Timeout took its cancel back


async def test_callers_cancel_wins_and_the_deadline_is_dropped() -> None:
    expired: list[list[Any]] = []
    with VirtualClock() as clock:
        deadlines: Deadlines[Call] = Deadlines(asyncio.get_running_loop(), 10.0, expired.append)
        call = Call()
        task = asyncio.create_task(bounded(deadlines, call, 100))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelling() == 1
        await asyncio.sleep(20)  # past the deadline: nothing is left to expire
        assert clock.now() >= 21
    assert expired == []
    assert call.entry[1] is None
    assert call.entry[0] is not None  # it never expired
    assert not deadlines.entries


@pytest.mark.parametrize("cancel_first", [False, True])
async def test_caller_cancel_in_the_iteration_of_the_deadline_still_wins(
    cancel_first: bool,
) -> None:
    with VirtualClock():
        loop = asyncio.get_running_loop()
        task: asyncio.Task[str] | None = None

        def on_expire(entry: list[Any]) -> None:
            if not cancel_first:
                assert task is not None
                task.cancel()  # right after the deadline rescheduled the scope

        deadlines: Deadlines[Call] = Deadlines(loop, 1.0, on_expire)
        if cancel_first:
            # Armed before the deadline's timer, due at the same time: runs just before it.
            loop.call_at(loop.time() + 1.0, lambda: task is not None and task.cancel())
        task = asyncio.create_task(bounded(deadlines, Call(), 5))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelling() == 1


async def test_own_timeout_error_of_the_call_is_not_an_expiry() -> None:
    mine = TimeoutError("the call's own")

    async def raising(deadlines: Deadlines[None], scope: asyncio.Timeout) -> None:
        entry = deadlines.add(scope, None)
        try:
            async with scope:
                raise mine
        finally:
            deadlines.done(entry)

    with VirtualClock():
        deadlines: Deadlines[None] = Deadlines(asyncio.get_running_loop(), 5.0)
        scope = asyncio.Timeout(None)
        with pytest.raises(TimeoutError) as info:
            await raising(deadlines, scope)
        assert info.value is mine
        assert not scope.expired()
        assert not deadlines.entries


async def test_a_scope_already_left_is_skipped() -> None:
    # done() not called (a caller's bug): the timer finds the scope exited and moves on.
    expired: list[list[Any]] = []
    with VirtualClock():
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[Call] = Deadlines(loop, 1.0, expired.append)
        left = Call()
        left.entry = deadlines.add(left.scope, left)
        async with left.scope:
            pass
        other = Call()
        assert await bounded(deadlines, other, 5) == "timeout"
    assert expired == [other.entry]
    assert left.entry[0] is not None  # not rescheduled: it did not expire
    assert not deadlines.entries


async def test_close_cancels_the_idle_timer_but_keeps_a_live_one() -> None:
    with VirtualClock():
        deadlines: Deadlines[Call] = Deadlines(asyncio.get_running_loop(), 5.0)
        assert await bounded(deadlines, Call(), 1) == "ok"
        handle = deadlines.handle
        assert handle is not None
        deadlines.close()
        assert handle.cancelled()
        assert deadlines.handle is None
        deadlines.close()  # idempotent

        task = asyncio.create_task(bounded(deadlines, Call(), 100))
        await asyncio.sleep(0)
        deadlines.close()  # a deadline is live: the timer stays
        assert timer(deadlines) is not None
        assert await task == "timeout"


async def test_exactly_at_the_deadline_one_outcome_each() -> None:
    # A call finishing in the very iteration of its deadline: asyncio decides by callback
    # order (as with asyncio.timeout). Each call gets exactly one outcome, none is lost.
    with VirtualClock():
        deadlines: Deadlines[Call] = Deadlines(asyncio.get_running_loop(), 5.0)
        calls = [Call() for _ in range(6)]
        results = await asyncio.gather(*(bounded(deadlines, call, 5) for call in calls))
    assert set(results) <= {"ok", "timeout"}
    assert len(results) == 6
    assert not deadlines.entries
    for call, result in zip(calls, results, strict=True):
        # Only an entry that was rescheduled can have expired.
        assert result == "ok" or call.entry[0] is None


async def test_nested_deadlines_of_one_task_expire_innermost_first() -> None:
    with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        outer_d: Deadlines[None] = Deadlines(loop, 3.0)
        inner_d: Deadlines[Call] = Deadlines(loop, 1.0)
        start = clock.now()

        async def inner() -> str:
            return await bounded(inner_d, Call(), 10)

        scope = asyncio.Timeout(None)
        entry = outer_d.add(scope, None)
        try:
            async with scope:
                assert await inner() == "timeout"
                assert clock.now() == start + 1
                await asyncio.sleep(10)
        except TimeoutError:
            pass
        finally:
            outer_d.done(entry)
        assert scope.expired()
        assert clock.now() == start + 3


async def test_a_task_scope_is_cancelled_at_its_deadline_and_an_ended_one_skipped() -> None:
    # A task whose whole body is the call may be its own scope: cancel() at the deadline.
    expired: list[list[Any]] = []
    with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[str] = Deadlines(loop, 2.0, expired.append)
        slow = loop.create_task(asyncio.sleep(10))
        quick = loop.create_task(asyncio.sleep(1))
        slow_entry = deadlines.add(slow, "slow")
        quick_entry = deadlines.add(quick, "quick")  # never done(): it ends by itself
        start = clock.now()
        await asyncio.gather(slow, quick, return_exceptions=True)
        assert clock.now() == start + 2
        deadlines.done(slow_entry)
    assert slow.cancelled()
    assert slow.cancelling() == 1  # the deadline's cancel alone: it owes no uncancel()
    assert not quick.cancelled()
    assert expired == [slow_entry]
    assert slow_entry[0] is None
    assert quick_entry[0] is not None  # due and popped, but its task had ended: not expired
    assert not deadlines.entries
