"""S9: server hints pause dispatch and lower the limit once; hold() pauses only."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

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


# -- what a retry_after= extractor may return ------------------------------------------


class Http429(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__(429)
        self.retry_after_header = retry_after


def header(exc: BaseException) -> Any:
    return exc.retry_after_header if isinstance(exc, Http429) else None


MAGNITUDES = pytest.mark.parametrize("start", [0.0, 1e3, 1e6])


@MAGNITUDES
async def test_an_http_date_hint_pauses_until_that_date(start: float) -> None:
    """``Retry-After: <HTTP-date>`` is legal HTTP: it pauses until that (wall-clock) date."""
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    with VirtualClock(start=start):
        date = format_datetime(datetime.now(UTC) + timedelta(seconds=31), usegmt=True)
        t = Throttle(4, retry_after=header)

        async def limited(slot: Slot) -> None:
            raise Http429(date)

        with pytest.raises(Http429):
            await t.execute(limited)
        snap = t.snapshot()
        assert snap.paused_until is not None
        assert 29.0 <= snap.paused_until - start <= 31.0  # whole seconds, read from now
        assert snap.concurrency == 2


@MAGNITUDES
async def test_a_numeric_string_hint_is_seconds(start: float) -> None:
    with VirtualClock(start=start):
        t = Throttle(4, retry_after=header)

        async def limited(slot: Slot) -> None:
            raise Http429(" 12 ")

        with pytest.raises(Http429):
            await t.execute(limited)
        assert t.snapshot().paused_until == start + 12.0


async def test_an_http_date_in_the_past_is_no_pause_but_still_a_decrease() -> None:
    with VirtualClock(start=0.0):
        t = Throttle(4, retry_after=header)

        async def limited(slot: Slot) -> None:
            raise Http429("Wed, 21 Oct 2015 07:28:00 GMT")

        with pytest.raises(Http429):
            await t.execute(limited)
        assert t.snapshot().paused_until is None
        assert t.snapshot().concurrency == 2


class Weird:
    def __repr__(self) -> str:
        raise RuntimeError("repr of a weird object")


def raising(exc: BaseException) -> Any:
    if isinstance(exc, Http429):
        raise LookupError("no header")
    return None


@pytest.mark.parametrize(
    "value",
    [object(), Weird(), "soon", "", math.nan, -1.0, -5, [3], b"5", "nan", "-3", "inf", True],
    ids=lambda value: type(value).__name__,
)
async def test_a_bad_hint_is_ignored_with_one_warning_and_never_raised(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    with VirtualClock(start=0.0):

        def extractor(exc: BaseException) -> Any:
            return value

        t = Throttle(1, retry_after=extractor, failure_threshold=100)
        gate = asyncio.Event()

        async def limited(slot: Slot) -> None:
            await gate.wait()
            raise Http429(value)

        async def ok(slot: Slot) -> str:
            return "ok"

        first = asyncio.create_task(t.execute(limited))
        queued = asyncio.create_task(t.execute(ok))
        await asyncio.sleep(0)
        assert t.snapshot().waiting == 1
        with caplog.at_level(logging.DEBUG, "headrace.throttle"):
            gate.set()
            with pytest.raises(Http429):  # the caller's own error, not the parser's
                await first
            async with asyncio.timeout(10):
                assert await queued == "ok"  # the queued caller was not left waiting
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "retry_after" in warnings[0].getMessage()
            with pytest.raises(Http429):
                await t.execute(limited)  # a second bad hint: no second warning
            assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        snap = t.snapshot()
        assert snap.paused_until is None
        assert snap.concurrency == 1
        assert snap.failed == 2
        assert snap.in_flight == snap.waiting == 0


async def test_an_extractor_that_raises_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with VirtualClock(start=0.0):
        t = Throttle(2, retry_after=raising)

        async def limited(slot: Slot) -> None:
            raise Http429(5)

        with caplog.at_level(logging.WARNING, "headrace.throttle"), pytest.raises(Http429):
            await t.execute(limited)
        assert "LookupError" in caplog.text
        assert t.snapshot().paused_until is None


async def test_server_busy_with_a_numeric_string_and_with_garbage() -> None:
    with VirtualClock(start=0.0) as clock:
        t = Throttle(8)

        class Busy(ServerBusy):
            def __init__(self, after: object) -> None:
                super().__init__()
                self.retry_after = after  # type: ignore[assignment]

        async def busy(slot: Slot) -> None:
            raise Busy("7")

        with pytest.raises(Busy):
            await t.execute(busy)
        assert t.snapshot().paused_until == 7.0

        async def garbage(slot: Slot) -> None:
            raise Busy(object())

        with pytest.raises(Busy):
            await t.execute(garbage)  # busy, no usable time: a decrease, no new pause
        assert clock.now() == 7.0  # it was admitted when the first pause ended
        assert t.snapshot().paused_until is None
        assert t.snapshot().concurrency == 2
