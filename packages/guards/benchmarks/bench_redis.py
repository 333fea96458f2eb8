"""Per-call cost of Redis-backed guards on loopback Redis, beside limits and pyrate-limiter.

Run: ``python packages/guards/benchmarks/bench_redis.py`` (in the bench environment, which
has redis-py, ``limits`` and ``pyrate-limiter``). It uses ``HEADRACE_REDIS_URL`` when set,
else starts a private ``redis-server`` on a free loopback port. Before the timing table it
prints the round trips per call of every case, counted at the connection (one packed
write of redis-py is one round trip; a pipeline counts once).

Groups: a CLOSED breaker (headrace: one round trip, ``record``), a rate limiter that is
never over its rate (headrace GCRA; limits' moving window; pyrate-limiter's Redis bucket),
and a bulkhead (two round trips: acquire, release). The floor of each group is the same
number of bare ``PING`` round trips: what any store must pay at least.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from headrace_guards import Bulkhead, CircuitBreaker, RateLimiter
from headrace_guards.redis import RedisStore
from shared.bench import Bench

BENCH = Bench("guards: Redis-backed guards per call (loopback Redis)")

_server: subprocess.Popen[bytes] | None = None


def _start_redis() -> str | None:
    global _server
    url = os.environ.get("HEADRACE_REDIS_URL")
    if url:
        return url
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _server = server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    atexit.register(_stop, server)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.01)
    return None


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=5)


URL = _start_redis()
# Without a server the cases are listed as unavailable instead of failing.
NEEDS: tuple[str, ...] = () if URL is not None else ("redis_server_on_loopback",)

# -- round-trip counting: every packed write of any redis-py connection ----------------
ROUND_TRIPS = [0]
_send = Connection.send_packed_command


async def _counted_send(self: Connection, command: Any, check_health: bool = True) -> None:
    ROUND_TRIPS[0] += 1
    await _send(self, command, check_health)


Connection.send_packed_command = _counted_send  # type: ignore[method-assign, assignment]

_state: dict[str, Any] = {}


async def work() -> int:
    return 1


def _store() -> RedisStore:
    if "store" not in _state:
        assert URL is not None
        _state["store"] = RedisStore.from_url(URL, prefix="bench:", timeout=1.0)
    store: RedisStore = _state["store"]
    return store


def _client() -> Any:
    if "client" not in _state:
        assert URL is not None
        _state["client"] = Redis.from_url(URL)
    return _state["client"]


# -- breaker (closed) --------------------------------------------------------------------
@BENCH.case("breaker (closed)", "one PING round trip", kind="floor", requires=NEEDS)
async def ping_once(n: int) -> None:
    client = _client()
    for _ in range(n):
        await client.ping()


@BENCH.case(
    "breaker (closed)", "headrace CircuitBreaker(store=RedisStore)", kind="headrace", requires=NEEDS
)
async def headrace_breaker(n: int) -> None:
    breaker = _state.get("breaker")
    if breaker is None:
        breaker = _state["breaker"] = CircuitBreaker("bench-cb", store=_store())
    for _ in range(n):
        await breaker.call(work)


@BENCH.case(
    "breaker (closed)",
    "headrace CircuitBreaker, cache_ttl=0 (admit + record)",
    kind="headrace",
    requires=NEEDS,
)
async def headrace_breaker_uncached(n: int) -> None:
    breaker = _state.get("breaker0")
    if breaker is None:
        assert URL is not None
        store = RedisStore.from_url(URL, prefix="bench0:", timeout=1.0, cache_ttl=0)
        breaker = _state["breaker0"] = CircuitBreaker("bench-cb0", store=store)
    for _ in range(n):
        await breaker.call(work)


# -- rate limiter ------------------------------------------------------------------------
@BENCH.case("rate limiter", "one PING round trip", kind="floor", requires=NEEDS)
async def ping_rate(n: int) -> None:
    await ping_once(n)


@BENCH.case(
    "rate limiter", "headrace RateLimiter(store=RedisStore)", kind="headrace", requires=NEEDS
)
async def headrace_rate(n: int) -> None:
    limiter = _state.get("limiter")
    if limiter is None:
        limiter = _state["limiter"] = RateLimiter(1e9, name="bench-rl", store=_store())
    for _ in range(n):
        await limiter.acquire()


@BENCH.case(
    "rate limiter", "limits moving window (redis-py)", kind="peer", requires=("limits", *NEEDS)
)
async def limits_moving_window(n: int) -> None:
    if "limits" not in _state:
        from limits import parse
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        assert URL is not None
        storage = RedisStorage("async+" + URL, implementation="redispy")
        _state["limits"] = (MovingWindowRateLimiter(storage), parse("100000/second"))
    limiter, item = _state["limits"]
    for _ in range(n):
        await limiter.hit(item, "bench")


@BENCH.case(
    "rate limiter", "pyrate-limiter RedisBucket", kind="peer", requires=("pyrate_limiter", *NEEDS)
)
async def pyrate_bucket(n: int) -> None:
    if "pyrate" not in _state:
        from pyrate_limiter import Duration, Limiter, Rate
        from pyrate_limiter.buckets import RedisBucket

        bucket = await RedisBucket.init([Rate(100_000, Duration.SECOND)], _client(), "bench-pyrate")
        _state["pyrate"] = Limiter(bucket)
    limiter = _state["pyrate"]
    for _ in range(n):
        await limiter.try_acquire_async("bench", blocking=False)


# -- bulkhead ----------------------------------------------------------------------------
@BENCH.case("bulkhead", "two PING round trips", kind="floor", requires=NEEDS)
async def ping_twice(n: int) -> None:
    client = _client()
    for _ in range(n):
        await client.ping()
        await client.ping()


@BENCH.case("bulkhead", "headrace Bulkhead(store=RedisStore)", kind="headrace", requires=NEEDS)
async def headrace_bulkhead(n: int) -> None:
    bulkhead = _state.get("bulkhead")
    if bulkhead is None:
        bulkhead = _state["bulkhead"] = Bulkhead(1000, name="bench-bh", store=_store())
    for _ in range(n):
        await bulkhead.call(work)


async def _round_trips() -> list[tuple[str, float]]:
    rows = []
    for case in BENCH.cases:
        if case.available() is not None or case.kind == "floor":
            continue
        await case.run(20)  # warm up: connect, load scripts, learn the breaker state
        before = ROUND_TRIPS[0]
        await case.run(200)
        rows.append((f"{case.group}: {case.name}", (ROUND_TRIPS[0] - before) / 200))
    return rows


async def _warm_then_run(quick: bool, only: str | None) -> Any:
    # Connecting, loading the scripts and subscribing happen here, in the loop the timed
    # run uses, so the harness's calibration never sees a first call's setup.
    if URL is not None:
        rows = await _round_trips()
        print("round trips per call (counted at the connection):")
        for name, trips in rows:
            print(f"  {trips:5.2f}  {name}")
    return await BENCH.run_async(quick=quick, only=only)


def _run(*, quick: bool = False, only: str | None = None) -> Any:
    """Warm every case up and count its round trips, then run the timing table."""
    return asyncio.run(_warm_then_run(quick, only))


BENCH.run = _run  # type: ignore[method-assign]


if __name__ == "__main__":
    BENCH.main()
