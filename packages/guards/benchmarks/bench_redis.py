"""Per-call cost of Redis-backed components on loopback Redis, beside limits and pyrate-limiter.

Run: ``python packages/guards/benchmarks/bench_redis.py [--quick]`` (in the bench
environment, which has redis-py, ``limits`` and ``pyrate-limiter``). It uses
``HEADRACE_REDIS_URL`` when set, else starts a private ``redis-server`` on a free loopback
port.

Before the timing table it prints the round trips per call of every store-backed case,
counted at the connection (one packed write of redis-py is one round trip; a pipeline
counts once) over a run of calls in a row, after what the components send in the
background (a bulkhead's last release, a throttle's completions) has landed, with the
share of each script (``BULKHEAD_ACQUIRE``, ``THROTTLE_DONE``, ...) or command:

- a CLOSED breaker: one (``record``; admissions are answered from the cached state), and
  two with ``cache_ttl=0`` (admit, record);
- a rate limiter that is never over its rate: one (headrace GCRA; ``limits``' moving
  window and pyrate-limiter's Redis bucket alike);
- a bulkhead: one (each acquire carries the release of the call before it), and two
  with a store whose ``acquire`` takes no ``release=`` (acquire, then the release the
  caller waits for);
- a token budget (a throttle's ``TokenBudget`` on the store): one (the reservation);
- a shared throttle (``Throttle(name=, store=)``): one per admission and one per
  completion (sent without making the call wait).

Timing groups, one per component: time per call beside the same number of bare ``PING``
round trips (the floor: what any store must pay at least), and, for the rate limiter,
beside ``limits`` and ``pyrate-limiter``.
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from headrace_guards import Bulkhead, CircuitBreaker, RateLimiter, _redis_lua
from headrace_guards._redis_base import Script
from headrace_guards.redis import RedisStore
from headrace_throttle import Slot, Throttle, TokenBudget
from shared.bench import Bench

BENCH = Bench("guards: Redis-backed components per call (loopback Redis)")

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

# -- round-trip counting: every packed write of any redis-py connection, by script -------
# Only while the round trips are counted: the timed runs use the client as it is.
_SCRIPTS = {
    Script(source).sha.encode(): name
    for name, source in vars(_redis_lua).items()
    if name.isupper() and not name.startswith("_") and isinstance(source, str)
}


def _label(command: Any) -> str:
    """The script (or command) of one packed write: ``*N $len NAME $len ARG ...``."""
    data = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
    parts = data.split(b"\r\n", 5)
    name = parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
    if name == "EVALSHA" and len(parts) > 4:
        return _SCRIPTS.get(parts[4], "EVALSHA (another library's script)")
    return name


@contextmanager
def _counting() -> Iterator[Counter[str]]:
    sent: Counter[str] = Counter()
    send = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        sent[_label(command)] += 1
        await send(self, command, check_health)

    Connection.send_packed_command = counted  # type: ignore[method-assign, assignment]
    try:
        yield sent
    finally:
        Connection.send_packed_command = send  # type: ignore[method-assign]


async def _quiet(before: set[asyncio.Task[Any]]) -> None:
    """Wait until the tasks started since ``before`` have ended (bounded).

    What a component sends in the background ends; a peer's task that never ends (a
    leaker started before) is not waited for.
    """
    me = asyncio.current_task()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if not [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]:
            return
        await asyncio.sleep(0.001)


_state: dict[str, Any] = {}


async def work() -> int:
    return 1


async def slot_work(slot: Slot) -> int:
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


async def _pings(n: int) -> None:
    client = _client()
    for _ in range(n):
        await client.ping()


def _ping_floor(group: str) -> None:
    """Register the floor of ``group``: one PING round trip per call."""
    BENCH.case(group, "one PING round trip", kind="floor", requires=NEEDS)(_pings)


# -- breaker (closed) --------------------------------------------------------------------
_ping_floor("breaker (closed)")


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
_ping_floor("rate limiter")


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
class _PlainBulkheadStore:
    """The store's bulkhead methods without ``acquire(release=)``: the caller awaits a release."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        return await self._store.acquire(name, limit, lease_id, ttl)

    async def release(self, name: str, lease_id: str) -> None:
        await self._store.release(name, lease_id)

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        return await self._store.renew(name, lease_id, ttl)

    async def in_flight(self, name: str) -> int:
        return await self._store.in_flight(name)


_ping_floor("bulkhead")


@BENCH.case("bulkhead", "headrace Bulkhead(store=RedisStore)", kind="headrace", requires=NEEDS)
async def headrace_bulkhead(n: int) -> None:
    bulkhead = _state.get("bulkhead")
    if bulkhead is None:
        bulkhead = _state["bulkhead"] = Bulkhead(1000, name="bench-bh", store=_store())
    for _ in range(n):
        await bulkhead.call(work)


@BENCH.case(
    "bulkhead",
    "headrace Bulkhead, a store without release= (acquire + awaited release)",
    kind="headrace",
    requires=NEEDS,
)
async def headrace_bulkhead_plain(n: int) -> None:
    bulkhead = _state.get("bulkhead2")
    if bulkhead is None:
        store = _PlainBulkheadStore(_store())
        bulkhead = _state["bulkhead2"] = Bulkhead(1000, name="bench-bh2", store=store)
    for _ in range(n):
        await bulkhead.call(work)


# -- token budget ------------------------------------------------------------------------
_ping_floor("token budget")


@BENCH.case(
    "token budget",
    "headrace Throttle(budgets=[TokenBudget(store=RedisStore)]), tokens=10",
    kind="headrace",
    requires=NEEDS,
)
async def headrace_token_budget(n: int) -> None:
    throttle = _state.get("budget")
    if throttle is None:
        budget = TokenBudget(10**12, 10.0, name="bench-tokens", store=_store())
        throttle = _state["budget"] = Throttle(budgets=[budget])
    for _ in range(n):
        await throttle.execute(slot_work, tokens=10)


# -- shared throttle ---------------------------------------------------------------------
_ping_floor("shared throttle")


@BENCH.case(
    "shared throttle",
    "headrace Throttle(name=, store=RedisStore)",
    kind="headrace",
    requires=NEEDS,
)
async def headrace_shared_throttle(n: int) -> None:
    throttle = _state.get("throttle")
    if throttle is None:
        throttle = _state["throttle"] = Throttle(name="bench-th", store=_store())
    for _ in range(n):
        await throttle.execute(slot_work)


# -- the round-trip table ----------------------------------------------------------------
_CALLS = 200


async def _round_trips() -> list[tuple[str, float, str]]:
    rows = []
    # headrace's cases first: a peer may leave a task running that talks to Redis.
    for case in sorted(BENCH.cases, key=lambda case: case.kind != "headrace"):
        if case.available() is not None or case.kind == "floor":
            continue
        before = asyncio.all_tasks()
        await case.run(20)  # warm up: connect, load scripts, learn the breaker state
        await _quiet(before)
        before = asyncio.all_tasks()
        with _counting() as sent:
            await case.run(_CALLS)
            await _quiet(before)  # what went on in the background counts too
        total = sum(sent.values()) / _CALLS
        shares = ", ".join(f"{name} {count}" for name, count in sent.most_common())
        rows.append((f"{case.group}: {case.name}", total, shares))
    return rows


_ORDER = [f"{case.group}: {case.name}" for case in BENCH.cases]


async def _warm_then_run(quick: bool, only: str | None) -> Any:
    # Connecting, loading the scripts and subscribing happen here, in the loop the timed
    # run uses, so the harness's calibration never sees a first call's setup.
    if URL is not None:
        rows = await _round_trips()
        print(
            f"round trips per call, counted at the connection over {_CALLS} calls in a row"
            " [round trips by script or command]:"
        )
        for name, trips, shares in sorted(rows, key=lambda row: _ORDER.index(row[0])):
            print(f"  {trips:5.2f}  {name}  [{shares}]")
    return await BENCH.run_async(quick=quick, only=only)


def _run(*, quick: bool = False, only: str | None = None) -> Any:
    """Count every case's round trips, then run the timing table."""
    return asyncio.run(_warm_then_run(quick, only))


BENCH.run = _run  # type: ignore[method-assign]


if __name__ == "__main__":
    BENCH.main()
