"""The plumbing of the Redis store: keys, scripts, timeouts, failure policy and logging."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal, cast

from headrace_core import ConfigurationError, HeadraceError
from headrace_core.lowlevel import check_number, check_optional_number, keep_cancel, safe_repr

try:
    from redis.exceptions import (
        AuthenticationError,
        NoPermissionError,
        NoScriptError,
        RedisError,
        ResponseError,
    )
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "headrace_guards.redis needs redis-py: pip install 'headrace-guards[redis]'"
    ) from _exc

__all__ = ["DOWN", "DOWN_RETRY_AFTER", "MALFORMED", "Script", "StoreBase", "checked", "logger"]

logger: Final = logging.getLogger("headrace.guards.redis")

#: Returned by :meth:`StoreBase._run` when Redis failed or was too slow.
DOWN: Final = object()
#: Seconds after which a caller refused because Redis is down (fail_closed) may ask again.
DOWN_RETRY_AFTER: Final = 1.0
# Errors that say the client is not allowed in: a configuration fault, not an outage, so
# they reach the caller whatever ``on_error`` says (they would never heal by waiting).
_REFUSED: Final = (AuthenticationError, NoPermissionError)
# How a server that wants a password answers a long command of a client that gave none
# (redis-py before 8 sends the script unauthenticated and gets this, not NOAUTH).
_UNAUTHENTICATED: Final = "Protocol error: unauthenticated"

# Seconds between two "Redis is unreachable" log records of one store.
_LOG_EVERY = 60.0
_BAD_CHARS = frozenset("{}*?[]\\") | {chr(c) for c in range(33)} | {chr(127)}
_BAD_NAME_CHARS = frozenset("{}") | {chr(c) for c in range(32)} | {chr(127)}
_MAX_NAME = 256
_MAX_PREFIX = 64
# Ids (leases, probes, charges) whose reply was lost, kept per component to give back at
# the next contact; past this many the oldest are left to their TTL.
_MAX_LOST = 256
#: What parsing a reply of an unexpected shape raises.
MALFORMED: Final = (TypeError, ValueError, IndexError, KeyError, AttributeError)


class Script:
    """A Lua script and its SHA1, run with ``EVALSHA`` (loaded on ``NOSCRIPT``)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def check_prefix(prefix: object) -> str:
    """Validate a key prefix: a short string without braces, spaces or glob characters."""
    if not isinstance(prefix, str) or not 1 <= len(prefix) <= _MAX_PREFIX:
        raise ConfigurationError.argument_error(
            "prefix", prefix, f"must be a str of 1..{_MAX_PREFIX} characters"
        )
    if any(c in _BAD_CHARS for c in prefix):
        raise ConfigurationError.argument_error(
            "prefix",
            prefix,
            "must not contain braces, glob characters, whitespace or control characters",
        )
    return prefix


def check_name(name: object) -> str:
    """Validate a component name used in a key (braces would break the Cluster hash tag)."""
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME:
        raise ConfigurationError.argument_error(
            "name", name, f"must be a str of 1..{_MAX_NAME} characters for a Redis store"
        )
    if any(c in _BAD_NAME_CHARS for c in name):
        raise ConfigurationError.argument_error(
            "name", name, "must not contain braces or control characters for a Redis store"
        )
    return name


def checked(awaitable: Awaitable[Any]) -> Awaitable[Any]:
    """Await a reply of the Redis client, never losing a cancellation of this task.

    Core's ``keep_cancel``: redis-py 8.0 to 8.2 on Python 3.11 may swallow a cancellation
    while a reply is read; a ``CancelledError`` the client raises by itself becomes a
    ``HeadraceError`` chaining it.
    """
    return keep_cancel(awaitable, "the Redis client")


def text(value: Any) -> str:
    """Decode a reply item (``bytes`` unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class StoreBase:
    """Keys, the script runner and the failure policy shared by every part of the store."""

    __slots__ = (
        "__weakref__",
        "_client",
        "_deferred",
        "_down_since",
        "_errors",
        "_factory",
        "_keys",
        "_last_log",
        "_loop",
        "_lost",
        "_owns_client",
        "fail_open",
        "lease_ttl",
        "on_error",
        "prefix",
        "probe_ttl",
        "timeout",
    )

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        on_error: Literal["fail_open", "fail_closed"],
        timeout: float,
        probe_ttl: float | None,
        lease_ttl: float,
    ) -> None:
        if not callable(getattr(client, "evalsha", None)):
            raise ConfigurationError.argument_error(
                "client", client, "must be a redis.asyncio.Redis (or RedisCluster) client"
            )
        self.prefix = check_prefix(prefix)
        if on_error not in ("fail_open", "fail_closed"):
            raise ConfigurationError.argument_error(
                "on_error", on_error, "must be 'fail_open' or 'fail_closed'"
            )
        self.on_error: Literal["fail_open", "fail_closed"] = on_error
        self.fail_open = on_error == "fail_open"
        self.timeout = check_number("timeout", timeout, gt=0)
        self.probe_ttl = check_optional_number("probe_ttl", probe_ttl, gt=0)
        self.lease_ttl = check_number("lease_ttl", lease_ttl, gt=0)
        self._client = client
        self._owns_client = False
        self._factory: Callable[[], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._down_since: float | None = None
        self._last_log: float | None = None
        self._errors = 0
        self._lost: dict[tuple[str, str], list[str]] = {}
        self._deferred: BaseException | None = None

    # -- keys ------------------------------------------------------------------------
    def _keys_of(self, kind: str, name: str, fields: Sequence[str]) -> tuple[str, ...]:
        """Return the keys ``<prefix>{<kind>:<name>}:<field>`` (one Cluster slot)."""
        found = self._keys.get((kind, name))
        if found is None:
            check_name(name)
            base = f"{self.prefix}{{{kind}:{name}}}:"
            found = tuple(base + field for field in fields)
            self._keys[(kind, name)] = found
        return found

    # -- running scripts -------------------------------------------------------------
    def _bind(self) -> None:
        """Follow the running loop: an owned client is rebuilt for a new loop.

        redis-py's connections belong to the loop that opened them, while a guard may be
        used from successive ``asyncio.run()`` calls.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None and self._factory is not None:
            old, self._client = self._client, self._factory()
            with contextlib.suppress(Exception):  # the old loop's connections are unusable
                old.connection_pool.reset()
        self._loop = loop

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` atomically; :data:`DOWN` when Redis failed or was too slow.

        A cancellation of the calling task that arrives while the reply is read is never
        lost, even when the client swallows it (redis-py 8.0 to 8.2 on Python 3.11 can):
        when the task's cancellation count rose during the call and no ``CancelledError``
        came out, one is raised here, so the store's own timeout ends as a timeout and a
        caller's cancel or deadline goes on as a cancellation.

        A ``CancelledError`` that the client raises while the task is not being cancelled
        is raised as a ``HeadraceError`` chaining it; any other error that is not Redis's
        failure (a client's own bug) reaches the caller as it is.

        Raises:
            redis.exceptions.AuthenticationError: when Redis refused the client's
                credentials (also ``NoPermissionError`` for an ACL refusal).
        """
        if asyncio.get_running_loop() is not self._loop:
            self._bind()
        if self._deferred is not None:
            self._raise_deferred()
        client = self._client
        try:
            async with asyncio.timeout(self.timeout):
                reply = await checked(_evalsha(client, script, keys, args))
        except _REFUSED as exc:
            raise self._refused(exc) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, ResponseError) and _UNAUTHENTICATED in str(exc):
                await self._drop_connections(client)  # the server closes this one
                raise self._refused(AuthenticationError(str(exc))) from exc
            self._trouble(exc)
            return DOWN
        if self._down_since is not None:
            self._recovered()
        return reply

    async def _drop_connections(self, client: Any) -> None:
        """Close the client's idle connections (ones the server has closed on its side)."""
        disconnect = getattr(getattr(client, "connection_pool", None), "disconnect", None)
        if callable(disconnect):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await checked(cast("Awaitable[Any]", disconnect(inuse_connections=False)))

    # -- replies that were lost --------------------------------------------------------
    def _take_lost(self, kind: str, name: str) -> list[str]:
        """Take the ids of ``name`` whose reply was lost, to give back with the next call."""
        return self._lost.pop((kind, name), None) or []

    def _lose(self, kind: str, name: str, ids: Sequence[str]) -> None:
        """Remember ids whose outcome is unknown (their reply was lost) to give back later."""
        if not ids:
            return
        lost = self._lost.setdefault((kind, name), [])
        lost.extend(ids)
        if len(lost) > _MAX_LOST:
            del lost[: len(lost) - _MAX_LOST]

    def _malformed(self, operation: str, reply: object) -> HeadraceError:
        """The error for a reply of an unexpected shape (a client that is not redis-py's)."""
        return HeadraceError(
            f"{safe_repr(self)}: unexpected reply to {operation}: {safe_repr(reply)}"
        )

    def _defer(self, exc: BaseException) -> None:
        """Keep a KeyboardInterrupt/SystemExit of a background task for the next caller."""
        if self._deferred is None:
            self._deferred = exc

    def _raise_deferred(self) -> None:
        exc, self._deferred = self._deferred, None
        if exc is not None:
            raise exc

    # -- failure policy and logging ----------------------------------------------------
    @property
    def errors(self) -> int:
        """How many Redis calls failed or timed out so far."""
        return self._errors

    @property
    def healthy(self) -> bool:
        """False from a failed Redis call until the next successful one."""
        return self._down_since is None

    def _trouble(self, exc: BaseException) -> None:
        """Note a failed call; log at most once a minute while Redis stays unreachable."""
        self._errors += 1
        now = asyncio.get_running_loop().time()
        if self._down_since is None:
            self._down_since = now
            self._forget()
        if self._last_log is None or now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            logger.warning(
                "Redis store %r is unreachable or slower than %gs (%s); %s",
                self.prefix,
                self.timeout,
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                "admitting calls (fail_open)"
                if self.fail_open
                else "rejecting calls (fail_closed)",
            )

    def _refused(self, exc: RedisError) -> RedisError:
        """Log and build the error for credentials (or permissions) that Redis refused."""
        self._errors += 1
        what = "authentication" if isinstance(exc, AuthenticationError) else "permission"
        message = (
            f"Redis store {self.prefix!r}: {what} failed ({type(exc).__name__}: {exc}); "
            "check the client's username, password and ACL (not retried as an outage)"
        )
        now = asyncio.get_running_loop().time()
        if self._last_log is None or now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            logger.error("%s", message)
        return type(exc)(message)

    def _recovered(self) -> None:
        assert self._down_since is not None
        down = asyncio.get_running_loop().time() - self._down_since
        self._down_since = None
        self._last_log = None
        logger.info("Redis store %r is reachable again after %.1fs", self.prefix, down)

    def _forget(self) -> None:
        """Drop cached state (overridden by the store)."""


async def _evalsha(client: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:  # a restarted or flushed server: load it again
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *args)
