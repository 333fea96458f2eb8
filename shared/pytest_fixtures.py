"""Fixtures every test tree shares.

- Every ``async def`` test fails if it leaves a task pending (``_no_pending_tasks``).
- ``redis_url``: a real ``redis-server`` on a free loopback port, started once per session
  (installed with apt-get when it is missing and we run as root); tests marked ``redis``.
  ``private_redis_server`` is one server per test (to kill and restart), and
  ``redis_password_server`` one that requires a password. ``redis_cluster`` (for the
  session) and ``private_redis_cluster`` (per test) are three-master Redis Clusters.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio

_SETTLE_PASSES = 5
#: The repository's root (the folder of ``shared``).
REPOSITORY = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "obj", None)
        if (
            inspect.iscoroutinefunction(function)
            and isinstance(item, pytest.Function)
            and "_no_pending_tasks" not in item.fixturenames
        ):
            item.fixturenames.insert(0, "_no_pending_tasks")


@pytest_asyncio.fixture
async def _no_pending_tasks() -> AsyncIterator[None]:
    """Fail the test if any task it started is still pending when it ends."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leftover: set[asyncio.Task[object]] = set()
    for _ in range(_SETTLE_PASSES):
        leftover = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
        if not leftover:
            return
        await asyncio.sleep(0)
    descriptions = sorted(repr(t) for t in leftover)
    for task in leftover:
        task.cancel()
    await asyncio.gather(*leftover, return_exceptions=True)
    pytest.fail(
        f"test left {len(leftover)} task(s) pending:\n  " + "\n  ".join(descriptions),
        pytrace=False,
    )


async def background_settled(timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` seconds) until the loop's other tasks have ended.

    A store fixture calls it before it closes its client: a component's send still on
    its way in the background (a bulkhead's release, a breaker's record) lands first,
    instead of opening a connection after the close that nobody closes.
    """
    current = asyncio.current_task()
    others = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
    if others:
        await asyncio.wait(others, timeout=timeout)


# -- Redis ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``.

    For the worker processes the tests start with ``python -m shared.<module>``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])
    return env


def _find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            check=False,
            env=env,
            capture_output=True,
        )
        return shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
    return None


class RedisServer:
    """A redis-server process on loopback, which tests may stop, kill and start again.

    With ``password``, the server requires it (``--requirepass``); :attr:`url` then holds
    it, and :meth:`url_with` builds a URL with other credentials (or none).
    """

    def __init__(
        self, binary: str, password: str | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.password = password
        self.extra = extra
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="headrace-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_with(self.password)

    def url_with(self, password: str | None) -> str:
        """The server's URL with ``password`` (None: no credentials)."""
        auth = "" if password is None else f":{password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server on its port (the same one after a stop: a restart)."""
        arguments = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
        ]
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        arguments += self.extra
        self.process = subprocess.Popen(
            arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        hello = b"PING\r\n"
        if self.password is not None:
            hello = b"AUTH %s\r\n" % self.password.encode() + hello
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(hello)
                    reply = b""
                    while b"PONG" not in reply and len(reply) < 64:
                        chunk = s.recv(64)
                        if not chunk:
                            break
                        reply += chunk
                    if b"+PONG" in reply:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would: nothing is saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Kill the server and start it again on the same port, empty."""
        self.kill()
        self.start()


class RedisClusterServers:
    """Three redis-server masters on loopback joined into one Redis Cluster.

    Started with ``--cluster-enabled yes`` and joined with ``redis-cli --cluster create``
    (both from Debian's packages); :attr:`url` names the first node, from which a cluster
    client discovers the others.
    """

    def __init__(self, binary: str, masters: int = 3) -> None:
        self.nodes = [RedisServer(binary) for _ in range(masters)]
        for node in self.nodes:
            node.extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{node.port}.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",  # the default, port + 10000, may be past 65535
                str(free_port()),
            )

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, create the cluster and wait until every node says it is ok."""
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


_Server = TypeVar("_Server", "RedisServer", "RedisClusterServers")


def _running(server: _Server) -> Iterator[_Server]:
    """Start ``server``, give it to the test, and stop it however the test ends."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _redis_binary() -> str:
    binary = _find_redis_server()
    if binary is None:
        pytest.skip(
            "redis-server is not installed (install Debian's redis-server package, "
            "or run the tests as root so they can install it)"
        )
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the session; skips (naming the server) when none can be had."""
    yield from _running(RedisServer(_redis_binary()))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server (restarted if a test stopped it)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real three-master Redis Cluster on loopback, for the session."""
    yield from _running(RedisClusterServers(_redis_binary()))


@pytest.fixture
def private_redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test alone, whose nodes it may kill."""
    yield from _running(RedisClusterServers(_redis_binary()))


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may kill and restart freely."""
    yield from _running(RedisServer(_redis_binary()))


@pytest.fixture(scope="session")
def redis_password_server() -> Iterator[RedisServer]:
    """A redis-server that requires a password (``--requirepass``), for the session."""
    yield from _running(RedisServer(_redis_binary(), password="headrace-test-secret"))
