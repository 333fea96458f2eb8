"""S9: server hints pause dispatch and lower the limit once; hold() pauses only."""

from __future__ import annotations

import asyncio
import math

import pytest

from headrace_core import Rejected
from headrace_core.testing import VirtualClock
from headrace_throttle import ServerBusy, Slot, Throttle, ThrottleEvent, ThrottleState


class HttpError(Exception):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.headers = {} if retry_after is None else {"Retry-After": str(retry_after)}


def from_headers(exc: BaseException) -> float | None:
    if isinstance(exc, HttpError) and exc.status in (429, 503):
        value = exc.headers.get("Retry-After")
        return float(value) if value is not None else 0.0
    return None


async def test_server_busy_pauses_new_dispatch_and_decreases_once() -> None:
    with VirtualClock(start=0.0) as clock:
        events: list[ThrottleEvent] = []
        t = Throttle(8, failure_threshold=100, on_event=events.append)
        starts: list[float] = []
        running_done: list[float] = []

        async def busy(slot: Slot) -> None:
            await asyncio.sleep(1)
            raise ServerBusy(retry_after=5.0)

        async def long_running(slot: Slot) -> None:
            await asyncio.sleep(3)
            running_done.append(clock.now())

        async def later(slot: Slot) -> None:
            starts.append(clock.now())

        runner = asyncio.create_task(t.execute(long_running))
        results = await asyncio.gather(*(t.execute(busy) for _ in range(4)), return_exceptions=True)
        assert all(isinstance(r, ServerBusy) for r in results)
        snap = t.snapshot()
        assert snap.state is ThrottleState.PAUSED
        assert snap.paused_until == 6.0
        assert snap.concurrency == 4  # four hints of one epoch: one decrease
        await t.execute(later)
        assert starts == [6.0]
        await runner
        assert running_done == [3.0]  # in-flight calls were untouched by the pause
        kinds = [e.kind for e in events]
        assert kinds.count("decreased") == 1
        assert kinds.count("paused") == 1
        assert "resumed" in kinds
        paused = next(e for e in events if e.kind == "paused")
        assert paused.data["until"] == 6.0
        assert paused.data["reason"] == "ServerBusy"


async def test_longest_pause_wins() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4)
        t.hold(10)
        t.hold(3)  # never shortens
        assert t.snapshot().paused_until == 10.0
        await asyncio.sleep(2)
        t.hold(20)
        assert t.snapshot().paused_until == 22.0
        await t.execute(lambda s: asyncio.sleep(0))
        assert clock.now() == 22.0
        assert t.snapshot().state is ThrottleState.RUNNING


async def test_hold_does_not_decrease() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(4)
        t.hold(5)
        assert t.snapshot().concurrency == 4
        assert t.snapshot().epoch == 0
        with pytest.raises(ValueError, match="seconds"):
            t.hold(-1)
        with pytest.raises(ValueError, match="seconds"):
            t.hold(math.nan)


async def test_retry_after_extractor_for_http_429() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(4, retry_after=from_headers)

        async def rate_limited(slot: Slot) -> None:
            raise HttpError(429, retry_after=30)

        with pytest.raises(HttpError):
            await t.execute(rate_limited)
        assert t.snapshot().paused_until == 30.0
        assert t.snapshot().concurrency == 2

        async def not_found(slot: Slot) -> None:
            raise HttpError(404)

        await asyncio.sleep(30)
        with pytest.raises(HttpError):
            await t.execute(not_found)
        assert t.snapshot().paused_until is None
        assert clock.now() == 30.0


async def test_failing_extractor_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    with VirtualClock(start=0.0):

        def broken(exc: BaseException) -> float | None:
            raise RuntimeError("bad extractor")

        t = Throttle(4, retry_after=broken, failure_threshold=1)

        async def fail(slot: Slot) -> None:
            raise KeyError("x")

        with pytest.raises(KeyError):
            await t.execute(fail)
        assert "extractor" in caplog.text
        assert t.snapshot().concurrency == 2  # counted as an ordinary failure


async def test_hint_without_time_decreases_without_pause() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(4)

        async def busy(slot: Slot) -> None:
            raise ServerBusy()

        with pytest.raises(ServerBusy) as info:
            await t.execute(busy)
        assert isinstance(info.value, Rejected)
        assert info.value.retry_after is None
        assert t.snapshot().concurrency == 2
        assert t.snapshot().paused_until is None


async def test_hint_of_a_stale_epoch_pauses_but_does_not_decrease_again() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(8)
        gate = asyncio.Event()

        async def busy_later(slot: Slot) -> None:
            await gate.wait()
            raise ServerBusy(retry_after=2.0)

        tasks = [asyncio.create_task(t.execute(busy_later)) for _ in range(3)]
        await asyncio.sleep(0)
        t.record_failure(ServerBusy(retry_after=1.0))
        assert t.snapshot().concurrency == 4
        gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert t.snapshot().concurrency == 4
        assert t.snapshot().paused_until == 2.0


async def test_infinite_hint_pauses_until_close() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(2)
        t.hold(math.inf)
        task = asyncio.create_task(t.execute(lambda s: asyncio.sleep(0)))
        await asyncio.sleep(1000)
        assert t.snapshot().waiting == 1
        t.close()
        with pytest.raises(Exception, match="closed"):
            await task


def test_server_busy_message() -> None:
    assert "retry after 5s" in str(ServerBusy(retry_after=5.0))
    assert str(ServerBusy()) == "server busy"
