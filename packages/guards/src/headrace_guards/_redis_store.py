"""``RedisStore``: breaker, bulkhead, rate-limiter and budget state shared through Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal, final

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from headrace_core import BulkheadFull
from headrace_core.lowlevel import check_number
from headrace_guards._redis_base import (
    DOWN,
    MALFORMED,
    Script,
    check_name,
    checked,
)
from headrace_guards._redis_breaker import _close_pubsub
from headrace_guards._redis_leases import RENEW
from headrace_guards._redis_lua import (
    BULKHEAD_ACQUIRE,
    BULKHEAD_COUNT,
    BULKHEAD_RELEASE,
)
from headrace_guards._redis_throttle import ThrottlePart

__all__ = ["RedisStore"]

_ACQUIRE, _COUNT = Script(BULKHEAD_ACQUIRE), Script(BULKHEAD_COUNT)
_RELEASE = Script(BULKHEAD_RELEASE)
_BH_FIELDS = ("leases", "released")
_DELETE_BATCH = 500


@final
class RedisStore(ThrottlePart):
    """Shared state for breakers, bulkheads, rate limiters and budgets, on one Redis.

    Pass it as ``store=`` to :class:`~headrace_guards.CircuitBreaker`,
    :class:`~headrace_guards.Bulkhead` and :class:`~headrace_guards.RateLimiter` (each
    then needs a ``name``, its key), or to the throttle's budgets. Every state change is one
    Lua script run with ``EVALSHA`` (loaded again on ``NOSCRIPT``, e.g. after a restart)
    on the server's clock, so workers with skewed clocks agree. A component's keys are
    ``<prefix>{<kind>:<name>}:<field>``: one Cluster hash slot per component.

    Round trips: a CLOSED breaker call costs one (``record``; ``admit`` is answered from
    the state the last reply returned, see ``cache_ttl``), a bulkhead call one (its
    acquire carries the release of the slot given back before it, see :meth:`acquire`),
    a rate-limiter acquisition one, a budget reservation one.

    When Redis fails or answers later than ``timeout``, ``on_error="fail_open"`` admits
    (the breaker acts CLOSED, the limiters unlimited) and ``"fail_closed"`` rejects with
    the guard's own error, saying to retry after 1 s; either way a warning is logged at
    most once a minute on logger ``headrace.guards.redis``, and the next call tries Redis
    again. Every call ends within ``timeout``, and a cancellation of the caller is never
    lost, even by a client that drops it.

    Redis refusing the client's credentials (or an ACL refusing a command) is not an
    outage: it raises ``redis.exceptions.AuthenticationError`` (``NoPermissionError``)
    naming authentication, whatever ``on_error`` says. Other errors of the client's own
    code reach the caller as they are; a ``CancelledError`` it raises while the caller is
    not being cancelled, or a reply of the wrong shape, raises a ``HeadraceError``.

    A request whose reply is lost (a timeout, a dropped connection, an error of the
    client) may still have been carried out by Redis. The store gives back what such a
    request took, with its next call for the same component: a bulkhead lease, a
    half-open probe, and, when the caller did not go ahead (failing closed, or an error),
    a rate reservation or a budget charge. A release that failed is sent again the same
    way. Anything not given back expires with its TTL or window.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client; Valkey works too.
        prefix: the start of every key (no braces, glob characters or whitespace).
        on_error: ``"fail_open"`` or ``"fail_closed"``.
        timeout: seconds one Redis call may take before ``on_error`` applies (``> 0``).
        probe_ttl: seconds a half-open probe reservation lives, so that a crashed worker's
            probe expires; default the breaker's ``recovery_timeout``.
        lease_ttl: seconds a bulkhead lease lives unless renewed (the store renews the
            leases it holds every third of it); the smaller of this and the guard's TTL.
        cache_ttl: seconds a CLOSED (or OPEN) breaker state from the last reply may answer
            ``admit`` without a round trip, while the transition channel is live; ``0``
            asks Redis on every admission.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = ()

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "headrace:",
        on_error: Literal["fail_open", "fail_closed"] = "fail_open",
        timeout: float = 0.1,
        probe_ttl: float | None = None,
        lease_ttl: float = 30.0,
        cache_ttl: float = 1.0,
    ) -> None:
        super().__init__(
            client,
            prefix=prefix,
            on_error=on_error,
            timeout=timeout,
            probe_ttl=probe_ttl,
            lease_ttl=lease_ttl,
        )
        cache_ttl = check_number("cache_ttl", cache_ttl, ge=0)
        self._init_breaker(cache_ttl)
        self._init_limits()
        self._init_leases()

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **kw: Any) -> RedisStore:
        """Connect to ``url`` (``redis://``, ``rediss://``, ``unix://``) and own the client.

        With ``cluster=True`` the client is a ``redis.asyncio.RedisCluster``: ``url`` names
        any node, and the client discovers the others. Each component's keys share one hash
        slot, so every script runs on one node.

        The client gets a connect timeout of ``timeout`` and one reconnect attempt per
        command, so a dead connection is replaced at once after a Redis restart; every
        call is bounded by ``asyncio.timeout(timeout)`` (a read timeout on the socket as
        well would only add a second timer per call).

        Args:
            url: the Redis URL.
            cluster: connect to a Redis Cluster (``RedisCluster.from_url``).
            **kw: the store's keyword arguments (``prefix``, ``on_error``, ``timeout``,
                ``probe_ttl``, ``lease_ttl``, ``cache_ttl``); any other keyword goes to
                ``redis.asyncio.Redis.from_url`` (or ``RedisCluster.from_url``).

        Returns:
            A store whose :meth:`aclose` also closes the client.

        Raises:
            ConfigurationError: when an argument is invalid.
        """
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        names = ("prefix", "on_error", "timeout", "probe_ttl", "lease_ttl", "cache_ttl")
        own = {key: kw.pop(key) for key in names if key in kw}
        timeout = check_number("timeout", own.get("timeout", 0.1), gt=0)
        kw.setdefault("socket_connect_timeout", timeout)
        kw.setdefault("retry", Retry(NoBackoff(), 1))
        connect: Any = RedisCluster.from_url if cluster else Redis.from_url
        store = cls(connect(url, **kw), **own)
        store._owns_client = True
        store._factory = lambda: connect(url, **kw)
        return store

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r}, on_error={self.on_error!r})"

    def check_name(self, name: str) -> None:
        """Validate a component name as a key part (a guard calls this when it is built).

        Every store method validates the names it gets on first use; this lets a guard fail
        at construction instead. Keys are ``<prefix>{<kind>:<name>}:<field>``.

        Args:
            name: the component's name.

        Raises:
            ConfigurationError: naming ``name``, when it is not a str of 1..256
                characters, or holds braces (they would break the Cluster hash tag) or
                control characters.
        """
        check_name(name)

    # -- BulkheadStore ---------------------------------------------------------------
    async def acquire(
        self,
        name: str,
        limit: int,
        lease_id: str,
        ttl: float,
        *,
        release: Sequence[str] = (),
    ) -> bool:
        """Take a slot for ``lease_id`` if fewer than ``limit`` live leases are held.

        The lease lives ``min(ttl, lease_ttl)`` seconds and is renewed while held. The
        leases of ``release`` are given back first, in the same script, as
        :meth:`release` would give them back: a bulkhead releases the slot of one call
        and takes the next one's in one round trip.

        Args:
            name: the bulkhead's name.
            limit: the shared limit.
            lease_id: a unique id of this holder.
            ttl: the guard's lease time-to-live in seconds.
            release: lease ids of ``name`` to give back before the slot is taken (they
                are no longer renewed from this call on).

        Returns:
            True when the slot was taken (also when Redis failed and the store fails open);
            False when every slot is taken, or ``lease_id`` was released already.

        Raises:
            BulkheadFull: when Redis failed and the store fails closed. Redis may still
                have run the acquire (its reply was lost): releasing ``lease_id`` undoes it,
                and the store also releases it itself with the next call of this bulkhead
                (unless that call acquires the same ``lease_id`` again); so it does after
                any error of the client.
        """
        keys = self._keys_of("bh", name, _BH_FIELDS)
        ttl = min(float(ttl), self.lease_ttl)
        lost = self._take_lost("bh", name)
        if lost and lease_id in lost:  # asked again: this call decides its fate
            lost = [lease for lease in lost if lease != lease_id]
        if release:
            for lease in release:
                self._unhold(keys[0], lease)
            lost = [*lost, *release]
        try:
            reply = await self._run(_ACQUIRE, keys, (limit, lease_id, ttl, self.lease_ttl, *lost))
        except BaseException:
            self._lose("bh", name, [*lost, lease_id])  # Redis may have taken it
            raise
        if reply is DOWN:
            # Redis may have taken it. Failing open the caller goes ahead and releases
            # it when done; failing closed it is given back at the next contact.
            if self.fail_open:
                self._lose("bh", name, lost)
                return True
            self._lose("bh", name, [*lost, lease_id])
            raise BulkheadFull(name=name)
        try:
            taken = bool(int(reply))
        except MALFORMED:
            self._lose("bh", name, [lease_id])
            raise self._malformed("acquire", reply) from None
        if taken:
            self._hold(keys[0], lease_id, ttl)
        return taken

    async def release(self, name: str, lease_id: str) -> None:
        """Give the slot of ``lease_id`` back (one round trip); idempotent.

        Releasing a lease that is not held (never acquired, released already, expired, or
        taken by an acquire whose reply was lost) changes nothing, except that Redis
        remembers the id for ``lease_ttl``: an acquire of it arriving later takes nothing.
        When Redis fails, an acquired lease expires after its TTL (it is no longer renewed).

        Args:
            name: the bulkhead's name.
            lease_id: the holder's id.
        """
        keys = self._keys_of("bh", name, _BH_FIELDS)
        self._unhold(keys[0], lease_id)
        lost = self._take_lost("bh", name)
        try:
            reply = await self._run(_RELEASE, keys, (self.lease_ttl, lease_id, *lost))
        except BaseException:
            self._lose("bh", name, [*lost, lease_id])
            raise
        if reply is DOWN:  # released at the next contact (or expired by then)
            self._lose("bh", name, [*lost, lease_id])

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        """Extend the lease of ``lease_id`` by ``min(ttl, lease_ttl)`` from now.

        Args:
            name: the bulkhead's name.
            lease_id: the holder's id.
            ttl: the new time-to-live in seconds.

        Returns:
            False when the lease had already expired (or Redis failed and the store fails
            closed).
        """
        key = self._keys_of("bh", name, _BH_FIELDS)[0]
        reply = await self._run(RENEW, (key,), (min(float(ttl), self.lease_ttl), lease_id))
        if reply is DOWN:
            return self.fail_open
        try:
            return len(reply) > 0
        except MALFORMED:
            raise self._malformed("renew", reply) from None

    async def in_flight(self, name: str) -> int:
        """Return the number of live leases of ``name`` (0 when Redis failed).

        Args:
            name: the bulkhead's name.

        Returns:
            The live leases held by every worker.
        """
        key = self._keys_of("bh", name, _BH_FIELDS)[0]
        reply = await self._run(_COUNT, (key,), ())
        if reply is DOWN:
            return 0
        try:
            return int(reply)
        except MALFORMED:
            raise self._malformed("in_flight", reply) from None

    # -- lifecycle -------------------------------------------------------------------
    async def delete_all(self) -> int:
        """Delete every key under this store's prefix (for tests) and forget cached state.

        Returns:
            The number of keys deleted.

        Raises:
            redis.exceptions.RedisError: when Redis cannot be reached.
        """
        self._bind()
        client = self._client
        deleted = 0
        # One UNLINK per hash slot: a Redis Cluster refuses keys of several slots in one
        # command (on one server the grouping costs nothing).
        batches: dict[int, list[Any]] = {}
        async for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
            batch = batches.setdefault(
                key_slot(key if isinstance(key, bytes) else key.encode()), []
            )
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                deleted += int(await checked(client.unlink(*batch)))
                batch.clear()
        for batch in batches.values():
            if batch:
                deleted += int(await checked(client.unlink(*batch)))
        self._views.clear()
        self._probes.clear()
        return deleted

    async def aclose(self) -> None:
        """Stop renewing leases, close the transition channel, and the client if owned.

        Leases still held are left to expire after their TTL. The store stays usable (the
        next call connects again), also from a later event loop when it owns its client.
        """
        if self._renew_handle is not None:
            self._renew_handle.cancel()
            self._renew_handle = None
        self._held.clear()
        tasks = list(self._renew_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        pubsub, self._pubsub, self._sub_since = self._pubsub, None, None
        if pubsub is not None and self._sub_loop is asyncio.get_running_loop():
            await _close_pubsub(pubsub)
        if self._loop is not None:
            self._bind()  # a client of a finished loop cannot be closed from this one
        if self._owns_client:
            await checked(self._client.aclose())
        if self._deferred is not None:
            self._raise_deferred()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
