from __future__ import annotations

import asyncio
from typing import Any

import pytest

import headrace_guards
from headrace_core.testing import VirtualClock
from headrace_guards import (
    BreakerSnapshot,
    Bulkhead,
    BulkheadSnapshot,
    CircuitBreaker,
    CircuitState,
    ConfigurationError,
    Timeout,
)
from headrace_guards.compat import (
    AsyncCircuitBreaker,
    AsyncLimited,
    AsyncTimeout,
    circuit_breaker,
    limited,
    with_timeout,
)


class Check:
    """A kompoz-style object with async run(ctx)."""

    def __init__(self, ok: bool = True, delay: float = 0.0, error: Exception | None = None):
        self.ok = ok
        self.delay = delay
        self.error = error
        self.runs = 0

    async def run(self, ctx: Any) -> tuple[bool, Any]:
        self.runs += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.ok, ctx


def test_compat_exports() -> None:
    from headrace_guards import compat

    assert compat.__all__ == sorted(compat.__all__)
    assert compat.CircuitState is headrace_guards.CircuitState
    assert AsyncTimeout.__module__ == "headrace_guards.compat"


async def test_with_timeout_returns_false_ctx_and_sets_timed_out() -> None:
    with VirtualClock():
        shim = with_timeout(Check(delay=10), timeout=1.0)
        assert await shim.run({"id": 1}) == (False, {"id": 1})
        assert shim.timed_out
        assert isinstance(shim.guard, Timeout)
        assert shim.get_stats().timeouts == 1
        fast = with_timeout(Check(delay=0.1), timeout=1.0)
        assert await fast({"id": 2}) == (True, {"id": 2})
        assert not fast.timed_out
        assert repr(shim) == "AsyncTimeout(timeout=1.0)"


async def test_with_timeout_on_timeout_sync_and_async() -> None:
    def mark(ctx: dict[str, Any]) -> dict[str, Any]:
        return {**ctx, "timed_out": True}

    async def amark(ctx: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {**ctx, "async": True}

    with VirtualClock():
        assert await with_timeout(Check(delay=5), timeout=1, on_timeout=mark).run({}) == (
            False,
            {"timed_out": True},
        )
        assert await with_timeout(Check(delay=5), timeout=1, on_timeout=amark).run({}) == (
            False,
            {"async": True},
        )


async def test_with_timeout_inner_timeout_error_propagates() -> None:
    error = TimeoutError("inner")
    with pytest.raises(TimeoutError) as info:
        await with_timeout(Check(error=error), timeout=5).run({})
    assert info.value is error


async def test_plain_async_callables_returning_bool_or_tuple() -> None:
    async def yes(ctx: int) -> bool:
        return ctx > 0

    async def pair(ctx: int) -> tuple[bool, int]:
        return True, ctx + 1

    assert await with_timeout(yes, timeout=1).run(5) == (True, 5)
    assert await with_timeout(yes, timeout=1).run(-5) == (False, -5)
    assert await limited(pair, max_concurrent=1).run(1) == (True, 2)


async def test_limited_limits_and_shares_names() -> None:
    running = peak = 0

    async def work(ctx: int) -> tuple[bool, int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1)
        running -= 1
        return True, ctx

    with VirtualClock():
        a = limited(work, max_concurrent=2, name="compat-pool-test")
        b = limited(work, max_concurrent=2, name="compat-pool-test")
        results = await asyncio.gather(*(s.run(i) for i, s in enumerate([a, b] * 4)))
    assert [r[1] for r in results] == list(range(8))
    assert peak == 2
    assert isinstance(a.guard, Bulkhead)
    assert isinstance(a.get_stats(), BulkheadSnapshot)
    assert repr(a) == "AsyncLimited(max_concurrent=2, name='compat-pool-test')"


def test_limited_validation_raises_value_error() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        limited(Check(), max_concurrent=0)
    keep = limited(Check(), max_concurrent=3, name="compat-conflict-test")
    with pytest.raises(ValueError, match="compat-conflict-test"):
        limited(Check(), max_concurrent=4, name="compat-conflict-test")
    assert keep.max_concurrent == 3


def test_limited_named_works_across_loops() -> None:
    shim = limited(Check(), max_concurrent=1, name="compat-loops-test")
    assert asyncio.run(shim.run(1)) == (True, 1)
    assert asyncio.run(shim.run(2)) == (True, 2)


async def test_circuit_breaker_false_result_counts_as_failure() -> None:
    changes: list[tuple[CircuitState, CircuitState, BreakerSnapshot]] = []
    with VirtualClock() as clock:
        check = Check(ok=False)
        shim = circuit_breaker(
            check,
            failure_threshold=2,
            recovery_timeout=10,
            on_state_change=lambda old, new, stats: changes.append((old, new, stats)),
        )
        assert await shim.run("c") == (False, "c")
        assert shim.state is CircuitState.CLOSED
        assert await shim.run("c") == (False, "c")
        assert shim.get_stats().state is CircuitState.OPEN
        # rejected: (False, ctx), inner not run, counted
        assert await shim.run("c") == (False, "c")
        assert check.runs == 2
        stats = shim.get_stats()
        assert stats.rejected == 1
        assert stats.failure_count == 2
        assert isinstance(shim.guard, CircuitBreaker)
        check.ok = True
        await clock.advance(10)
        assert await shim.run("c") == (True, "c")
        assert shim.get_stats().state is CircuitState.CLOSED
    assert [(o, n) for o, n, _ in changes] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    assert isinstance(changes[0][2], BreakerSnapshot)
    assert repr(shim) == "AsyncCircuitBreaker(failure_threshold=2)"


async def test_circuit_breaker_exception_counts_and_propagates() -> None:
    error = RuntimeError("down")
    shim = circuit_breaker(Check(error=error), failure_threshold=1)
    with pytest.raises(RuntimeError) as info:
        await shim.run(0)
    assert info.value is error
    assert shim.get_stats().state is CircuitState.OPEN
    assert await shim.run(0) == (False, 0)
    await shim.reset()
    assert shim.get_stats().state is CircuitState.CLOSED


async def test_on_state_change_async_and_failing_are_isolated() -> None:
    seen: list[CircuitState] = []

    async def record(old: CircuitState, new: CircuitState, stats: BreakerSnapshot) -> None:
        seen.append(new)

    def broken(old: CircuitState, new: CircuitState, stats: BreakerSnapshot) -> None:
        raise ValueError("listener bug")

    shim = circuit_breaker(Check(ok=False), failure_threshold=1, on_state_change=record)
    assert await shim.run(0) == (False, 0)
    await shim.guard.aclose()
    assert seen == [CircuitState.OPEN]
    shim2 = circuit_breaker(Check(ok=False), failure_threshold=1, on_state_change=broken)
    assert await shim2.run(0) == (False, 0)


async def test_inner_breaker_rejection_inside_shim_propagates() -> None:
    from headrace_guards import CircuitOpenError

    native = CircuitBreaker(failure_threshold=1)
    await native.force_open()

    async def inner(ctx: int) -> tuple[bool, int]:
        return await native.call(_pair, ctx)

    shim = circuit_breaker(inner, failure_threshold=5)
    with pytest.raises(CircuitOpenError):
        await shim.run(1)


async def _pair(ctx: int) -> tuple[bool, int]:
    return True, ctx


async def test_shims_nest_like_kompoz() -> None:
    with VirtualClock():
        stack = circuit_breaker(limited(with_timeout(Check(), timeout=1), max_concurrent=2))
        assert await stack.run("x") == (True, "x")
        assert isinstance(stack, AsyncCircuitBreaker)
        assert isinstance(stack.inner, AsyncLimited)


def test_shim_validation() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        with_timeout(Check(), timeout=0)
    with pytest.raises(ConfigurationError, match="failure_threshold"):
        circuit_breaker(Check(), failure_threshold=0)
    with pytest.raises(ConfigurationError, match="on_state_change"):
        circuit_breaker(Check(), on_state_change=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="x"):
        with_timeout(42, timeout=1)


# -- interop with kompoz itself ---------------------------------------------------------


async def test_shims_are_kompoz_combinators_when_installed() -> None:
    kompoz = pytest.importorskip(
        "kompoz",
        reason="kompoz requires Python 3.13; this interop test runs in the 3.13 test run",
    )

    async def is_positive(ctx: int) -> bool:
        return ctx > 0

    async def is_even(ctx: int) -> bool:
        return ctx % 2 == 0

    positive = kompoz.async_rule(is_positive)
    even = kompoz.async_rule(is_even)

    guarded = circuit_breaker(with_timeout(positive, timeout=1), failure_threshold=3)
    assert isinstance(guarded, kompoz.AsyncCombinator)
    both = guarded & even
    assert (await both.run(4))[0] is True
    assert (await both.run(3))[0] is False
    either = limited(positive, max_concurrent=2) | even
    assert (await either.run(-2))[0] is True
    assert (await (~guarded).run(-1))[0] is True
    parallel = kompoz.parallel_and(guarded, limited(even, max_concurrent=1))
    assert (await parallel.run(2))[0] is True
