"""Per-call overhead of headrace guards over a bare ``await f()``, side by side with peers.

Run: ``python packages/guards/benchmarks/bench_guards.py`` (peers are installed in the
bench environment; kompoz needs Python 3.13). Each case performs ``n`` guarded calls of
a coroutine function that returns at once, so the figure is the guard's own cost.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_core.backoff import fixed
from headrace_guards import (
    Bulkhead,
    CircuitBreaker,
    RateLimiter,
    Retry,
    Timeout,
    pipeline,
)
from headrace_guards.compat import circuit_breaker, limited, with_timeout
from shared.bench import Bench


def _optional(module: str) -> Any:
    """Import a peer at module load (so no case pays for the import), or None if missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# Peers, imported once up front: the harness calibrates each case on its first run.
aiobreaker = _optional("aiobreaker")
aiolimiter = _optional("aiolimiter")
circuitbreaker = _optional("circuitbreaker")
kompoz = _optional("kompoz")
purgatory = _optional("purgatory")
pybreaker = _optional("pybreaker")
stamina = _optional("stamina")
tenacity = _optional("tenacity")
hyx_bulkhead = _optional("hyx.bulkhead")
hyx_circuitbreaker = _optional("hyx.circuitbreaker")
hyx_ratelimit = _optional("hyx.ratelimit")
hyx_retry = _optional("hyx.retry")
hyx_timeout = _optional("hyx.timeout")

BENCH = Bench("guards: per-call overhead over a bare await")


async def work() -> int:
    return 1


async def kompoz_ctx_check(ctx: Any) -> tuple[bool, Any]:
    return True, ctx


# -- floor: a bare await (shared by every group) -----------------------------------------


def _floor(group: str) -> None:
    @BENCH.case(group, "bare await f()", kind="floor")
    async def run(n: int) -> None:
        f = work
        for _ in range(n):
            await f()


# -- closed breaker ------------------------------------------------------------------------

_floor("closed breaker")


@BENCH.case("closed breaker", "headrace CircuitBreaker.call", kind="headrace")
async def hr_breaker(n: int) -> None:
    breaker = CircuitBreaker("bench")
    call, f = breaker.call, work
    for _ in range(n):
        await call(f)


@BENCH.case("closed breaker", "headrace @CircuitBreaker", kind="headrace")
async def hr_breaker_decorated(n: int) -> None:
    f = CircuitBreaker()(work)
    for _ in range(n):
        await f()


@BENCH.case("closed breaker", "aiobreaker call_async", kind="peer", requires=("aiobreaker",))
async def aiobreaker_case(n: int) -> None:
    breaker = aiobreaker.CircuitBreaker()
    call, f = breaker.call_async, work
    for _ in range(n):
        await call(f)


@BENCH.case(
    "closed breaker",
    "pybreaker call (sync, on the coroutine)",
    kind="peer",
    requires=("pybreaker",),
)
async def pybreaker_case(n: int) -> None:
    breaker = pybreaker.CircuitBreaker()
    call, f = breaker.call, work
    for _ in range(n):
        await call(f)


@BENCH.case("closed breaker", "circuitbreaker @circuit", kind="peer", requires=("circuitbreaker",))
async def circuitbreaker_case(n: int) -> None:
    f = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(work)
    for _ in range(n):
        await f()


@BENCH.case("closed breaker", "purgatory async with", kind="peer", requires=("purgatory",))
async def purgatory_case(n: int) -> None:
    factory = purgatory.AsyncCircuitBreakerFactory()
    f = factory("bench")(work)
    for _ in range(n):
        await f()


@BENCH.case("closed breaker", "hyx consecutive_breaker", kind="peer", requires=("hyx",))
async def hyx_breaker_case(n: int) -> None:
    consecutive_breaker = hyx_circuitbreaker.consecutive_breaker
    f = consecutive_breaker()(work)
    for _ in range(n):
        await f()


@BENCH.case("closed breaker", "kompoz circuit_breaker.run", kind="peer", requires=("kompoz",))
async def kompoz_breaker_case(n: int) -> None:
    check = kompoz.circuit_breaker(kompoz.AsyncPredicate(_kompoz_true, "true"))
    run = check.run
    for _ in range(n):
        await run(None)


async def _kompoz_true(ctx: Any) -> bool:
    return True


# -- uncontended bulkhead -----------------------------------------------------------------

_floor("uncontended bulkhead")


@BENCH.case("uncontended bulkhead", "async with asyncio.Semaphore", kind="raw")
async def raw_semaphore(n: int) -> None:
    sem = asyncio.Semaphore(10)
    f = work
    for _ in range(n):
        async with sem:
            await f()


@BENCH.case("uncontended bulkhead", "headrace Bulkhead.call", kind="headrace")
async def hr_bulkhead(n: int) -> None:
    call, f = Bulkhead(10).call, work
    for _ in range(n):
        await call(f)


@BENCH.case("uncontended bulkhead", "headrace async with Bulkhead", kind="headrace")
async def hr_bulkhead_with(n: int) -> None:
    bulkhead, f = Bulkhead(10), work
    for _ in range(n):
        async with bulkhead:
            await f()


@BENCH.case("uncontended bulkhead", "hyx bulkhead", kind="peer", requires=("hyx",))
async def hyx_bulkhead_case(n: int) -> None:
    bulkhead = hyx_bulkhead.bulkhead
    f = bulkhead(max_concurrency=10, max_capacity=100)(work)
    for _ in range(n):
        await f()


@BENCH.case("uncontended bulkhead", "kompoz limited.run", kind="peer", requires=("kompoz",))
async def kompoz_limited_case(n: int) -> None:
    run = kompoz.limited(kompoz.AsyncPredicate(_kompoz_true, "true"), max_concurrent=10).run
    for _ in range(n):
        await run(None)


# -- timeout ------------------------------------------------------------------------------

_floor("timeout")


@BENCH.case("timeout", "async with asyncio.timeout", kind="raw")
async def raw_timeout(n: int) -> None:
    f = work
    for _ in range(n):
        async with asyncio.timeout(10):
            await f()


@BENCH.case("timeout", "headrace Timeout.call", kind="headrace")
async def hr_timeout(n: int) -> None:
    call, f = Timeout(10).call, work
    for _ in range(n):
        await call(f)


@BENCH.case("timeout", "headrace async with Timeout", kind="headrace")
async def hr_timeout_with(n: int) -> None:
    guard, f = Timeout(10), work
    for _ in range(n):
        async with guard:
            await f()


@BENCH.case("timeout", "hyx timeout", kind="peer", requires=("hyx",))
async def hyx_timeout_case(n: int) -> None:
    timeout = hyx_timeout.timeout
    f = timeout(10)(work)
    for _ in range(n):
        await f()


@BENCH.case("timeout", "kompoz with_timeout.run", kind="peer", requires=("kompoz",))
async def kompoz_timeout_case(n: int) -> None:
    run = kompoz.with_timeout(kompoz.AsyncPredicate(_kompoz_true, "true"), timeout=10).run
    for _ in range(n):
        await run(None)


# -- retry, success at the first attempt ----------------------------------------------------

_floor("retry (first try succeeds)")


@BENCH.case("retry (first try succeeds)", "headrace Retry.call", kind="headrace")
async def hr_retry(n: int) -> None:
    call, f = Retry(3).call, work
    for _ in range(n):
        await call(f)


@BENCH.case(
    "retry (first try succeeds)", "tenacity AsyncRetrying", kind="peer", requires=("tenacity",)
)
async def tenacity_case(n: int) -> None:
    f = tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none())(work)
    for _ in range(n):
        await f()


@BENCH.case("retry (first try succeeds)", "stamina @retry", kind="peer", requires=("stamina",))
async def stamina_case(n: int) -> None:
    f = stamina.retry(on=Exception, attempts=3)(work)
    for _ in range(n):
        await f()


@BENCH.case("retry (first try succeeds)", "hyx retry", kind="peer", requires=("hyx",))
async def hyx_retry_case(n: int) -> None:
    retry = hyx_retry.retry
    f = retry(attempts=3)(work)
    for _ in range(n):
        await f()


# -- rate limiter with budget ------------------------------------------------------------

_floor("rate limiter (budget left)")


@BENCH.case("rate limiter (budget left)", "headrace RateLimiter.call", kind="headrace")
async def hr_rate(n: int) -> None:
    call, f = RateLimiter(1e12, burst=10**9).call, work
    for _ in range(n):
        await call(f)


@BENCH.case(
    "rate limiter (budget left)", "aiolimiter async with", kind="peer", requires=("aiolimiter",)
)
async def aiolimiter_case(n: int) -> None:
    limiter, f = aiolimiter.AsyncLimiter(1e12, 1), work
    for _ in range(n):
        async with limiter:
            await f()


@BENCH.case("rate limiter (budget left)", "hyx tokenbucket", kind="peer", requires=("hyx",))
async def hyx_rate_case(n: int) -> None:
    tokenbucket = hyx_ratelimit.tokenbucket
    f = tokenbucket(max_executions=1e12, per_time_secs=1, bucket_size=1e12)(work)
    for _ in range(n):
        await f()


# -- the whole stack ---------------------------------------------------------------------

_floor("stack: retry+breaker+timeout+bulkhead")


@BENCH.case("stack: retry+breaker+timeout+bulkhead", "headrace pipeline(...).call", kind="headrace")
async def hr_stack(n: int) -> None:
    stack = pipeline(Retry(3, backoff=fixed(0.01)), CircuitBreaker(), Timeout(10), Bulkhead(10))
    call, f = stack.call, work
    for _ in range(n):
        await call(f)


@BENCH.case(
    "stack: retry+breaker+timeout+bulkhead",
    "headrace compat circuit_breaker(limited(with_timeout))",
    kind="headrace",
)
async def hr_compat_stack(n: int) -> None:
    run = circuit_breaker(
        limited(with_timeout(kompoz_ctx_check, timeout=10), max_concurrent=10)
    ).run
    for _ in range(n):
        await run(None)


@BENCH.case(
    "stack: retry+breaker+timeout+bulkhead",
    "kompoz circuit_breaker(limited(with_timeout))",
    kind="peer",
    requires=("kompoz",),
)
async def kompoz_stack(n: int) -> None:
    inner = kompoz.AsyncPredicate(_kompoz_true, "true")
    run = kompoz.circuit_breaker(
        kompoz.limited(kompoz.with_timeout(inner, timeout=10), max_concurrent=10)
    ).run
    for _ in range(n):
        await run(None)


if __name__ == "__main__":
    BENCH.main()
