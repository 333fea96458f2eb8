from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_guards import ConfigurationError, Fallback, GuardEvent, Hedge


class Boom(Exception):
    pass


async def fail(*args: Any, **kwargs: Any) -> str:
    raise Boom("down")


# -- Fallback ------------------------------------------------------------------------


async def test_fallback_gets_error_and_arguments() -> None:
    seen: list[tuple[BaseException, tuple[Any, ...], dict[str, Any]]] = []

    def handler(exc: BaseException, *args: Any, **kwargs: Any) -> str:
        seen.append((exc, args, kwargs))
        return "cached"

    events: list[GuardEvent] = []
    guard = Fallback(handler, name="fb")
    guard.add_listener(events.append)
    assert await guard.call(fail, 1, k=2) == "cached"
    assert isinstance(seen[0][0], Boom)
    assert seen[0][1:] == ((1,), {"k": 2})
    assert guard.snapshot().fallbacks == 1
    assert guard.snapshot().calls == 1
    assert [e.kind for e in events] == ["fallback"]


async def test_async_handler_is_awaited() -> None:
    async def handler(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return "async"

    assert await Fallback(handler).call(fail) == "async"


async def test_success_passes_and_unmatched_error_propagates() -> None:
    guard = Fallback(lambda exc: "x", on=KeyError)

    async def ok() -> str:
        return "ok"

    assert await guard.call(ok) == "ok"
    with pytest.raises(Boom):
        await guard.call(fail)
    assert guard.snapshot().fallbacks == 0


@pytest.mark.parametrize("exc", [asyncio.CancelledError, KeyboardInterrupt, SystemExit])
async def test_never_catches_cancel_like(exc: type[BaseException]) -> None:
    guard = Fallback(lambda e: "x", on=BaseException)

    async def raises() -> None:
        raise exc

    with pytest.raises(exc):
        await guard.call(raises)


async def test_handler_error_propagates() -> None:
    def handler(exc: BaseException) -> str:
        raise ValueError("handler broke")

    with pytest.raises(ValueError, match="handler broke"):
        await Fallback(handler).call(fail)


async def test_fallback_has_no_async_with() -> None:
    guard = Fallback(lambda e: 1)
    with pytest.raises(TypeError):
        async with guard:  # type: ignore[attr-defined]
            pass


def test_fallback_validation() -> None:
    with pytest.raises(ConfigurationError, match="handler"):
        Fallback(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="on"):
        Fallback(lambda e: 1, on=3)  # type: ignore[arg-type]


# -- Hedge ---------------------------------------------------------------------------


class Service:
    def __init__(self, latencies: list[float], errors: dict[int, BaseException] | None = None):
        self.latencies = latencies
        self.errors = errors or {}
        self.started = 0
        self.cancelled = 0
        self.finished = 0

    async def __call__(self) -> int:
        i = self.started
        self.started += 1
        try:
            await asyncio.sleep(self.latencies[i])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if i in self.errors:
            raise self.errors[i]
        self.finished += 1
        return i


async def test_fast_primary_needs_no_hedge() -> None:
    with VirtualClock():
        service = Service([0.1])
        hedge = Hedge(1.0)
        assert await hedge.call(service) == 0
        assert service.started == 1
        assert hedge.snapshot().hedges == 0


async def test_hedge_wins_and_loser_is_cancelled_and_awaited() -> None:
    events: list[GuardEvent] = []
    with VirtualClock() as clock:
        service = Service([10, 1])
        hedge = Hedge(1.0, name="h")
        hedge.add_listener(events.append)
        start = clock.now()
        assert await hedge.call(service) == 1
        assert clock.now() - start == 2
        assert service.cancelled == 1
        snap = hedge.snapshot()
        assert (snap.calls, snap.hedges, snap.hedge_wins) == (1, 1, 1)
    assert [(e.kind, e.attempt) for e in events] == [("hedge", 2)]


async def test_handled_failure_starts_next_attempt_at_once() -> None:
    with VirtualClock() as clock:
        service = Service([0.5, 0.5], errors={0: Boom("first")})
        start = clock.now()
        assert await Hedge(10.0).call(service) == 1
        assert clock.now() - start == 1.0


async def test_all_attempts_fail_raises_last_error() -> None:
    errors: dict[int, BaseException] = {0: Boom("a"), 1: Boom("b"), 2: Boom("c")}
    with VirtualClock():
        service = Service([1, 2, 3], errors=errors)
        with pytest.raises(Boom) as info:
            await Hedge(0.5, max_hedged=2).call(service)
        assert info.value is errors[2]
        assert service.started == 3


async def test_unhandled_error_propagates_at_once_and_cancels_others() -> None:
    with VirtualClock():
        service = Service([5, 1], errors={1: KeyError("bad")})
        with pytest.raises(KeyError):
            await Hedge(0.5, on=Boom).call(service)
        assert service.cancelled == 1


async def test_max_hedged_caps_attempts() -> None:
    with VirtualClock():
        service = Service([10, 10, 10, 10, 10])
        assert await Hedge(1, max_hedged=3).call(service) == 0
        assert service.started == 4
        assert service.cancelled == 3


async def test_caller_cancel_cancels_and_awaits_all_attempts() -> None:
    with VirtualClock():
        service = Service([100, 100, 100])
        task = asyncio.create_task(Hedge(1, max_hedged=2).call(service))
        await asyncio.sleep(5)
        assert service.started == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert service.cancelled == 3


async def test_hedge_has_no_async_with_and_validates() -> None:
    with pytest.raises(TypeError):
        async with Hedge(1):  # type: ignore[attr-defined]
            pass
    with pytest.raises(ConfigurationError, match="delay"):
        Hedge(-1)
    with pytest.raises(ConfigurationError, match="max_hedged"):
        Hedge(1, max_hedged=11)
    with pytest.raises(ConfigurationError, match="max_hedged"):
        Hedge(1, max_hedged=0)
    with pytest.raises(ConfigurationError, match="on"):
        Hedge(1, on="x")  # type: ignore[arg-type]


async def test_hedge_decorator() -> None:
    hedge = Hedge(1)

    @hedge
    async def quick(x: int) -> int:
        return x

    assert await quick(5) == 5
    assert quick.__name__ == "quick"


@pytest.mark.parametrize("outcome", ["win", "fail", "unhandled"])
async def test_no_attempt_outlives_the_call(outcome: str) -> None:
    errors: dict[int, BaseException] = {}
    if outcome == "fail":
        errors = {0: Boom("a"), 1: Boom("b"), 2: Boom("c")}
    elif outcome == "unhandled":
        errors = {2: KeyError("k")}
    with VirtualClock():
        before = asyncio.all_tasks()
        service = Service([10, 3, 1], errors=errors)
        with contextlib.suppress(Boom, KeyError):
            await Hedge(1, max_hedged=2, on=Boom).call(service)
        assert asyncio.all_tasks() == before
        assert service.started == 3


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_hedge_attempt_interrupt_reaches_the_caller_not_the_loop(
    interrupt: type[BaseException],
) -> None:
    from shared.faults import Fault, run_injection

    async def drive(fault: Fault) -> None:
        calls = 0

        async def fn() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(10)
                return "late"
            raise interrupt()

        hedge = Hedge(0.5)
        with pytest.raises(interrupt):
            await hedge.call(fn)  # the hedge raises it; the slow primary is cancelled
        assert calls == 2

    # Fails when the interrupt escapes the attempt's task into the event loop, or when
    # an attempt is left running.
    run_injection(drive, Fault.KEYBOARD_INTERRUPT)
