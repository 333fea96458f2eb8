"""Several real processes on one redis-server: a shared rate, a shared open breaker, crashes.

Ruling 10 allows the real waits and sub-second TTLs used here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from headrace_guards import CircuitBreaker, CircuitOpenError, CircuitState, RateLimiter
from headrace_guards.redis import RedisStore

pytestmark = pytest.mark.redis

_WORKER = """
import asyncio, json, sys
from redis.asyncio import Redis
from headrace_guards import CircuitBreaker, CircuitOpenError, RateLimiter
from headrace_guards.redis import RedisStore

url, prefix, n, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def ok():
    return "ok"

async def main():
    store = RedisStore.from_url(url, prefix=prefix, timeout=2.0)
    admin = Redis.from_url(url)
    limiter = RateLimiter(40, burst=1, name="api", store=store)
    breaker = CircuitBreaker("svc", failure_threshold=3, recovery_timeout=30, store=store)
    for _ in range(3):
        await breaker.call(ok)  # this worker now trusts CLOSED
    await admin.incr(prefix + "ready")
    while int(await admin.get(prefix + "ready") or 0) < workers:
        await asyncio.sleep(0.002)
    sec, usec = await admin.time()
    start = sec + usec / 1e6
    for _ in range(n):
        await limiter.acquire()
    sec, usec = await admin.time()
    end = sec + usec / 1e6
    await admin.incr(prefix + "done")
    while not await admin.get(prefix + "tripped"):
        await asyncio.sleep(0.002)
    try:
        await breaker.call(ok)
        rejected = False
    except CircuitOpenError:
        rejected = True
    print(json.dumps({"start": start, "end": end, "rejected": rejected,
                      "state": breaker.state.value}), flush=True)
    await admin.aclose()
    await store.aclose()

asyncio.run(main())
"""

_HOLDER = """
import asyncio, sys
from headrace_guards import Bulkhead, CircuitBreaker
from headrace_guards.redis import RedisStore

url, prefix = sys.argv[1], sys.argv[2]

async def main():
    store = RedisStore.from_url(url, prefix=prefix, timeout=2.0, lease_ttl=0.8, probe_ttl=1.6)
    bulkhead = Bulkhead(1, name="pool", store=store)
    breaker = CircuitBreaker("svc", failure_threshold=1, recovery_timeout=0.2, store=store)
    inside = 0
    async def hang():
        nonlocal inside
        inside += 1
        if inside == 2:
            print("held", flush=True)
        await asyncio.Event().wait()
    await asyncio.gather(bulkhead.call(hang), breaker.call(hang))

asyncio.run(main())
"""

# A worker killed right after a bulkhead call returned: the slot it gave back is released
# by the next acquire or at the loop's next turn, and the process dies before either.
_GIVER = """
import asyncio, os, signal, sys
from headrace_guards import Bulkhead
from headrace_guards.redis import RedisStore

url, prefix = sys.argv[1], sys.argv[2]

async def ok():
    return "ok"

async def main():
    store = RedisStore.from_url(url, prefix=prefix, timeout=2.0, lease_ttl=2.0)
    await Bulkhead(1, name="pool", store=store).call(ok)
    print("given back", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_CHILD_ENV,
    )


# Children keep compiled bytecode in a cache of their own, so that every run after the
# first starts quickly even where the environment's site-packages hold none.
_CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
_CHILD_ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "headrace-pycache")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"p{uuid.uuid4().hex[:10]}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _wait_for(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the workers")
        time.sleep(0.005)


def _healthy(store: RedisStore) -> bool:
    return store.healthy


async def _trip(url: str, prefix: str, threshold: int, recovery: float) -> None:
    store = RedisStore.from_url(url, prefix=prefix, timeout=2.0)
    breaker = CircuitBreaker(
        "svc", failure_threshold=threshold, recovery_timeout=recovery, store=store
    )

    async def boom() -> None:
        raise ValueError("boom")

    for _ in range(threshold):
        with pytest.raises(ValueError, match="boom"):
            await breaker.call(boom)
    assert breaker.state is CircuitState.OPEN
    await store.aclose()


def test_processes_share_one_rate_and_one_open_breaker(redis_url: str, prefix: str) -> None:
    workers, each = 3, 8
    procs = [_spawn(_WORKER, redis_url, prefix, str(each), str(workers)) for _ in range(workers)]
    admin = redis.Redis.from_url(redis_url)
    try:
        _wait_for(lambda: int(admin.get(prefix + "done") or 0) == workers)
        asyncio.run(_trip(redis_url, prefix, 3, 30))
        admin.set(prefix + "tripped", 1)
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for proc in procs:
            proc.kill()
        admin.close()
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    # 24 tokens at 40/s with a burst of 1 need 23 intervals: 0.575 s in all. One process
    # alone (8 tokens) would need only 0.175 s, so this proves the rate is global.
    assert span >= (workers * each - 1) / 40 - 0.01
    assert span < 6.0
    assert all(r["rejected"] for r in results)
    assert all(r["state"] == "open" for r in results)


def test_killed_worker_gives_back_its_slot_and_its_probe(redis_url: str, prefix: str) -> None:
    asyncio.run(_trip(redis_url, prefix, 1, 0.2))
    time.sleep(0.22)  # the breaker is due for HALF_OPEN
    proc = _spawn(_HOLDER, redis_url, prefix)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "held", proc.stderr.read() if proc.stderr else ""
        held_at = time.monotonic()

        async def probe_and_slot() -> tuple[bool, bool]:
            store = RedisStore.from_url(redis_url, prefix=prefix, timeout=2.0)
            try:
                allowed, _, state, _ = await store.admit(
                    "svc", 0.0, threshold=1, recovery_timeout=0.2
                )
                assert state is CircuitState.HALF_OPEN
                slot = await store.acquire("pool", 1, "parent", 30)
                if slot:
                    await store.release("pool", "parent")
                return allowed, slot
            finally:
                await store.aclose()

        time.sleep(1.0)  # longer than lease_ttl: the live holder renews its lease
        assert asyncio.run(probe_and_slot()) == (False, False)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        killed_at = time.monotonic()
        assert asyncio.run(probe_and_slot()) == (False, False)  # still taken...
        slot_free = probe_free = None
        while slot_free is None or probe_free is None:  # ...until their TTLs pass
            assert time.monotonic() < killed_at + 5
            probe, slot = asyncio.run(probe_and_slot())
            now = time.monotonic()
            if slot and slot_free is None:
                slot_free = now
            if probe and probe_free is None:
                probe_free = now
            time.sleep(0.02)
        assert slot_free - killed_at <= 0.8 + 0.6  # lease_ttl after the last renewal
        assert probe_free - held_at >= 1.0  # taken after the kill (checked above)...
        assert probe_free - held_at <= 1.6 + 0.8  # ...free once probe_ttl passed
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_redis_restart_mid_run(redis_server: Any, redis_url: str, prefix: str) -> None:
    a = RedisStore.from_url(redis_url, prefix=prefix, timeout=3.0)
    b = RedisStore.from_url(redis_url, prefix=prefix, timeout=3.0)
    try:
        breaker_a = CircuitBreaker("svc", failure_threshold=2, store=a)
        breaker_b = CircuitBreaker("svc", failure_threshold=2, store=b)
        limiter = RateLimiter(1000, name="api", store=a)

        async def ok() -> str:
            return "ok"

        async def boom() -> None:
            raise ValueError("boom")

        for _ in range(3):
            await breaker_b.call(ok)
            await limiter.acquire()
        redis_server.stop()
        for _ in range(3):  # fail open while Redis is away
            assert await breaker_a.call(ok) == "ok"
            await limiter.acquire()
        assert not _healthy(a)
        redis_server.start()
        await limiter.acquire()  # reconnects and reloads the script (NOSCRIPT)
        assert _healthy(a)
        for _ in range(2):
            with pytest.raises(ValueError, match="boom"):
                await breaker_a.call(boom)
        assert breaker_a.state is CircuitState.OPEN
        # b lost its transition channel with the restart: it must ask Redis, not trust
        # the CLOSED state it learned before.
        with pytest.raises(CircuitOpenError):
            await breaker_b.call(ok)
    finally:
        await a.aclose()
        await b.aclose()


def test_a_slot_given_back_by_a_killed_worker_comes_back_by_its_ttl(
    redis_url: str, prefix: str
) -> None:
    async def held() -> int:
        store = RedisStore.from_url(redis_url, prefix=prefix, timeout=2.0)
        try:
            return await store.in_flight("pool")
        finally:
            await store.aclose()

    proc = _spawn(_GIVER, redis_url, prefix)
    try:
        out, err = proc.communicate(timeout=15)
        killed_at = time.monotonic()
        assert out.strip() == "given back", err
        assert proc.returncode == -signal.SIGKILL
        assert asyncio.run(held()) == 1  # its release was never sent ...
        while asyncio.run(held()) == 1:  # ... and the lease ends by its TTL
            assert time.monotonic() < killed_at + 5
            time.sleep(0.02)
        assert time.monotonic() - killed_at <= 2.0 + 0.6
    finally:
        proc.kill()
        proc.wait(timeout=5)
