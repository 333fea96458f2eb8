"""Throttle benchmarks: per-call overhead and saturating throughput, against the peers.

Run from a checkout: ``python packages/throttle/benchmarks/bench_throttle.py``.

A) sequential per-call overhead of a trivial coroutine (nothing ever waits);
A2) the same with a RequestBudget + a TokenBudget, with a window that holds about one
    charge and with one that holds 100k (the cost must not grow with the window);
B) 10k ``sleep(0)`` calls at limit 64, all tasks created at once.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_throttle import RequestBudget, Slot, Throttle, TokenBudget
from shared.bench import Bench

BENCH = Bench("throttle: execute() overhead and saturating throughput")

A = "A sequential trivial call"
A2 = "A2 with request + token budget"
B = "B 10k sleep(0) at limit 64"
N_B = 10_000


async def trivial() -> int:
    return 1


async def trivial_slot(slot: Slot) -> int:
    return 1


class Floor:
    """The least a concurrency cap can do: a counter, and a deque of futures when full."""

    __slots__ = ("limit", "n", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.n = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self.n < self.limit and not self.waiters:
            self.n += 1
        else:
            future = asyncio.get_running_loop().create_future()
            self.waiters.append(future)
            await future
        try:
            return await fn()
        finally:
            if self.waiters:
                self.waiters.popleft().set_result(None)  # hand the slot over
            else:
                self.n -= 1


# -- A: sequential --------------------------------------------------------------------
@BENCH.case(A, "bare await", kind="raw")
async def a_raw(n: int) -> None:
    for _ in range(n):
        await trivial()


@BENCH.case(A, "hand-written floor", kind="floor")
async def a_floor(n: int) -> None:
    floor = Floor(64)
    for _ in range(n):
        await floor.run(trivial)


@BENCH.case(A, "headrace Throttle.execute", kind="headrace")
async def a_headrace(n: int) -> None:
    t = Throttle(64)
    for _ in range(n):
        await t.execute(trivial_slot)


@BENCH.case(A, "headrace Throttle.acquire", kind="headrace")
async def a_headrace_acquire(n: int) -> None:
    t = Throttle(64)
    for _ in range(n):
        async with t.acquire():
            await trivial()


@BENCH.case(A, "asyncio.Semaphore", kind="peer")
async def a_semaphore(n: int) -> None:
    sem = asyncio.Semaphore(64)
    for _ in range(n):
        async with sem:
            await trivial()


@BENCH.case(A, "aiolimiter.AsyncLimiter", kind="peer", requires=("aiolimiter",))
async def a_aiolimiter(n: int) -> None:
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(1e12, 1)
    for _ in range(n):
        async with limiter:
            await trivial()


@BENCH.case(A, "asynciolimiter.Limiter", kind="peer", requires=("asynciolimiter",))
async def a_asynciolimiter(n: int) -> None:
    limiter = importlib.import_module("asynciolimiter").Limiter(1e12)
    for _ in range(n):
        await limiter.wait()
        await trivial()
    limiter.close()


@BENCH.case(A, "gentlify execute", kind="peer", requires=("gentlify",))
async def a_gentlify(n: int) -> None:
    from gentlify import Throttle as GThrottle

    t = GThrottle(max_concurrency=64, min_dispatch_interval=0.0, jitter_fraction=0.0)
    for _ in range(n):
        await t.execute(trivial_slot)


# -- A2: budgets ----------------------------------------------------------------------
def _budgeted(window: float, prefill: int) -> Throttle:
    rpm = RequestBudget(10**12, window)
    tpm = TokenBudget(10**12, window)
    for budget in (rpm, tpm):
        for _ in range(prefill):
            budget._charge(1, 0.0)  # the loop clock is far past 0.0 (monotonic seconds)
    return Throttle(64, budgets=[rpm, tpm])


async def _record(slot: Slot) -> int:
    slot.record_tokens(7)
    return 1


@BENCH.case(A2, "bare await", kind="raw")
async def a2_raw(n: int) -> None:
    for _ in range(n):
        await trivial()


# Built at import (outside the timed runs): filling a window of 100k charges takes a while.
# The small window expires every charge at once (about one entry); the large one keeps
# every charge (100k, growing with each call).
_SMALL = _budgeted(1e-9, 10)
_LARGE = _budgeted(1e18, 100_000)
_CACHE: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


@BENCH.case(A2, "headrace, window ~1 entry", kind="headrace")
async def a2_small(n: int) -> None:
    t = _SMALL
    for _ in range(n):
        await t.execute(_record, tokens=5)


@BENCH.case(A2, "headrace, window 100k+ entries", kind="headrace")
async def a2_large(n: int) -> None:
    t = _LARGE
    for _ in range(n):
        await t.execute(_record, tokens=5)


@BENCH.case(A2, "gentlify + token_budget (10k entries)", kind="peer", requires=("gentlify",))
async def a2_gentlify(n: int) -> None:
    from gentlify import Throttle as GThrottle
    from gentlify import TokenBudget as GBudget

    def build() -> Any:
        t = GThrottle(
            max_concurrency=64,
            min_dispatch_interval=0.0,
            jitter_fraction=0.0,
            token_budget=GBudget(max_tokens=10**12, window_seconds=1e9),
        )
        for _ in range(10_000):
            t.record_tokens(1)
        return t

    t = _cached("gentlify", build)  # its own calls add to the window, as in real use
    for _ in range(n):
        await t.execute(_record)


# -- B: saturating ----------------------------------------------------------------------
async def sleep0() -> None:
    await asyncio.sleep(0)


async def sleep0_slot(slot: Slot) -> None:
    await asyncio.sleep(0)


@BENCH.case(B, "raw gather (unbounded)", kind="raw", ops=N_B)
async def b_raw(n: int) -> None:
    for _ in range(n):
        await asyncio.gather(*(sleep0() for _ in range(N_B)))


@BENCH.case(B, "hand-written floor(64)", kind="floor", ops=N_B)
async def b_floor(n: int) -> None:
    for _ in range(n):
        floor = Floor(64)
        await asyncio.gather(*(floor.run(sleep0) for _ in range(N_B)))


@BENCH.case(B, "headrace Throttle(64).execute", kind="headrace", ops=N_B)
async def b_headrace(n: int) -> None:
    for _ in range(n):
        t = Throttle(64)
        await asyncio.gather(*(t.execute(sleep0_slot) for _ in range(N_B)))


@BENCH.case(B, "asyncio.Semaphore(64)", kind="peer", ops=N_B)
async def b_semaphore(n: int) -> None:
    async def one(sem: asyncio.Semaphore) -> None:
        async with sem:
            await asyncio.sleep(0)

    for _ in range(n):
        sem = asyncio.Semaphore(64)
        await asyncio.gather(*(one(sem) for _ in range(N_B)))


@BENCH.case(B, "gentlify execute(64)", kind="peer", ops=N_B, requires=("gentlify",))
async def b_gentlify(n: int) -> None:
    from gentlify import Throttle as GThrottle

    for _ in range(n):
        t = GThrottle(max_concurrency=64, min_dispatch_interval=0.0, jitter_fraction=0.0)
        await asyncio.gather(*(t.execute(sleep0_slot) for _ in range(N_B)))


@BENCH.case(B, "Semaphore(64) + aiolimiter", kind="peer", ops=N_B, requires=("aiolimiter",))
async def b_aiolimiter(n: int) -> None:
    from aiolimiter import AsyncLimiter

    async def one(sem: asyncio.Semaphore, limiter: AsyncLimiter) -> None:
        async with sem, limiter:
            await asyncio.sleep(0)

    for _ in range(n):
        sem = asyncio.Semaphore(64)
        limiter = AsyncLimiter(1e12, 1)
        await asyncio.gather(*(one(sem, limiter) for _ in range(N_B)))


@BENCH.case(B, "aiometer.run_on_each(max_at_once=64)", kind="peer", ops=N_B, requires=("aiometer",))
async def b_aiometer(n: int) -> None:
    aiometer = importlib.import_module("aiometer")

    async def one(_: int) -> None:
        await asyncio.sleep(0)

    items = list(range(N_B))
    for _ in range(n):
        await aiometer.run_on_each(one, items, max_at_once=64)


@BENCH.case(
    B, "asynciolimiter (1e12/s, no cap)", kind="peer", ops=N_B, requires=("asynciolimiter",)
)
async def b_asynciolimiter(n: int) -> None:
    limiter_class = importlib.import_module("asynciolimiter").Limiter

    async def one(limiter: Any) -> None:
        await limiter.wait()
        await asyncio.sleep(0)

    for _ in range(n):
        limiter = limiter_class(1e12)
        await asyncio.gather(*(one(limiter) for _ in range(N_B)))
        limiter.close()


if __name__ == "__main__":
    BENCH.main()
