"""Faults of a real redis-server under the Redis-backed guards, and of the client's code.

Against a real server: ``CLIENT PAUSE`` longer than the store's timeout (both failure
policies), a server killed and restarted in the middle of a call, and a wrong password.
Each call ends within the store's timeout with the documented outcome, and once Redis is
reachable again its own accounting is checked: no lease held for a failed acquire, no
half-open probe, rate reservation or budget charge left for a refused or failed call.

``STORE_POINTS`` is the store's fault table: the one place RedisStore calls code that is
not its own is the client it was given (every state change goes through its ``evalsha``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from headrace_core import HeadraceError
from headrace_guards import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    RateLimited,
    RateLimiter,
)
from headrace_guards.redis import RedisStore
from shared.faults import (
    ASYNC_FAULTS,
    Fault,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    run_injection,
)
from shared.pytest_fixtures import RedisServer

pytestmark = pytest.mark.redis

Policy = Literal["fail_open", "fail_closed"]
POLICIES: tuple[Policy, ...] = ("fail_open", "fail_closed")

# The store's timeout, and a pause well past it: a call that waited for the pause to end
# would take PAUSE, one that honours the timeout ends after at most two round trips of it.
TIMEOUT = 0.1
PAUSE = 0.6
BOUNDED = 2 * TIMEOUT + 0.15


async def ok() -> str:
    return "ok"


def new_prefix() -> str:
    return f"f{uuid.uuid4().hex[:10]}:"


class Ledger:
    """Reads the accounting of one store's components straight from Redis."""

    def __init__(self, admin: Any, prefix: str) -> None:
        self.admin = admin
        self.prefix = prefix

    def key(self, kind: str, name: str, field: str) -> str:
        return f"{self.prefix}{{{kind}:{name}}}:{field}"

    async def leases(self, name: str) -> int:
        return int(await self.admin.zcard(self.key("bh", name, "leases")))

    async def probes(self, name: str) -> int:
        return int(await self.admin.zcard(self.key("cb", name, "probes")))

    async def reservations(self, name: str) -> int:
        return int(await self.admin.zcard(self.key("rl", name, "pending")))

    async def charged(self, name: str) -> float:
        used = await self.admin.hget(self.key("budget", name, "amounts"), "used")
        return 0.0 if used is None else float(used)

    async def keys(self) -> list[str]:
        return sorted(k.decode() for k in await self.admin.keys(f"{self.prefix}*"))


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Any]:
    client: Any = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[Callable[..., RedisStore]]:
    made: list[RedisStore] = []

    def build(url: str = redis_url, **kw: Any) -> RedisStore:
        kw.setdefault("prefix", new_prefix())
        kw.setdefault("timeout", TIMEOUT)
        store = RedisStore.from_url(url, **kw)
        made.append(store)
        return store

    yield build
    for store in made:
        with contextlib.suppress(Exception):  # a server a test stopped, a refused password
            await store.delete_all()
        await store.aclose()


async def pause(admin: Any, seconds: float = PAUSE) -> None:
    await admin.execute_command("CLIENT", "PAUSE", str(int(seconds * 1000)), "ALL")


async def until_unpaused(admin: Any) -> None:
    """Wait until the server answers again (the pause is over)."""
    async with asyncio.timeout(5):
        await admin.ping()


def healthy(store: RedisStore) -> bool:
    return store.healthy


async def timed(call: Awaitable[Any]) -> tuple[Any, BaseException | None, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        result = await call
    except Exception as exc:
        return None, exc, loop.time() - start
    return result, None, loop.time() - start


async def settled() -> None:
    """Let what the guards send in the background (lease releases) finish."""
    me = asyncio.current_task()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            return


# -- CLIENT PAUSE longer than the store's timeout -----------------------------------------
@pytest.mark.parametrize("policy", POLICIES)
async def test_paused_redis_breaker(
    stores: Callable[..., RedisStore], admin: Any, policy: Policy
) -> None:
    store = stores(on_error=policy, cache_ttl=0)
    ledger = Ledger(admin, store.prefix)
    breaker = CircuitBreaker(
        "svc", failure_threshold=1, recovery_timeout=0.2, half_open_max_calls=1, store=store
    )
    await store.force("svc", CircuitState.HALF_OPEN)  # a probe is what a lost call would hold
    await pause(admin)
    result, error, took = await timed(breaker.call(ok))
    assert took < BOUNDED  # ended within the store's timeout, not at the end of the pause
    if policy == "fail_open":
        assert (result, error) == ("ok", None)  # acts CLOSED
    else:
        assert isinstance(error, CircuitOpenError)
        assert error.retry_after == 1.0
    await until_unpaused(admin)
    assert await breaker.call(ok) == "ok"  # the probe is free: this call takes it
    assert await ledger.probes("svc") == 0
    assert (await store.snapshot("svc"))["state"] is CircuitState.CLOSED


@pytest.mark.parametrize("policy", POLICIES)
async def test_paused_redis_bulkhead(
    stores: Callable[..., RedisStore], admin: Any, policy: Policy
) -> None:
    store = stores(on_error=policy)
    ledger = Ledger(admin, store.prefix)
    bulkhead = Bulkhead(1, name="pool", max_wait=0, store=store)
    assert await bulkhead.call(ok) == "ok"  # connected, scripts loaded
    await pause(admin)
    result, error, took = await timed(bulkhead.call(ok))
    assert took < BOUNDED
    if policy == "fail_open":
        assert (result, error) == ("ok", None)
    else:
        assert isinstance(error, BulkheadFull)
    assert bulkhead.snapshot().in_flight == 0
    await until_unpaused(admin)
    await settled()
    assert await ledger.leases("pool") == 0  # no lease held for the paused call
    assert await bulkhead.call(ok) == "ok"  # the one slot is free
    await settled()
    assert await ledger.leases("pool") == 0


@pytest.mark.parametrize("policy", POLICIES)
async def test_paused_redis_rate_limiter(
    stores: Callable[..., RedisStore], admin: Any, policy: Policy
) -> None:
    store = stores(on_error=policy)
    ledger = Ledger(admin, store.prefix)
    limiter = RateLimiter(1, per=10, burst=1, max_wait=0, name="api", store=store)
    await RateLimiter(1000, name="warm", store=store).acquire()  # the script is loaded
    await pause(admin)
    _, error, took = await timed(limiter.acquire())
    assert took < BOUNDED
    if policy == "fail_open":
        assert error is None  # acts unlimited
    else:
        assert isinstance(error, RateLimited)
        assert error.retry_after == 1.0  # ask again when Redis may be back
    await until_unpaused(admin)
    assert await ledger.reservations("api") == 0  # nothing reserved for it
    await limiter.acquire()  # the whole burst is there
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire()
    assert 9 < refused.value.retry_after <= 10  # the real wait
    assert limiter.snapshot().waiting == 0


@pytest.mark.parametrize("policy", POLICIES)
async def test_paused_redis_budget(
    stores: Callable[..., RedisStore], admin: Any, policy: Policy
) -> None:
    store = stores(on_error=policy)
    ledger = Ledger(admin, store.prefix)
    assert (await store.reserve("warm", 1, 10, 60.0))[0]  # the script is loaded
    await pause(admin)
    reply, error, took = await timed(store.reserve("tok", 5, 10, 60.0))
    assert error is None
    assert took < BOUNDED
    assert reply == ((True, None, None) if policy == "fail_open" else (False, 1.0, None))
    await until_unpaused(admin)
    assert await ledger.charged("tok") == 0
    granted, _, entry = await store.reserve("tok", 10, 10, 60.0)  # the whole budget
    assert granted
    assert entry is not None
    assert await ledger.charged("tok") == 10


# -- the server killed and restarted in the middle of a call ------------------------------
_BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now = start
while now - start < tonumber(ARGV[1]) do
  t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
return 1
"""


async def killed_mid_call(server: RedisServer, call: Awaitable[Any]) -> tuple[Any, float]:
    """Start ``call`` while the server is busy, kill the server, return its outcome."""
    admin: Any = Redis.from_url(server.url)
    busy = asyncio.ensure_future(admin.eval(_BUSY, 0, 3.0))
    await asyncio.sleep(0.05)  # the server is in the script: the call waits for it
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0.1)
    assert not task.done()
    loop = asyncio.get_running_loop()
    start = loop.time()
    server.kill()
    try:
        result = await task
    except Exception as exc:
        result = exc
    took = loop.time() - start
    with contextlib.suppress(Exception):
        await busy
    await admin.aclose()
    server.start()
    return result, took


RESTART_TIMEOUT = 2.0  # long enough for the call to be in flight when the server dies

Operation = Callable[[RedisStore], Awaitable[Any]]


async def breaker_call(store: RedisStore) -> Any:
    return await CircuitBreaker("svc", store=store).call(ok)


async def bulkhead_call(store: RedisStore) -> Any:
    return await Bulkhead(1, name="pool", max_wait=0, store=store).call(ok)


async def limiter_acquire(store: RedisStore) -> Any:
    await RateLimiter(1, per=10, burst=1, max_wait=0, name="api", store=store).acquire()
    return "ok"


async def budget_reserve(store: RedisStore) -> Any:
    return await store.reserve("tok", 10, 10, 60.0)


OPERATIONS: dict[str, Operation] = {
    "breaker": breaker_call,
    "bulkhead": bulkhead_call,
    "rate": limiter_acquire,
    "budget": budget_reserve,
}
REFUSED: dict[str, Any] = {
    "breaker": CircuitOpenError,
    "bulkhead": BulkheadFull,
    "rate": RateLimited,
    "budget": (False, 1.0, None),
}
ADMITTED: dict[str, Any] = {
    "breaker": "ok",
    "bulkhead": "ok",
    "rate": "ok",
    "budget": (True, None, None),  # failing open: no entry
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("policy", POLICIES)
async def test_server_restart_mid_call(
    private_redis_server: RedisServer, policy: Policy, operation: str
) -> None:
    server = private_redis_server
    store = RedisStore.from_url(
        server.url, prefix=new_prefix(), on_error=policy, timeout=RESTART_TIMEOUT, cache_ttl=0
    )
    call = OPERATIONS[operation]
    try:
        await call(store)  # connected, scripts loaded
        await store.delete_all()
        result, took = await killed_mid_call(server, call(store))
        assert took < RESTART_TIMEOUT / 2  # a dead connection fails at once
        expected = (ADMITTED if policy == "fail_open" else REFUSED)[operation]
        if isinstance(expected, type):
            assert isinstance(result, expected)
        else:
            assert result == expected
        assert not healthy(store)
        # The new server is empty (nothing was saved): the next call loads the scripts
        # again, and the whole capacity is there.
        again = await call(store)
        assert (again[0] is True) if operation == "budget" else (again == "ok")
        assert healthy(store)
        await settled()  # the bulkhead's release, sent in the background
        ledger = Ledger(Redis.from_url(server.url), store.prefix)
        try:
            assert await ledger.leases("pool") == 0
            assert await ledger.probes("svc") == 0
        finally:
            await ledger.admin.aclose()
    finally:
        await store.aclose()


def test_the_fixture_restarts_a_server_on_its_port(private_redis_server: RedisServer) -> None:
    server = private_redis_server
    port = server.port
    server.restart()
    assert server.running
    assert server.port == port
    server.kill()
    assert not server.running


# -- a wrong password ---------------------------------------------------------------------
def names_authentication(error: BaseException | None) -> bool:
    """Whether ``error`` (or an error it chains or groups) says authentication failed."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, AuthenticationError) and "authentication" in str(exc).lower():
            return True
        stack += [exc.__cause__, exc.__context__]
        stack += list(getattr(exc, "exceptions", ()))
    return False


CREDENTIALS = {"wrong password": "not-the-password", "no password": None}


@pytest.mark.parametrize("credentials", sorted(CREDENTIALS))
@pytest.mark.parametrize("policy", POLICIES)
async def test_a_wrong_password_is_reported_as_authentication(
    redis_password_server: RedisServer,
    policy: Policy,
    credentials: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_password_server
    url = server.url_with(CREDENTIALS[credentials])
    store = RedisStore.from_url(url, prefix=new_prefix(), on_error=policy, timeout=1.0)
    breaker = CircuitBreaker("svc", store=store)
    bulkhead = Bulkhead(1, name="pool", max_wait=0, store=store)
    limiter = RateLimiter(1, name="api", store=store)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "breaker": lambda: breaker.call(ok),
        "bulkhead": lambda: bulkhead.call(ok),
        "rate": limiter.acquire,
        "budget": lambda: store.reserve("tok", 1, 10, 60.0),
        "in_flight": lambda: store.in_flight("pool"),
    }
    try:
        with caplog.at_level(logging.WARNING, logger="headrace.guards.redis"):
            for what, call in calls.items():
                _, error, took = await timed(call())
                assert names_authentication(error), (what, error)
                assert took < 1.0, what
        messages = [r.getMessage() for r in caplog.records if r.name == "headrace.guards.redis"]
        assert messages
        assert all("authentication" in m for m in messages)
        assert not any("unreachable" in m for m in messages)
        assert bulkhead.snapshot().in_flight == 0
        assert limiter.snapshot().waiting == 0
        await settled()
        admin: Any = Redis.from_url(server.url)
        try:
            assert await Ledger(admin, store.prefix).keys() == []  # nothing taken
        finally:
            await admin.aclose()
    finally:
        await store.aclose()


# -- the client's code: the store's fault table -------------------------------------------
class FaultyClient:
    """A redis-py client whose ``evalsha`` misbehaves once, after Redis ran the script.

    Redis has done the work when the fault hits, so whatever the client does then (raise,
    return garbage, hang) leaves state in Redis that the store must give back.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.fault: Fault | None = None
        self.pubsub_fault: Fault | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def pubsub(self) -> Any:
        """The transition channel: ``pubsub()`` or its ``subscribe`` misbehaves once."""
        fault, self.pubsub_fault = self.pubsub_fault, None
        if fault is None:
            return self.real.pubsub()
        if fault is not Fault.HANG:
            return inject(fault, wrong=object())
        channel = self.real.pubsub()

        async def subscribe(*args: Any) -> Any:
            return await ainject(Fault.HANG)

        channel.subscribe = subscribe
        return channel

    async def evalsha(self, *args: Any) -> Any:
        reply = await self.real.evalsha(*args)
        fault, self.fault = self.fault, None
        if fault is None:
            return reply
        return await ainject(fault, wrong=["garbage"])


def armed(client: FaultyClient) -> bool:
    """Whether the client's fault is still to come."""
    return client.fault is not None


_URL: list[str] = []


@pytest.fixture
def live_url(redis_url: str) -> Iterator[str]:
    _URL.append(redis_url)
    try:
        yield redis_url
    finally:
        _URL.remove(redis_url)


async def faulty_store(
    policy: Policy = "fail_open", cache_ttl: float = 0, lease_ttl: float = 30.0
) -> tuple[RedisStore, FaultyClient, Any]:
    client = FaultyClient(Redis.from_url(_URL[-1]))
    store = RedisStore(
        client,  # type: ignore[arg-type]
        prefix=new_prefix(),
        on_error=policy,
        timeout=0.5,
        cache_ttl=cache_ttl,
        lease_ttl=lease_ttl,
    )
    return store, client, Redis.from_url(_URL[-1])


async def close(store: RedisStore, client: FaultyClient, admin: Any) -> None:
    await store.delete_all()
    await store.aclose()
    await client.real.aclose()
    await admin.aclose()


def caller_error(fault: Fault) -> type[BaseException]:
    """What the caller gets for ``fault`` of the client (HANG aside)."""
    expected = expected_error(fault)
    if expected is None or fault is Fault.CANCEL:
        return HeadraceError  # garbage, or a CancelledError the task did not ask for
    return expected


def chains(error: BaseException, wanted: type[BaseException]) -> bool:
    """Whether ``error`` is ``wanted`` or a headrace error chaining one."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, wanted):
            return True
        if not isinstance(current, HeadraceError):
            return False
        current = current.__cause__
    return False


async def expect_fault(
    fault: Fault, call: Awaitable[Any], down: Any, *, reads_reply: bool = True
) -> None:
    """The caller sees the client's own error, or the store's answer to a dead Redis.

    RAISE, KeyboardInterrupt and SystemExit reach the caller as they are; a CancelledError
    the client raised by itself is a HeadraceError chaining it (the task was not being
    cancelled); garbage is a HeadraceError naming the reply; a hang ends at the store's
    timeout with ``down``, what the failure policy answers (and a reply the store does
    not read, a release's, is not checked).
    """
    expected = expected_error(fault)
    if fault is Fault.CANCEL:
        with pytest.raises(HeadraceError) as caught:
            await call
        assert isinstance(caught.value.__cause__, asyncio.CancelledError)
    elif expected is not None:
        with pytest.raises(expected):
            await call
    elif fault is Fault.WRONG and not reads_reply:
        assert await call == down  # the reply is not used
    elif fault is Fault.WRONG:
        with pytest.raises(HeadraceError, match="unexpected reply"):
            await call
    else:
        assert fault is Fault.HANG
        assert await call == down
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def drive_acquire(fault: Fault) -> None:
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        client.fault = fault
        await expect_fault(fault, store.acquire("pool", 1, "faulted", 30), True)
        assert await ledger.leases("pool") == 1  # Redis took it
        if fault is Fault.HANG:
            # Failing open, the timed-out caller went ahead as if it held the slot, and
            # gives it back when done, as a guard does.
            await store.release("pool", "faulted")
        assert await store.acquire("pool", 1, "next", 30)  # the slot is free again
        assert await ledger.leases("pool") == 1
        await store.release("pool", "next")
        assert await ledger.leases("pool") == 0
    finally:
        await close(store, client, admin)


async def drive_acquire_carrying(fault: Fault) -> None:
    # An acquire that carries the release of another lease: Redis gave that one back and
    # took this one when the client misbehaves.
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        assert await store.acquire("pool", 1, "held", 30)
        client.fault = fault
        await expect_fault(fault, store.acquire("pool", 1, "next", 30, release=["held"]), True)
        assert await ledger.leases("pool") == 1  # "held" given back, "next" taken
        if fault is Fault.HANG:
            # Failing open, the timed-out caller went ahead as if it held the slot.
            await store.release("pool", "next")
        assert await store.acquire("pool", 1, "third", 30)  # "next" was given back first
        assert await ledger.leases("pool") == 1
        await store.release("pool", "third")
        assert await ledger.leases("pool") == 0
        assert store._held == {}  # nothing given back is renewed
    finally:
        await close(store, client, admin)


async def drive_release(fault: Fault) -> None:
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        assert await store.acquire("pool", 1, "held", 30)
        client.fault = fault
        await expect_fault(fault, store.release("pool", "held"), None, reads_reply=False)
        assert await ledger.leases("pool") == 0  # Redis ran it
        assert await store.acquire("pool", 1, "next", 30)
        await store.release("pool", "next")
        assert await ledger.leases("pool") == 0
    finally:
        await close(store, client, admin)


async def drive_admit(fault: Fault) -> None:
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        await store.force("svc", CircuitState.HALF_OPEN)
        client.fault = fault
        await expect_fault(fault, store.admit("svc", 0.0), (True, 1, CircuitState.CLOSED, 0.0))
        assert await ledger.probes("svc") == 1  # Redis gave it the probe ...
        allowed, gen, state, _ = await store.admit("svc", 0.0)
        assert (allowed, state) == (True, CircuitState.HALF_OPEN)  # ... given back first
        assert await store.record("svc", gen, "success", 0.0) is CircuitState.CLOSED
        assert await ledger.probes("svc") == 0
    finally:
        await close(store, client, admin)


async def drive_record(fault: Fault) -> None:
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        await store.force("svc", CircuitState.HALF_OPEN)
        allowed, gen, _, _ = await store.admit("svc", 0.0)
        assert allowed
        client.fault = fault
        await expect_fault(fault, store.record("svc", gen, "neutral", 0.0), CircuitState.CLOSED)
        assert await ledger.probes("svc") == 0  # Redis ran it
        allowed, gen, state, _ = await store.admit("svc", 0.0)
        assert (allowed, state) == (True, CircuitState.HALF_OPEN)
        assert await store.record("svc", gen, "success", 0.0) is CircuitState.CLOSED
    finally:
        await close(store, client, admin)


async def drive_rate_reserve(fault: Fault) -> None:
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        client.fault = fault
        await expect_fault(fault, store.reserve("api", 1, 10.0, 1, 1, 0), (True, 0.0))
        assert await ledger.reservations("api") == 1  # Redis made it
        reserved, wait = await store.reserve("api", 1, 10.0, 1, 1, 0)
        if fault is Fault.HANG:  # failing open, a timed-out caller goes ahead: it stands
            assert not reserved
            assert 9 < wait <= 10
        else:  # the failed call's reservation was taken back first
            assert (reserved, wait) == (True, 0.0)
        assert await ledger.reservations("api") == 1
    finally:
        await close(store, client, admin)


async def drive_budget_reserve(fault: Fault) -> None:
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    try:
        client.fault = fault
        await expect_fault(fault, store.reserve("tok", 4, 10, 60.0), (True, None, None))
        assert await ledger.charged("tok") == 4  # Redis charged it
        granted, _, _ = await store.reserve("tok", 6, 10, 60.0)
        assert granted
        kept = 4 if fault is Fault.HANG else 0  # failing open, a timed-out caller goes ahead
        assert await ledger.charged("tok") == 6 + kept
    finally:
        await close(store, client, admin)


async def drive_breaker_guard(fault: Fault) -> None:
    # Through the guard: the client's failure reaches the caller of CircuitBreaker.call,
    # or (a hang) the breaker acts CLOSED; the probe is not left taken.
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    breaker = CircuitBreaker("svc", store=store)
    try:
        await store.force("svc", CircuitState.HALF_OPEN)
        client.fault = fault
        if fault is Fault.HANG:
            assert await breaker.call(ok) == "ok"  # failing open: acts CLOSED
        else:
            caught: BaseException | None = None
            try:
                await breaker.call(ok)
            except BaseException as exc:  # KeyboardInterrupt too: it must reach us
                caught = exc
            assert caught is not None
            assert chains(caught, caller_error(fault))
        assert await breaker.call(ok) == "ok"  # the probe was given back: this one closes
        assert await ledger.probes("svc") == 0
        assert breaker.snapshot().half_open_in_flight == 0
    finally:
        await close(store, client, admin)


async def drive_bulkhead_guard(fault: Fault) -> None:
    # Through the guard: the acquire that carries the release of the call before it meets
    # the client's failure. The caller sees it (a hang: admitted, failing open), and no
    # slot is left taken: the next call, with one slot and no wait, is admitted.
    store, client, admin = await faulty_store()
    ledger = Ledger(admin, store.prefix)
    bulkhead = Bulkhead(1, name="pool", max_wait=0, store=store)
    try:
        assert await bulkhead.call(ok) == "ok"
        client.fault = fault
        if fault is Fault.HANG:
            assert await bulkhead.call(ok) == "ok"
        else:
            caught: BaseException | None = None
            try:
                await bulkhead.call(ok)
            except BaseException as exc:  # KeyboardInterrupt too: it must reach us
                caught = exc
            assert caught is not None
            assert chains(caught, caller_error(fault))
        assert await bulkhead.call(ok) == "ok"
        await bulkhead.aclose()
        assert await ledger.leases("pool") == 0
        assert bulkhead.snapshot().in_flight == 0
    finally:
        await close(store, client, admin)


async def drive_channel(fault: Fault) -> None:
    # The transition channel only saves round trips: when the client's pubsub misbehaves,
    # admissions ask Redis and stay right; KeyboardInterrupt/SystemExit reach the caller.
    store, client, admin = await faulty_store(cache_ttl=1.0)
    try:
        allowed, _, state, _ = await store.admit("svc", 0.0)  # learns CLOSED
        assert (allowed, state) == (True, CircuitState.CLOSED)
        client.pubsub_fault = fault
        expected = expected_error(fault)
        if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
            assert expected is not None
            with pytest.raises(expected):
                await store.admit("svc", 0.0)
        else:
            assert (await store.admit("svc", 0.0))[0] is True
        await store.force("svc", CircuitState.OPEN)
        allowed, _, state, _ = await store.admit("svc", 0.0)
        assert (allowed, state) == (False, CircuitState.OPEN)
        await store.reset("svc")
        assert (await store.admit("svc", 0.0))[0] is True
    finally:
        await close(store, client, admin)


async def drive_renewal(fault: Fault) -> None:
    # Held leases are renewed by a background task: what the client does there never
    # escapes into the loop. KeyboardInterrupt/SystemExit reach the next caller of the
    # store; other failures are logged, and the next renewals go on.
    store, client, admin = await faulty_store(lease_ttl=1.5)  # renewed every 0.5 s
    try:
        assert await store.acquire("pool", 1, "held", 30)
        client.fault = fault
        await asyncio.sleep(1.2)  # the renewal ran (and misbehaved, for 0.5 s at most)
        assert not armed(client)
        expected = expected_error(fault)
        if fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT):
            assert expected is not None
            with pytest.raises(expected):
                await store.in_flight("pool")
        assert await store.in_flight("pool") == 1
        await store.release("pool", "held")
        assert await store.in_flight("pool") == 0
    finally:
        await close(store, client, admin)


STORE_POINTS = [
    Point("RedisStore.client.evalsha@acquire", ASYNC_FAULTS, drive_acquire),
    Point("RedisStore.client.evalsha@acquire(release=)", ASYNC_FAULTS, drive_acquire_carrying),
    Point("RedisStore.client.evalsha@release", ASYNC_FAULTS, drive_release),
    Point("RedisStore.client.evalsha@admit", ASYNC_FAULTS, drive_admit),
    Point("RedisStore.client.evalsha@record", ASYNC_FAULTS, drive_record),
    Point("RedisStore.client.evalsha@reserve(rate)", ASYNC_FAULTS, drive_rate_reserve),
    Point("RedisStore.client.evalsha@reserve(budget)", ASYNC_FAULTS, drive_budget_reserve),
    Point("CircuitBreaker(store=RedisStore).client", ASYNC_FAULTS, drive_breaker_guard),
    Point("Bulkhead(store=RedisStore).client", ASYNC_FAULTS, drive_bulkhead_guard),
    Point("RedisStore.client.pubsub", ASYNC_FAULTS, drive_channel),
    Point("RedisStore.client.evalsha@renew(background)", ASYNC_FAULTS, drive_renewal),
]


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(STORE_POINTS)))
def test_store_fault(live_url: str, point: Point, fault: Fault, start: float) -> None:
    run_injection(point.drive, fault, start=start)
