"""The shared throttle for real: worker processes, a busy HTTP server, and Redis.

Three (or more) processes send requests through ``Throttle(store=RedisStore, name=...)``
to a server on loopback that answers 429 with ``Retry-After`` when more than its threshold
of requests are in flight. Real processes and a real server run on the real clock: these
tests take a few seconds each.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.busy_http import get
from shared.pytest_fixtures import REPOSITORY, child_env, free_port

pytestmark = pytest.mark.redis


class Busy:
    """The busy HTTP server, in a process of its own."""

    def __init__(self, threshold: int, delay: float, retry_after: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.busy_http",
                *(str(v) for v in (self.port, threshold, delay, retry_after)),
            ],
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=REPOSITORY,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"

    def stats(self) -> dict[str, Any]:
        import asyncio

        status, _, body = asyncio.run(get(self.port, "/stats"))
        assert status == 200
        result: dict[str, Any] = json.loads(body)
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def busy() -> Iterator[Any]:
    servers: list[Busy] = []

    def start(threshold: int, delay: float = 0.05, retry_after: float = 0.3) -> Busy:
        server = Busy(threshold, delay, retry_after)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def workers(
    url: str,
    port: int,
    mode: str,
    *,
    n: int = 3,
    requests: int = 20,
    limit: int = 4,
    ttl: float = 30.0,
) -> list[subprocess.Popen[bytes]]:
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.throttle_worker",
                url,
                *(str(v) for v in (port, mode, requests, limit, ttl)),
            ],
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=REPOSITORY,
        )
        for _ in range(n)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"started"
    return processes


def results(processes: list[subprocess.Popen[bytes]]) -> list[dict[str, int]]:
    out = []
    for process in processes:
        assert process.stdout is not None
        # Read through the pipe's buffer (readline() may already hold the last line).
        lines = process.stdout.read().splitlines()
        process.stdout.close()
        assert process.wait(60) == 0
        out.append(json.loads(lines[-1]))
    return out


def test_the_server_never_sees_more_than_the_shared_limit(redis_url: str, busy: Any) -> None:
    server = busy(threshold=4)
    done = results(workers(redis_url, server.port, "shared", limit=4))
    stats = server.stats()
    assert stats["peak"] <= 4  # three processes of 4 each, and never over 4 together
    assert stats["refused"] == 0
    assert sum(r["ok"] for r in done) == 60


def test_local_throttles_overload_the_server_where_a_shared_one_does_not(
    redis_url: str, busy: Any
) -> None:
    local = busy(threshold=4)
    results(workers(redis_url, local.port, "local", limit=4))
    shared = busy(threshold=4)
    results(workers(redis_url, shared.port, "shared", limit=4))
    local_stats, shared_stats = local.stats(), shared.stats()
    print(  # the figures of the closing note
        f"429s: local {local_stats['refused']}, shared {shared_stats['refused']}; "
        f"peak in flight: local {local_stats['peak']}, shared {shared_stats['peak']}"
    )
    # Each local throttle keeps to 4, together 12: the server refuses what is over 4.
    assert local_stats["refused"] > shared_stats["refused"] == 0


def test_after_a_429_every_process_holds_until_the_hint(redis_url: str, busy: Any) -> None:
    # The shared limit starts above what the server takes: the first 429s come, and
    # their Retry-After holds every process.
    server = busy(threshold=2, delay=0.05, retry_after=0.5)
    done = results(workers(redis_url, server.port, "shared", limit=8))
    stats = server.stats()
    assert stats["refused"] >= 1
    first = min(stats["refusals"])
    quiet = [t for t in stats["arrivals"] if first + 0.1 < t < first + 0.5 - 0.05]
    after = [t - first for t in stats["arrivals"] if t > first + 0.1]
    print(  # the figures of the closing note
        f"after the first 429 the next request came {min(after, default=float('nan')):.3f} s "
        f"later (hint 0.5 s); 429s {stats['refused']}"
    )
    assert quiet == []  # no process sent a request while the hint held
    assert sum(r["ok"] + r["busy"] for r in done) == 60


def test_a_killed_workers_leases_come_back_after_their_ttl(redis_url: str, busy: Any) -> None:
    server = busy(threshold=100, delay=30.0)  # requests that never finish in time
    (victim,) = workers(redis_url, server.port, "shared", n=1, requests=4, limit=4, ttl=1.0)
    deadline = time.time() + 10
    while server.stats()["peak"] < 4 and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # dies holding the four leases
    victim.wait(10)
    if victim.stdout is not None:
        victim.stdout.close()
    fast = busy(threshold=100, delay=0.01)
    started = time.time()
    done = results(workers(redis_url, fast.port, "shared", n=1, requests=4, limit=4, ttl=1.0))
    waited = time.time() - started
    print(f"a new worker got the dead worker's 4 leases after {waited:.2f} s (TTL 1.0 s)")
    assert done[0]["ok"] == 4
    assert waited >= 0.5  # it waited for the dead worker's leases to end ...
    assert waited < 10  # ... after their TTL, not for ever


def test_a_redis_restart_mid_run_is_survived(private_redis_server: Any, busy: Any) -> None:
    server = busy(threshold=100, delay=0.05)
    processes = workers(
        private_redis_server.url, server.port, "shared", requests=40, limit=4, ttl=1.0
    )
    time.sleep(0.2)
    private_redis_server.restart()  # the shared state is gone; the store fails open
    done = results(processes)
    assert sum(r["ok"] for r in done) == 120
    assert all(r["failed"] == 0 for r in done)
