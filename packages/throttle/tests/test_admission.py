"""Admission on its own: FIFO queue, concurrency gate, pacing, pauses, budgets, close, loops."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import RequestBudget, Slot, Throttle, ThrottleEvent, TokenBudget
from headrace_throttle._admission import Admission, Pacing
from headrace_throttle._budget import Budget, LocalBudgets
from headrace_throttle._types import Events


def make(
    limit: int = 1,
    *,
    interval: float = 0.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    budgets: Sequence[Budget] = (),
    timed: bool = False,
    events: Events | None = None,
) -> Admission:
    admission = Admission(
        limit=limit,
        timed=timed,
        pacing=Pacing(interval, jitter, rng, "throttle 'test'"),
        budgets=LocalBudgets(tuple(budgets)) if budgets else None,
        events=events or Events("test"),
        owner="Throttle('test')",
    )
    admission.bind(asyncio.get_running_loop())
    return admission


def admit_now(admission: Admission, tokens: int = 0) -> Slot:
    slot = Slot(tokens)
    assert admission.admit(slot) is None, "expected an admission at once"
    return slot


def release(admission: Admission) -> None:
    admission.release()
    admission.dispatch()


async def enter(admission: Admission, slot: Slot) -> None:
    turn = admission.admit(slot)
    if turn is not None:
        await admission.wait(turn, slot)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# -- the gate and the queue ---------------------------------------------------------------


async def test_a_free_slot_admits_at_once_and_stamps_epoch_and_first_start() -> None:
    with VirtualClock(start=5.0):
        admission = make(limit=2)
        first = admit_now(admission)
        assert admission.in_flight == 1
        assert first._epoch == 0
        assert first._start == 5.0
        assert admission.first_admit == 5.0
        second = admit_now(admission)
        assert admission.in_flight == 2
        # Not timed (AIMD): only the first admission reads the clock.
        assert not hasattr(second, "_start")
        assert admission.admit(Slot()) is not None  # full: the third one queues
        assert admission.waiting == 1
        admission.close(lambda: RuntimeError("closed"))


async def test_a_latency_limit_stamps_every_start() -> None:
    with VirtualClock(start=0.0) as clock:
        admission = make(limit=2, timed=True)
        admit_now(admission)
        await clock.advance(2.0)
        later = admit_now(admission)
        assert later._start == 2.0


async def test_admission_is_strict_fifo_and_one_release_admits_one_waiter() -> None:
    admission = make(limit=1)
    admit_now(admission)
    slots = [Slot() for _ in range(3)]
    turns = [admission.admit(slot) for slot in slots]
    assert all(turn is not None for turn in turns)
    assert admission.waiting == 3
    order: list[int] = []
    for expected in range(3):
        release(admission)
        done = [i for i, turn in enumerate(turns) if turn is not None and turn.done()]
        assert done == list(range(expected + 1))  # exactly one more, the head
        order.append(done[-1])
        assert admission.in_flight == 1
    assert order == [0, 1, 2]
    assert admission.waiting == 0
    release(admission)
    assert admission.in_flight == 0


async def test_a_newcomer_never_passes_a_queued_caller() -> None:
    with VirtualClock(start=0.0):
        admission = make(limit=1, interval=10.0)
        admit_now(admission)
        release(admission)
        # A slot is free but the gap is not over: the first caller queues...
        early = asyncio.create_task(enter(admission, Slot()))
        await settle()
        assert admission.waiting == 1
        # ... and a second one queues behind it although nothing else is in flight.
        late = Slot()
        turn = admission.admit(late)
        assert turn is not None
        await early
        assert admission.in_flight == 1
        assert not turn.done()
        release(admission)
        await admission.wait(turn, late)
        assert late._start == 20.0


async def test_a_caller_cancelled_while_queued_holds_nothing() -> None:
    admission = make(limit=1)
    admit_now(admission)
    admitted: list[str] = []

    async def caller(label: str) -> None:
        await enter(admission, Slot())
        admitted.append(label)

    cancelled = asyncio.create_task(caller("cancelled"))
    patient = asyncio.create_task(caller("patient"))
    await settle()
    assert admission.waiting == 2
    cancelled.cancel()
    await settle()
    assert cancelled.cancelled()
    assert admission.waiting == 1
    assert admission.in_flight == 1
    release(admission)
    await patient
    assert admitted == ["patient"]
    assert admission.in_flight == 1
    assert admission.waiting == 0
    assert not admission.queue  # the cancelled entry was skipped and dropped


async def test_admitted_then_cancelled_before_running_is_released_once_and_refunded() -> None:
    with VirtualClock(start=0.0) as clock:
        rpm, tpm = RequestBudget(10, 60.0), TokenBudget(100, 60.0)
        admission = make(limit=1, budgets=[rpm, tpm])
        admit_now(admission, tokens=10)
        waiter = asyncio.create_task(enter(admission, Slot(30)))
        await settle()
        assert admission.waiting == 1
        release(admission)  # the waiter is admitted (and charged) here...
        assert admission.in_flight == 1
        assert tpm.used(clock.now()) == 40
        waiter.cancel()  # ... and cancelled before it could run
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()
        assert admission.in_flight == 0  # released once, not twice
        assert tpm.used(clock.now()) == 10  # its estimate went back; the first call's stays
        assert rpm.used(clock.now()) == 1
        admit_now(admission)  # the slot is really free
        assert admission.in_flight == 1


async def test_a_lower_limit_is_enforced_as_calls_finish_without_cancelling() -> None:
    admission = make(limit=3)
    for _ in range(3):
        admit_now(admission)
    admission.retune(1, 0.0, congestion=True)
    assert admission.epoch == 1
    assert admission.in_flight == 3  # running calls go on
    slot = Slot()
    turn = admission.admit(slot)
    assert turn is not None
    release(admission)
    release(admission)
    assert not turn.done()  # two in flight, limit one
    release(admission)
    assert turn.done()
    assert slot._epoch == 1
    await admission.wait(turn, slot)


async def test_a_grown_limit_admits_waiters_at_once() -> None:
    admission = make(limit=1)
    admit_now(admission)
    turns = [admission.admit(Slot()) for _ in range(3)]
    admission.retune(3, 0.0, congestion=False)
    assert [turn is not None and turn.done() for turn in turns] == [True, True, False]
    assert admission.in_flight == 3
    assert admission.epoch == 0
    admission.close(lambda: RuntimeError("closed"))
    last = turns[2]
    assert last is not None
    assert isinstance(last.exception(), RuntimeError)


# -- pacing and pauses ----------------------------------------------------------------------


async def test_pacing_spaces_starts_exactly_one_interval_apart() -> None:
    with VirtualClock(start=1e6) as clock:
        admission = make(limit=5, interval=0.5)
        starts: list[float] = []

        async def caller() -> None:
            await enter(admission, Slot())
            starts.append(clock.now() - 1e6)

        await asyncio.gather(*(caller() for _ in range(4)))
        assert starts == [0.0, 0.5, 1.0, 1.5]


async def test_jitter_draws_each_gap_within_its_bounds() -> None:
    with VirtualClock(start=0.0) as clock:
        admission = make(limit=10, interval=1.0, jitter=0.5, rng=random.Random(7))
        starts: list[float] = []

        async def caller() -> None:
            await enter(admission, Slot())
            starts.append(clock.now())

        await asyncio.gather(*(caller() for _ in range(6)))
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(0.5 - 1e-9 <= gap <= 1.0 + 1e-9 for gap in gaps), gaps
        assert len(set(gaps)) > 1  # drawn, not constant


async def test_a_pause_holds_admissions_until_it_ends_and_is_never_shortened() -> None:
    with VirtualClock(start=0.0) as clock:
        events = Events("test")
        seen: list[ThrottleEvent] = []
        events.listeners.add(seen.append)
        admission = make(limit=4, events=events)
        admission.pause(5.0, "hold")
        admission.pause(2.0, "hold")  # shorter: ignored
        assert admission.paused_until(clock.now()) == 5.0
        assert not admission.simple
        await enter(admission, Slot())
        assert clock.now() == 5.0
        assert [(e.kind, e.at) for e in seen] == [("paused", 0.0), ("resumed", 5.0)]
        assert admission.paused_until(clock.now()) is None
        assert admission.simple  # no gate left: back to the clockless path


async def test_a_pause_that_ends_with_callers_queued_resumes_at_its_end() -> None:
    with VirtualClock(start=0.0) as clock:
        events = Events("test")
        seen: list[ThrottleEvent] = []
        events.listeners.add(seen.append)
        rpm = RequestBudget(1, 100.0)
        admission = make(limit=4, budgets=[rpm], events=events)
        admit_now(admission)  # the request budget is spent until t=100
        waiter = asyncio.create_task(enter(admission, Slot()))
        await settle()
        admission.pause(5.0, "hold")
        await clock.advance(6.0)
        # The pause ended at 5 while the head still waits for the budget.
        assert [(e.kind, e.at) for e in seen] == [("paused", 0.0), ("resumed", 5.0)]
        assert not waiter.done()
        await waiter
        assert clock.now() == 100.0


async def test_an_interrupt_from_a_resumed_listener_reaches_the_waiter_being_admitted() -> None:
    with VirtualClock(start=0.0):
        events = Events("test")

        def listener(event: ThrottleEvent) -> None:
            if event.kind == "resumed":
                raise KeyboardInterrupt

        events.listeners.add(listener)
        admission = make(limit=2, events=events)
        admission.pause(1.0, "hold")
        outcomes: list[str] = []

        async def caller(label: str) -> None:
            try:
                await enter(admission, Slot())
            except KeyboardInterrupt:
                outcomes.append(f"{label} interrupted")
            else:
                outcomes.append(f"{label} admitted")

        await asyncio.gather(caller("head"), caller("next"))
        assert outcomes == ["head interrupted", "next admitted"]
        assert admission.in_flight == 1  # the interrupted one holds nothing
        assert admission.waiting == 0


# -- budgets as a gate ------------------------------------------------------------------------


async def test_budgets_gate_admission_and_the_timer_wakes_the_head() -> None:
    with VirtualClock(start=0.0) as clock:
        tpm = TokenBudget(100, 10.0)
        admission = make(limit=4, budgets=[tpm])
        admit_now(admission, tokens=80)
        big = Slot(50)
        turn = admission.admit(big)
        assert turn is not None  # 80 + 50 > 100: wait for the first charge to expire
        small = Slot(10)
        behind = admission.admit(small)
        assert behind is not None  # fits, but strict FIFO: it waits behind the big one
        await admission.wait(turn, big)
        assert clock.now() == 10.0
        await admission.wait(behind, small)
        assert tpm.used(clock.now()) == 60


# -- closing, draining, loops -----------------------------------------------------------------


async def test_close_refuses_queued_callers_and_counts_a_cancelled_one_once() -> None:
    admission = make(limit=1)
    admit_now(admission)
    tasks = [asyncio.create_task(enter(admission, Slot())) for _ in range(3)]
    await settle()
    tasks[0].cancel()  # its future is cancelled now; its task resumes after close()
    admission.close(lambda: RuntimeError("closed"))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [type(r) for r in results[1:]] == [RuntimeError, RuntimeError]
    assert admission.waiting == 0
    assert admission.in_flight == 1
    assert not admission.queue


async def test_wait_drained_returns_when_the_last_call_is_released_after_close() -> None:
    with VirtualClock(start=0.0) as clock:
        events = Events("test")
        seen: list[str] = []
        events.listeners.add(lambda event: seen.append(event.kind))
        admission = make(limit=2, events=events)
        admit_now(admission)
        admit_now(admission)
        admission.close(lambda: RuntimeError("closed"))
        asyncio.get_running_loop().call_later(1.0, release, admission)
        asyncio.get_running_loop().call_later(3.0, release, admission)
        await admission.wait_drained()
        assert clock.now() == 3.0
        assert seen == ["drained"]
        admission.dispatch()  # idempotent: drained once
        assert seen == ["drained"]
        await admission.wait_drained()  # returns at once


def test_a_dead_loop_leaves_nothing_behind() -> None:
    holder: list[Admission] = []

    async def first() -> None:
        admission = make(limit=1)
        admit_now(admission)  # never released: its loop ends with it in flight
        holder.append(admission)

    async def second() -> tuple[bool, int]:
        admission = holder[0]
        dropped = admission.bind(asyncio.get_running_loop())
        in_flight = admission.in_flight
        admit_now(admission)
        return dropped, in_flight

    asyncio.run(first())
    assert asyncio.run(second()) == (True, 0)


async def test_misbehaving_rng_leaves_the_gap_unjittered(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return 7.0  # out of range

    pacing = Pacing(1.0, 0.5, Broken(), "throttle 'test'")
    with caplog.at_level("WARNING", "headrace.throttle"):
        pacing.start(10.0)
    assert pacing.next_start(10.5) == 11.0  # the full interval: gap factor 1.0
    assert pacing.next_start(11.0) == 0.0
    assert "not jittered" in caplog.text


# -- the one inlined copy -------------------------------------------------------------------


class Recording:
    """A user's Limit that keeps every sample and holds the limit."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, bool]] = []

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        self.samples.append((rtt, in_flight, dropped))
        return 4


async def test_executes_fast_path_admits_and_releases_as_admit_and_release_do() -> None:
    # execute() inlines Admission.admit()'s uncontended branch and the release; acquire()
    # goes through admit(). Both must stamp starts (a latency limit needs them), epochs
    # and the first admission alike, and give the slot back once.
    with VirtualClock(start=0.0) as clock:
        limit = Recording()
        t = Throttle(4, limit=limit)

        async def one_second(slot: Slot) -> None:
            await asyncio.sleep(1.0)

        await t.execute(one_second)
        async with t.acquire():
            await asyncio.sleep(1.0)
        await asyncio.gather(t.execute(one_second), t.execute(one_second))
        assert limit.samples == [(1.0, 1, False), (1.0, 1, False), (1.0, 2, False), (1.0, 1, False)]
        snap = t.snapshot()
        assert (snap.in_flight, snap.waiting, snap.completed) == (0, 0, 4)
        assert snap.rate == pytest.approx(4 / clock.now())  # counted from the first admission


def test_queued_turns_come_from_a_loop_that_makes_its_own_futures() -> None:
    made: list[asyncio.Future[object]] = []

    class Loop(asyncio.SelectorEventLoop):
        def create_future(self) -> asyncio.Future[object]:
            fut: asyncio.Future[object] = super().create_future()
            made.append(fut)
            return fut

    async def main() -> list[int]:
        throttle = Throttle(2)

        def call(i: int) -> Callable[[Slot], Awaitable[int]]:
            async def one(slot: Slot) -> int:
                await asyncio.sleep(0)
                return i

            return one

        return list(await asyncio.gather(*(throttle.execute(call(i)) for i in range(6))))

    loop = Loop()
    try:
        assert loop.run_until_complete(main()) == list(range(6))
    finally:
        loop.close()
    assert len(made) >= 4  # a turn per queued call, each from the loop's own create_future
