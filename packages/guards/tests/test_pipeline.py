from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import (
    Bulkhead,
    BulkheadSnapshot,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    Fallback,
    GuardEvent,
    GuardTimeout,
    Pipeline,
    RateLimiter,
    Retry,
    Timeout,
    pipeline,
)


class Boom(Exception):
    pass


async def test_first_guard_is_outermost() -> None:
    order: list[str] = []

    class Tracer:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            order.append(f"{self.tag}>")
            try:
                return await fn(*args, **kwargs)
            finally:
                order.append(f"<{self.tag}")

        def snapshot(self) -> str:
            return self.tag

        def add_listener(self, cb: Any) -> Any:
            return lambda: None

    async def work(x: int) -> int:
        order.append("work")
        return x

    stack = pipeline(Tracer("a"), pipeline(Tracer("b"), Tracer("c")))
    assert await stack.call(work, 7) == 7
    assert order == ["a>", "b>", "c>", "work", "<c", "<b", "<a"]
    assert stack.snapshot().guards == ("a", "b", "c")
    assert len(stack.guards) == 3


async def test_timeout_outside_retry_bounds_all_attempts() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3)
        raise Boom

    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(GuardTimeout):
            await pipeline(Timeout(10), Retry(10, backoff=fixed(0))).call(slow)
        assert clock.now() - start == 10
        assert calls == 4


async def test_timeout_inside_retry_bounds_each_attempt() -> None:
    calls = 0

    async def sometimes_slow() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10 if calls < 3 else 0.5)
        return "ok"

    with VirtualClock() as clock:
        start = clock.now()
        assert await pipeline(Retry(5, backoff=fixed(0)), Timeout(1)).call(sometimes_slow) == "ok"
        assert clock.now() - start == 2.5


async def test_recommended_stack_end_to_end() -> None:
    events: list[GuardEvent] = []
    with VirtualClock():
        breaker = CircuitBreaker("svc", failure_threshold=2, recovery_timeout=60)
        stack = pipeline(
            Fallback(lambda exc, *a, **k: f"fallback:{type(exc).__name__}"),
            Retry(3, backoff=fixed(1)),
            breaker,
            RateLimiter(100),
            Timeout(1),
            Bulkhead(4),
        )
        stack.add_listener(events.append)

        async def down(x: int) -> str:
            await asyncio.sleep(5)
            return str(x)

        # two timeouts trip the breaker; the third attempt is rejected; fallback answers
        assert await stack.call(down, 1) == "fallback:CircuitOpenError"
        assert breaker.state is CircuitState.OPEN
        snap = stack.snapshot()
        assert isinstance(snap.guards[5], BulkheadSnapshot)
        assert snap.guards[5].in_flight == 0
    kinds = [e.kind for e in events]
    assert kinds.count("timeout") == 2
    assert kinds.count("state_change") == 1
    assert "fallback" in kinds


async def test_on_timeout_inside_pipeline_gets_user_arguments() -> None:
    async def slow(x: int, *, y: int) -> int:
        await asyncio.sleep(10)
        return 0

    with VirtualClock():
        stack = pipeline(Retry(2), Timeout(1, on_timeout=lambda x, y: x + y))
        assert await stack.call(slow, 2, y=3) == 5


async def test_pipeline_decorator_and_listener_removal() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    stack = pipeline(Retry(1), breaker)
    events: list[GuardEvent] = []
    remove = stack.add_listener(events.append)

    @stack
    async def failing() -> None:
        raise Boom

    with pytest.raises(Boom):
        await failing()
    with pytest.raises(CircuitOpenError):
        await failing()
    assert [e.kind for e in events] == ["state_change", "rejected"]
    remove()
    with pytest.raises(CircuitOpenError):
        await failing()
    assert len(events) == 2
    await stack.aclose()


async def test_empty_pipeline_just_calls() -> None:
    async def work() -> int:
        return 1

    assert await pipeline().call(work) == 1


async def test_pipeline_has_no_async_with_and_no_operators() -> None:
    stack = pipeline(Timeout(1))
    with pytest.raises(TypeError):
        async with stack:  # type: ignore[attr-defined]
            pass
    with pytest.raises(TypeError):
        stack | Timeout(1)  # type: ignore[operator]
    with pytest.raises(TypeError):
        stack >> Timeout(1)  # type: ignore[operator]


def test_pipeline_rejects_non_guards() -> None:
    with pytest.raises(ConfigurationError, match="guards"):
        pipeline(Timeout(1), 42)
    assert isinstance(pipeline(Timeout(1)), Pipeline)


class Closing:
    """A user's guard: records calls to aclose(), which may fail."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.closed = 0
        self.listeners: list[Any] = []
        self.remover: Any = None

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    def snapshot(self) -> str:
        return "closing"

    def add_listener(self, callback: Any) -> Any:
        if self.remover is not None:
            return self.remover
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    async def aclose(self) -> None:
        self.closed += 1
        if self.fails:
            raise RuntimeError("close failed")


async def test_aclose_closes_every_guard_when_one_fails() -> None:
    first, second = Closing(fails=True), Closing()
    guards = pipeline(first, second)
    with pytest.raises(RuntimeError, match="close failed"):
        await guards.aclose()
    assert (first.closed, second.closed) == (1, 1)


@pytest.mark.parametrize("remover", [ValueError("refused"), "not callable"])
async def test_add_listener_is_all_or_nothing(remover: object) -> None:
    first, second = Closing(), Closing()
    if isinstance(remover, Exception):

        def refuse(callback: Any) -> Any:
            raise remover

        second.add_listener = refuse  # type: ignore[method-assign]
    else:
        second.remover = remover
    guards = pipeline(first, second)
    with pytest.raises((ValueError, TypeError)):
        guards.add_listener(lambda event: None)
    assert first.listeners == []  # the first guard does not keep a listener nobody can remove


async def test_a_user_guard_whose_call_is_not_async_is_named() -> None:
    class SyncGuard(Closing):
        def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            return 42

    for guards in (pipeline(SyncGuard()), pipeline(Bulkhead(1), SyncGuard())):
        with pytest.raises(TypeError, match=r"SyncGuard\.call is not an async function"):
            await guards.call(asyncio.sleep, 0)
