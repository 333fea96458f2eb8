"""The circuit-breaker part of the Redis store, with a cached view that saves round trips.

A CLOSED breaker costs one round trip per call: ``record``. The state that ``record`` (or
``admit``) returns is kept as a *view*; while the view says CLOSED (for at most
``cache_ttl`` seconds), ``admit`` answers from it without asking Redis. Every transition
is also published on a channel; the store reads that channel (without blocking) before it
trusts a view, so a breaker opened by another worker is seen at its next admission. When
the channel is not live (not yet subscribed, or lost), every admission asks Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import select
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

from headrace_core import CircuitState
from headrace_core.store import Outcome
from headrace_guards._redis_base import (
    DOWN,
    DOWN_RETRY_AFTER,
    MALFORMED,
    Script,
    StoreBase,
    checked,
    text,
)
from headrace_guards._redis_lua import (
    BREAKER_ADMIT,
    BREAKER_FORCE,
    BREAKER_RECORD,
    BREAKER_RESET,
    BREAKER_SNAPSHOT,
)

__all__ = ["BreakerPart"]

_STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)
_CODES = {state: code for code, state in enumerate(_STATES)}
_FIELDS = ("state", "probes", "window")
_ADMIT, _RECORD, _FORCE = Script(BREAKER_ADMIT), Script(BREAKER_RECORD), Script(BREAKER_FORCE)
_RESET, _SNAPSHOT = Script(BREAKER_RESET), Script(BREAKER_SNAPSHOT)
# Distinct (name, config) argument lists kept encoded.
_ARG_CACHE_SIZE = 1024
# Seconds between two attempts to subscribe to the transition channel.
_SUBSCRIBE_EVERY = 1.0


# Every live store of this process, so that one learning a transition tells the others.
_LIVE: weakref.WeakSet[BreakerPart] = weakref.WeakSet()


class _View:
    """What this process last learned of one breaker."""

    __slots__ = ("gen", "learned", "reopen", "state", "until")

    def __init__(self, gen: int, state: CircuitState, learned: float) -> None:
        self.gen = gen
        self.state = state
        self.learned = learned  # loop time the reply arrived
        self.until = 0.0  # loop time until which the view may answer admit()
        self.reopen = 0.0  # loop time an OPEN view's recovery timeout ends


class BreakerPart(StoreBase):
    """``BreakerStore`` on Redis (a base class of :class:`RedisStore`)."""

    __slots__ = (
        "_arg_cache",
        "_channel",
        "_probe_ids",
        "_probes",
        "_pubsub",
        "_server",
        "_sub_loop",
        "_sub_next",
        "_sub_since",
        "_token",
        "_views",
        "cache_ttl",
    )

    def _init_breaker(self, cache_ttl: float) -> None:
        self.cache_ttl = cache_ttl
        self._channel = f"{self.prefix}cb:transitions"
        self._views: dict[str, _View] = {}
        self._arg_cache: dict[tuple[str, tuple[Any, ...]], tuple[bytes, ...]] = {}
        self._probes: dict[tuple[str, int], list[str]] = {}
        self._probe_ids = itertools.count()
        self._pubsub: Any = None
        self._sub_since: float | None = None
        self._sub_loop: asyncio.AbstractEventLoop | None = None
        self._sub_next = -math.inf
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        kwargs = getattr(getattr(self._client, "connection_pool", None), "connection_kwargs", {})
        self._server = tuple(str(kwargs.get(k)) for k in ("host", "port", "db", "path"))
        _LIVE.add(self)

    def _args(self, name: str, config: Mapping[str, Any]) -> tuple[bytes, ...]:
        key = (name, tuple(config.items()))
        try:
            found = self._arg_cache.get(key)
        except TypeError:  # an unhashable config value: encode it every time
            return self._encode_args(name, config)
        if found is None:
            if len(self._arg_cache) >= _ARG_CACHE_SIZE:
                self._arg_cache.clear()
            found = self._arg_cache[key] = self._encode_args(name, config)
        return found

    def _encode_args(self, name: str, config: Mapping[str, Any]) -> tuple[bytes, ...]:
        recovery = float(config.get("recovery_timeout", 30.0))
        hot = config.get("half_open_timeout")
        probe_ttl = self.probe_ttl if self.probe_ttl is not None else recovery
        periods = (recovery, *(float(d) for d in config.get("open_delays", ())))
        values = (
            ",".join(repr(p) for p in periods),
            int(config.get("half_open_max_calls", 1)),
            "" if hot is None else float(hot),
            float(config.get("slow_call_rate", 1.0)),
            str(config.get("policy", "consecutive")),
            int(config.get("threshold", 5)),
            int(config.get("size", 100)),
            float(config.get("seconds", 60.0)),
            int(config.get("min_calls", 10)),
            float(config.get("failure_rate", 0.5)),
            probe_ttl,
            self._channel,
            name,
        )
        return tuple((repr(v) if isinstance(v, float) else str(v)).encode() for v in values)

    def _learn(self, name: str, gen: int, state: CircuitState, retry_after: float) -> None:
        now = asyncio.get_running_loop().time()
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = _View(gen, state, now)
            self._tell_neighbours(name, gen, state)
        elif gen < view.gen:
            return  # an older reply than what we know
        elif gen > view.gen:
            self._tell_neighbours(name, gen, state)
        view.gen, view.state, view.learned = gen, state, now
        view.until = now + self.cache_ttl
        view.reopen = now + retry_after if state is CircuitState.OPEN else 0.0

    def _forget(self) -> None:
        """Stop trusting every cached view (Redis failed, or the channel was lost)."""
        for view in self._views.values():
            view.until = 0.0

    # -- the transition channel --------------------------------------------------------
    def _quick_trust(self, view: _View, now: float) -> bool | None:
        # The common case, without a coroutine: None when the channel must be read.
        if not self.cache_ttl or now >= view.until:
            return False
        pubsub = self._pubsub
        if (
            pubsub is None
            or self._sub_since is None
            or self._sub_loop is not asyncio.get_running_loop()
        ):
            return None
        if _pending(pubsub):
            return None
        return view.learned >= self._sub_since

    async def _trusted(self, view: _View, now: float) -> bool:
        if not self.cache_ttl or now >= view.until:
            return False
        pubsub = self._pubsub
        if pubsub is not None and self._sub_loop is not asyncio.get_running_loop():
            pubsub = self._pubsub = self._sub_since = None  # it belonged to another loop
        if pubsub is None or self._sub_since is None:
            if now >= self._sub_next:
                await self._subscribe(now)
            return False
        if not _pending(pubsub):
            return view.learned >= self._sub_since and now < view.until
        try:
            # Data may still sit in the kernel, unread by the loop: the first read waits
            # for it (briefly, it has arrived), the rest only drain what is buffered.
            wait = self.timeout
            while True:
                message = await checked(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                )
                if message is None:
                    break
                wait = 0.0
                self._on_transition(message.get("data"))
        except Exception:  # the channel is lost: every admission asks Redis until it is back
            await self._drop_pubsub()
            return False
        return view.learned >= self._sub_since and now < view.until

    def _tell_neighbours(self, name: str, gen: int, state: CircuitState) -> None:
        # Stores of this process on the same server and prefix learn a transition at
        # once, without waiting for the channel (whose message may still be in flight).
        for other in tuple(_LIVE):
            if other is not self and other.prefix == self.prefix and other._server == self._server:
                other._heard(name, gen, state)

    def _on_transition(self, data: Any) -> None:
        try:
            name, gen_text, state_text = text(data).split("\n")
            gen, state = int(gen_text), _STATES[int(state_text)]
        except (ValueError, IndexError):
            return
        self._heard(name, gen, state)

    def _heard(self, name: str, gen: int, state: CircuitState) -> None:
        view = self._views.get(name)
        if view is not None and gen > view.gen:
            view.gen, view.state = gen, state
            view.until = 0.0  # ask Redis next time (for the deadline and probes)

    async def _subscribe(self, now: float) -> None:
        self._sub_next = now + _SUBSCRIBE_EVERY
        self._bind()
        make = getattr(self._client, "pubsub", None)
        if make is None:  # e.g. a cluster client without pub/sub: admit always asks
            self._sub_next = math.inf
            return
        try:
            pubsub = make()
        except (Exception, asyncio.CancelledError):
            # The channel only saves round trips: admit asks Redis meanwhile. (A sync
            # call's CancelledError is never the task's: that comes at an await.)
            return
        try:
            async with asyncio.timeout(self.timeout):
                await checked(pubsub.subscribe(self._channel))
                while True:
                    message = await checked(pubsub.get_message(timeout=self.timeout))
                    if message is not None and message.get("type") in ("subscribe", b"subscribe"):
                        break
        except Exception:
            await _close_pubsub(pubsub)
            return
        connection: Any = getattr(pubsub, "connection", None)
        if not callable(getattr(connection, "register_connect_callback", None)):
            # A reconnect could not be noticed, so lost messages could not either.
            await _close_pubsub(pubsub)
            self._sub_next = math.inf
            return
        try:
            connection.register_connect_callback(self._on_reconnect)
        except (Exception, asyncio.CancelledError):
            await _close_pubsub(pubsub)
            return
        self._pubsub = pubsub
        self._sub_loop = asyncio.get_running_loop()
        self._sub_since = self._sub_loop.time()

    def _on_reconnect(self, connection: Any) -> None:
        # The channel's connection was re-established (redis-py resubscribes): messages
        # sent meanwhile are lost, so no view learned before now is trusted.
        self._sub_since = asyncio.get_running_loop().time()
        self._forget()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub, self._sub_since = self._pubsub, None, None
        self._forget()
        if pubsub is not None:
            await _close_pubsub(pubsub)

    # -- BreakerStore ----------------------------------------------------------------
    async def admit(
        self, name: str, now: float, **config: Any
    ) -> tuple[bool, int, CircuitState, float]:
        """Admit or reject one call, atomically with the state check, on the server's clock.

        A CLOSED breaker whose state this process learned from its last reply (and no
        transition was published since) is admitted without a round trip.

        Args:
            name: the breaker's name (the key).
            now: the guard's clock (unused: Redis's clock decides).
            **config: the breaker's policy (``recovery_timeout``, ``policy``, ...).

        Returns:
            ``(allowed, generation, state, retry_after)``.
        """
        keys = self._keys_of("cb", name, _FIELDS)
        view = self._views.get(name)
        if view is not None:
            local = asyncio.get_running_loop().time()
            trusted = self._quick_trust(view, local)
            if trusted is None:
                trusted = await self._trusted(view, local)
            if trusted:
                if view.state is CircuitState.CLOSED:
                    return True, view.gen, CircuitState.CLOSED, 0.0
                if view.state is CircuitState.OPEN and local < view.reopen:
                    return False, view.gen, CircuitState.OPEN, view.reopen - local
        probe = f"{self._token}-{next(self._probe_ids)}"
        lost = self._take_lost("cb", name)
        try:
            reply = await self._run(_ADMIT, keys, [*self._args(name, config), probe, *lost])
        except BaseException:
            self._lose("cb", name, [*lost, probe])  # the probe may have been taken
            raise
        if reply is DOWN:
            self._lose("cb", name, [*lost, probe])  # given back at the next contact
            gen = view.gen if view is not None else 0
            if self.fail_open:
                return True, gen, CircuitState.CLOSED, 0.0
            return False, gen, CircuitState.OPEN, DOWN_RETRY_AFTER
        try:
            allowed, gen_value, code, retry_text, took_probe = reply
            gen, state, retry_after = int(gen_value), _STATES[int(code)], float(retry_text)
            took, admitted = int(took_probe), bool(int(allowed))
        except MALFORMED:
            self._lose("cb", name, [probe])
            raise self._malformed("admit", reply) from None
        self._learn(name, gen, state, retry_after)
        if took:
            self._probes.setdefault((name, gen), []).append(probe)
        return admitted, gen, state, retry_after

    async def record(
        self, name: str, generation: int, outcome: Outcome, duration: float, **config: Any
    ) -> CircuitState:
        """Record the outcome of a call admitted in ``generation`` (stale ones change nothing).

        Args:
            name: the breaker's name.
            generation: the generation the call was admitted in.
            outcome: ``success``, ``failure``, ``slow``, ``slow_failure`` or ``neutral``.
            duration: the call's duration in seconds (slowness is decided by the guard).
            **config: the breaker's policy.

        Returns:
            The breaker's state after the record (the last known one if Redis failed).
        """
        keys = self._keys_of("cb", name, _FIELDS)
        probes = self._probes.get((name, generation))
        probe = ""
        if probes:
            probe = probes.pop()
            if not probes:
                del self._probes[(name, generation)]
        args = self._args(name, config)
        lost = self._take_lost("cb", name)
        try:
            reply = await self._run(_RECORD, keys, [*args, generation, outcome, probe, *lost])
        except BaseException:
            self._lose("cb", name, [*lost, probe] if probe else lost)
            raise
        if reply is DOWN:
            self._lose("cb", name, [*lost, probe] if probe else lost)  # still taken
            view = self._views.get(name)
            if view is None or self.fail_open:
                return CircuitState.CLOSED if self.fail_open else CircuitState.OPEN
            return view.state
        try:
            gen_value, code, retry_text = reply
            gen, state, retry_after = int(gen_value), _STATES[int(code)], float(retry_text)
        except MALFORMED:
            raise self._malformed("record", reply) from None
        self._learn(name, gen, state, retry_after)
        return state

    async def force(self, name: str, state: CircuitState, **config: Any) -> None:
        """Force the breaker into ``state`` for every worker (forced OPEN lasts until reset).

        Args:
            name: the breaker's name.
            state: the state to force.
            **config: the breaker's policy.
        """
        keys = self._keys_of("cb", name, _FIELDS)
        args = [*self._args(name, config), _CODES[state]]
        reply = await self._run(_FORCE, keys, args)
        if reply is not DOWN:
            try:
                gen_value, code, retry_text = reply
                gen, state, retry_after = int(gen_value), _STATES[int(code)], float(retry_text)
            except MALFORMED:
                raise self._malformed("force", reply) from None
            self._learn(name, gen, state, retry_after)

    async def reset(self, name: str) -> None:
        """Close the breaker for every worker and clear its counters, window and probes.

        Args:
            name: the breaker's name.
        """
        keys = self._keys_of("cb", name, _FIELDS)
        reply = await self._run(_RESET, keys, [self._channel, name])
        if reply is not DOWN:
            try:
                gen = int(reply)
            except MALFORMED:
                raise self._malformed("reset", reply) from None
            self._learn(name, gen, CircuitState.CLOSED, 0.0)

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        """Return the breaker's stored state (the effective state after a due recovery).

        Args:
            name: the breaker's name.

        Returns:
            A mapping with ``state`` (a :class:`~headrace_core.CircuitState`),
            ``generation``, ``opened_at`` and ``open_until`` (server seconds),
            ``retry_after``, ``forced``, ``streak``, ``ho_taken``, ``ho_ok``,
            ``window_calls``, ``window_failures``, ``window_slow``, ``last_reason`` and
            ``available`` (False when Redis could not be read; then only that key is set).
        """
        keys = self._keys_of("cb", name, _FIELDS)
        reply = await self._run(_SNAPSHOT, keys, [])
        if reply is DOWN:
            return {"available": False}
        try:
            raw = {text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
            now = float(raw["now"])
            forced = text(raw.get("forced", "0")) == "1"
            state = _STATES[int(raw.get("st", 0))]
            open_until = float(raw.get("open_until", 0.0))
            if state is CircuitState.OPEN and not forced and now >= open_until:
                state = CircuitState.HALF_OPEN
            if state is CircuitState.OPEN:
                retry_after = math.inf if forced else max(0.0, open_until - now)
            else:
                retry_after = 0.0
            reason = raw.get("reason")
            return {
                "available": True,
                "state": state,
                "generation": int(raw.get("gen", 0)),
                "opened_at": float(raw.get("opened_at", 0.0)),
                "open_until": math.inf if forced else open_until,
                "retry_after": retry_after,
                "forced": forced,
                "streak": int(raw.get("streak", 0)),
                "ho_taken": int(raw.get("ho_taken", 0)),
                "ho_ok": int(raw.get("ho_ok", 0)),
                "window_calls": int(raw.get("wc", 0)),
                "window_failures": int(raw.get("wf", 0)),
                "window_slow": int(raw.get("ws", 0)),
                "last_reason": None if reason is None else text(reason),
            }
        except MALFORMED:
            raise self._malformed("snapshot", reply) from None


async def _close_pubsub(pubsub: Any) -> None:
    try:
        async with asyncio.timeout(0.5):
            await checked(pubsub.aclose())
    except Exception:
        pass


def _pending(pubsub: Any) -> bool:
    """Whether the channel may hold a message (or lost its connection), without awaiting.

    An asyncio stream buffers what the loop has read from the socket, and a zero-timeout
    ``select`` tells whether the kernel holds more that the loop has not read yet; when
    both are empty on a live connection, no transition was published and nothing needs
    reading. When the client's internals differ from what is checked here, read anyway.
    """
    connection = getattr(pubsub, "connection", None)
    reader = getattr(connection, "_reader", None)
    buffer = getattr(reader, "_buffer", None)
    if buffer is None or not isinstance(reader, asyncio.StreamReader):
        return True
    if buffer or reader.at_eof() or reader.exception() is not None or getattr(reader, "_eof", True):
        return True
    transport = getattr(reader, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
