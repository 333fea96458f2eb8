"""gentlify's manual-control calls behave as gentlify users expect.

``record_success(duration=, tokens_used=)``, ``record_failure()`` outside any call (with
or without a running loop), ``record_tokens()`` on the throttle, and the COOLING state
after a decrease at a floor that is also the ceiling.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from headrace_core.testing import VirtualClock
from headrace_throttle import Slot, Throttle, ThrottleEvent, ThrottleState, TokenBudget


class Samples:
    """A :class:`Limit` that keeps every sample and never moves."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, bool]] = []

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        self.samples.append((rtt, in_flight, dropped))
        return 4


def kinds(events: list[ThrottleEvent]) -> list[tuple[str, object]]:
    return [(e.kind, e.data.get("concurrency")) for e in events]


# -- record_success(duration=, tokens_used=) -------------------------------------------
def test_record_success_with_duration_counts_a_completed_task_without_a_loop() -> None:
    t = Throttle(max_concurrency=10)
    t.record_success(duration=1.0)
    t.record_success()
    snap = t.snapshot()
    assert snap.completed == 2
    assert snap.completed_tasks == 2
    assert snap.failed == 0


async def test_record_success_duration_is_the_latency_sample() -> None:
    with VirtualClock(start=0.0):
        limit = Samples()
        t = Throttle(4, limit=limit)
        t.record_success(duration=1.5)
        t.record_success(0.25)
        assert [rtt for rtt, _, _ in limit.samples] == [1.5, 0.25]
        assert all(not dropped for _, _, dropped in limit.samples)
        assert t.snapshot().completed_tasks == 2


@pytest.mark.parametrize("duration", [-1.0, float("nan"), float("inf"), "1.0", True])
def test_record_success_refuses_a_bad_duration_and_counts_nothing(duration: object) -> None:
    t = Throttle(4)
    with pytest.raises(ValueError, match="duration"):
        t.record_success(duration=duration)  # type: ignore[arg-type]
    assert t.snapshot().completed == 0


def test_record_success_tokens_used_charges_the_token_budget() -> None:
    t = Throttle(4, token_budget=TokenBudget(max_tokens=1000, window_seconds=60.0))
    t.record_success(duration=0.5, tokens_used=120)
    snap = t.snapshot()
    assert snap.tokens_used == 120
    assert snap.completed == 1
    with pytest.raises(ValueError, match="tokens_used"):
        t.record_success(tokens_used=-1)
    assert t.snapshot().completed == 1


# -- record_failure() outside any call --------------------------------------------------
def test_record_failure_without_a_running_loop_decreases_the_limit() -> None:
    events: list[ThrottleEvent] = []
    t = Throttle(max_concurrency=10, failure_threshold=1, on_state_change=events.append)
    t.record_failure()
    snap = t.snapshot()
    assert snap.concurrency == 5
    assert snap.state is ThrottleState.COOLING
    assert snap.failed == 1
    # gentlify's callback hears gentlify's words: a decrease, then the cooling it starts.
    assert kinds(events) == [("decelerated", (10, 5)), ("cooling_started", None)]
    assert events[1].data == {"cooling_period": 60.0}
    t.record_failure(ValueError("again"))
    assert t.snapshot().concurrency == 2


def test_record_failure_before_the_loop_then_recovery_on_the_loop_clock() -> None:
    t = Throttle(4, failure_threshold=2, cooling_period=10.0)
    t.record_failure()
    assert t.snapshot().concurrency == 4  # one failure of two
    t.record_failure()
    assert t.snapshot().concurrency == 2

    async def main() -> list[int]:
        seen = []
        with VirtualClock(start=0.0):

            async def ok(slot: Slot) -> None:
                await asyncio.sleep(5.0)

            for _ in range(4):
                await t.execute(ok)
                seen.append(t.snapshot().concurrency)
        return seen

    # Cooling counts from the decrease: +1 at t=10 and at t=20.
    assert asyncio.run(main()) == [2, 3, 3, 4]
    assert t.snapshot().state is ThrottleState.RUNNING


async def test_record_failure_keeps_the_epoch_rule_for_calls_through_the_throttle() -> None:
    with VirtualClock(start=0.0):
        events: list[ThrottleEvent] = []
        t = Throttle(8, failure_threshold=1, on_event=events.append)
        release = asyncio.Event()

        async def fail(slot: Slot) -> None:
            await release.wait()
            raise ConnectionError("busy")

        calls = [asyncio.create_task(t.execute(fail)) for _ in range(4)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        # One congestion event for the four failures admitted in the same epoch.
        assert t.snapshot().concurrency == 4
        assert t.snapshot().epoch == 1
        # A manual failure counts for the current epoch: one more decrease.
        t.record_failure()
        assert t.snapshot().concurrency == 2
        assert kinds(events) == [("decreased", (8, 4)), ("decreased", (4, 2))]


def test_a_raising_state_change_callback_does_not_break_record_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: ThrottleEvent) -> None:
        raise RuntimeError("callback bug")

    t = Throttle(max_concurrency=10, failure_threshold=1, on_state_change=broken)
    with caplog.at_level(logging.ERROR, logger="headrace.throttle"):
        t.record_failure()
        t.record_success(duration=1.0)
    assert t.snapshot().concurrency == 5
    assert t.snapshot().completed == 1
    assert "callback bug" in caplog.text


# -- record_tokens() on the throttle ----------------------------------------------------
def test_record_tokens_without_a_loop_charges_the_token_budget() -> None:
    t = Throttle(max_concurrency=10, token_budget=TokenBudget(max_tokens=1000))
    t.record_tokens(300)
    snap = t.snapshot()
    assert snap.tokens_used == 300
    assert snap.tokens_remaining == 700


async def test_record_tokens_charge_expires_and_gates_admission() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4, budgets=[TokenBudget(max_tokens=1000, window_seconds=60.0)])
        await asyncio.sleep(10.0)
        t.record_tokens(300)
        assert t.snapshot().tokens_used == 300
        started: list[float] = []

        async def big(slot: Slot) -> None:
            started.append(clock.now())

        # 800 tokens fit only once the recorded 300 leave the window (at t=70).
        await t.execute(big, tokens=800)
        assert started == [70.0]
        assert t.snapshot().tokens_used == 800
        await asyncio.sleep(60.0)
        assert t.snapshot().tokens_used == 0


def test_record_tokens_without_a_token_budget_counts_nothing() -> None:
    t = Throttle(max_concurrency=10)
    t.record_tokens(300)  # gentlify: a no-op without a budget
    snap = t.snapshot()
    assert snap.tokens_used is None
    assert snap.tokens_remaining is None


@pytest.mark.parametrize("count", [-1, 1.5, "3", True])
def test_record_tokens_refuses_a_bad_count(count: object) -> None:
    t = Throttle(4, token_budget=TokenBudget(max_tokens=1000))
    with pytest.raises(ValueError, match="count"):
        t.record_tokens(count)  # type: ignore[arg-type]
    assert t.snapshot().tokens_used == 0


# -- COOLING after a decrease at the floor ------------------------------------------------
def test_decrease_at_the_floor_is_cooling_without_a_loop() -> None:
    events: list[ThrottleEvent] = []
    t = Throttle(max_concurrency=1, failure_threshold=1, on_state_change=events.append)
    assert t.snapshot().state is ThrottleState.RUNNING
    t.record_failure()
    snap = t.snapshot()
    assert snap.concurrency == 1
    assert snap.state is ThrottleState.COOLING
    # Nothing could move (the limit at its floor, no pacing): no "decreased" event and no
    # new epoch; the state says the throttle is cooling.
    assert [e.kind for e in events] == []
    assert snap.epoch == 0


def test_a_decrease_that_moves_only_the_pacing_is_still_an_event() -> None:
    events: list[ThrottleEvent] = []
    t = Throttle(1, failure_threshold=1, min_dispatch_interval=0.1, on_event=events.append)
    t.record_failure()
    snap = t.snapshot()
    assert snap.concurrency == 1
    assert snap.dispatch_interval == pytest.approx(0.2)
    assert [e.kind for e in events] == ["decreased"]
    assert snap.epoch == 1


async def test_cooling_at_the_floor_ends_with_a_success_after_the_cooling_period() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(1, failure_threshold=1, cooling_period=10.0)

        async def fail(slot: Slot) -> None:
            raise ConnectionError("busy")

        async def ok(slot: Slot) -> None:
            await asyncio.sleep(4.0)

        with pytest.raises(ConnectionError):
            await t.execute(fail)
        assert t.snapshot().state is ThrottleState.COOLING
        await t.execute(ok)  # t=4: still cooling
        await t.execute(ok)  # t=8
        assert t.snapshot().state is ThrottleState.COOLING
        await t.execute(ok)  # t=12: cooled
        snap = t.snapshot()
        assert snap.state is ThrottleState.RUNNING
        assert snap.concurrency == 1


async def test_set_concurrency_ends_cooling_at_the_floor() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(1, failure_threshold=1)
        t.record_failure()
        assert t.snapshot().state is ThrottleState.COOLING
        t.set_concurrency(1)
        assert t.snapshot().state is ThrottleState.RUNNING


# -- gentlify's event names, where gentlify's API is used ---------------------------------
def test_on_event_and_listeners_keep_headraces_names() -> None:
    legacy: list[ThrottleEvent] = []
    own: list[ThrottleEvent] = []
    gentle = Throttle(max_concurrency=4, failure_threshold=1, on_state_change=legacy.append)
    t = Throttle(max_concurrency=4, failure_threshold=1, on_event=own.append)
    heard: list[ThrottleEvent] = []
    t.add_listener(heard.append)
    gentle.record_failure()
    t.record_failure()
    assert [e.kind for e in own] == [e.kind for e in heard] == ["decreased"]
    assert own[0].kind_legacy == "decelerated"
    assert [e.kind for e in legacy] == ["decelerated", "cooling_started"]
    assert legacy[0].data["interval"] == own[0].data["interval"]


async def test_an_async_gentlify_callback_hears_both_events() -> None:
    heard: list[str] = []

    async def on_change(event: ThrottleEvent) -> None:
        await asyncio.sleep(0)
        heard.append(event.kind)

    t = Throttle(max_concurrency=4, failure_threshold=1, on_state_change=on_change)
    t.record_failure()
    await t.aclose()  # awaits the async listener
    assert sorted(heard) == ["closed", "cooling_started", "decelerated", "drained"]
    assert heard.index("decelerated") < heard.index("cooling_started")


def test_a_gentlify_callback_that_raises_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: ThrottleEvent) -> None:
        raise RuntimeError(f"callback bug on {event.kind}")

    t = Throttle(max_concurrency=4, failure_threshold=1, on_state_change=broken)
    with caplog.at_level(logging.ERROR, logger="headrace.throttle"):
        t.record_failure()
    assert "callback bug on decelerated" in caplog.text
    assert t.snapshot().concurrency == 2
