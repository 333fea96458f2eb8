"""Redis Streams as a flow's source (a consumer group) and sink (``XADD``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from headrace_core import ConfigurationError
from headrace_core.backoff import exponential
from headrace_core.lowlevel import check_int, check_number, keep_cancel, safe_repr
from headrace_flow._errors import events
from headrace_flow._lineage import Ticket, Tracked, TrackedSource
from headrace_flow._stages import Stage, stage
from headrace_flow._state import note

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = [
    "JsonCodec",
    "RedisStreamSource",
    "StreamCodec",
    "StreamSourceStats",
    "redis_stream_sink",
    "redis_stream_source",
]

#: Errors after which a read or an acknowledgement is tried again (a restart, a failover).
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
#: The first delay between attempts while Redis cannot be reached, and the cap.
_RETRY = exponential(base=0.05, factor=2.0, max=2.0)


@runtime_checkable
class StreamCodec(Protocol):
    """Turns an item into a stream entry's fields and back."""

    def encode(self, item: Any) -> Mapping[Any, Any]:
        """The fields of the entry for ``item`` (names and values Redis can store)."""
        ...

    def decode(self, fields: Mapping[Any, Any]) -> Any:
        """The item of an entry with ``fields``.

        Names and values are ``bytes``, unless the client decodes responses.
        """
        ...


class JsonCodec:
    """An item as one JSON-encoded field (the default codec).

    Args:
        field: the field's name.
    """

    __slots__ = ("_field", "_raw")

    def __init__(self, field: str = "data") -> None:
        given: object = field
        if not isinstance(given, str) or not given:
            raise ConfigurationError(f"field must be a non-empty str, got {safe_repr(field)}")
        self._field = field
        self._raw = field.encode()

    @property
    def field(self) -> str:
        """The field's name."""
        return self._field

    def encode(self, item: Any) -> dict[str, str]:
        """``{field: json.dumps(item)}``."""
        return {self._field: json.dumps(item, separators=(",", ":"))}

    def decode(self, fields: Mapping[Any, Any]) -> Any:
        """``json.loads`` of the field.

        Raises:
            KeyError: the entry has no such field.
            ValueError: the field is not JSON.
        """
        raw = fields.get(self._raw)
        if raw is None:
            raw = fields.get(self._field)
        if raw is None:
            raise KeyError(f"the stream entry has no field {self._field!r}")
        return json.loads(raw)

    def __repr__(self) -> str:
        return f"JsonCodec(field={self._field!r})"


def _check_codec(codec: object) -> StreamCodec:
    if codec is None:
        return JsonCodec()
    if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
        raise ConfigurationError(
            f"codec must have encode(item) and decode(fields) methods, got {safe_repr(codec)}"
        )
    return codec  # type: ignore[return-value]


def _check_key(argument: str, value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{argument} must be a non-empty str, got {safe_repr(value)}")
    return value


def _check_client(client: object) -> None:
    if not callable(getattr(client, "xadd", None)):
        raise ConfigurationError(
            f"client must be a redis.asyncio.Redis or RedisCluster client, got {safe_repr(client)}"
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the sink ---------------------------------------------------------------------------
def redis_stream_sink(
    client: Redis | RedisCluster,
    stream: str,
    *,
    maxlen: int | None = None,
    approximate: bool = True,
    codec: StreamCodec | None = None,
    name: str | None = None,
    workers: int = 1,
    **options: Any,
) -> Stage[Any, str]:
    """A stage that appends each item to a Redis stream (``XADD``).

    Each worker awaits Redis's reply before it takes its next item, so a slow or
    unreachable Redis holds the pipeline back (backpressure) instead of piling up
    entries in memory. The stage's output is the new entry's id: as the last stage it
    is counted as delivered; in the middle of a pipeline the next stage receives it.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client.
        stream: the stream's key.
        maxlen: cap the stream near this many entries (``MAXLEN``); ``None``: no cap.
        approximate: trim with ``~`` (cheaper; the stream may hold a few more).
        codec: turns an item into the entry's fields (:class:`JsonCodec` by default).
            What ``encode`` raises is the item's failure, for the error handler.
        name: the stage's name (default ``"redis_stream_sink"``).
        workers: concurrent appends (entries of concurrent workers may interleave).
        **options: further ``stage()`` options (``retries=``, ``timeout=``,
            ``queue_size=``, ``ordered=`` ...).

    Returns:
        The sink :class:`~headrace_flow.Stage`.

    Raises:
        ConfigurationError: for an invalid argument, naming it.
    """
    _check_client(client)
    key = _check_key("stream", stream)
    limit = None if maxlen is None else check_int("maxlen", maxlen, ge=1)
    coder = _check_codec(codec)
    trim = bool(approximate)

    async def append(item: Any) -> str:
        fields: object = coder.encode(item)
        if not isinstance(fields, Mapping) or not fields:
            raise TypeError(
                f"{safe_repr(coder)}.encode() returned {safe_repr(fields)}, "
                "not a non-empty mapping of fields"
            )
        reply = await keep_cancel(
            client.xadd(key, dict(fields), maxlen=limit, approximate=trim),
            "the Redis client",
        )
        return _text(reply)

    return stage(append, name=name or "redis_stream_sink", workers=workers, **options)


# -- the source -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamSourceStats:
    """What a :class:`RedisStreamSource` did, since it was made.

    Attributes:
        read: entries handed to the pipeline (new ones, this consumer's own pending
            ones, and claimed ones).
        claimed: of those, entries claimed from other consumers (``XAUTOCLAIM``).
        acked: entries acknowledged (``XACK``) after their items left the pipeline.
        in_flight: entries handed to the pipeline and not acknowledged yet.
        dead_lettered: undecodable entries moved to the dead-letter stream.
    """

    read: int
    claimed: int
    acked: int
    in_flight: int
    dead_lettered: int


class RedisStreamSource(TrackedSource):
    """A flow source reading a Redis stream through a consumer group (at least once).

    Made by :func:`redis_stream_source`; pass it to ``run()``, ``start()`` (as the
    producer) or ``iterate()``. One run at a time uses it; it can serve run after run.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        stream: str,
        group: str,
        consumer: str,
        *,
        batch: int,
        block: float,
        claim_idle: float | None,
        codec: StreamCodec,
        start: str,
        dead_letter: str | None,
        reconnect_timeout: float | None,
        ack_timeout: float,
    ) -> None:
        self._client: Any = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._batch = batch
        self._block = block
        self._claim_idle = claim_idle
        self._codec = codec
        self._start = start
        self._dead_letter = dead_letter
        self._reconnect = reconnect_timeout
        self._ack_timeout = ack_timeout
        self._in_flight: set[object] = set()
        self._acks: list[object] = []
        self._wake: asyncio.Event | None = None
        self._helper: asyncio.Task[None] | None = None
        self._interrupt: BaseException | None = None  # raised by the client in the helper
        self._read = 0
        self._claimed = 0
        self._acked = 0
        self._dead = 0
        self._running = False

    def stats(self) -> StreamSourceStats:
        """The counters now."""
        return StreamSourceStats(
            read=self._read,
            claimed=self._claimed,
            acked=self._acked,
            in_flight=len(self._in_flight),
            dead_lettered=self._dead,
        )

    def __repr__(self) -> str:
        return (
            f"RedisStreamSource(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    # -- reading --------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Tracked]:
        if self._running:
            raise RuntimeError(f"{self!r} is already read by a run; one run at a time")
        self._running = True
        return self._entries()

    async def _entries(self) -> AsyncGenerator[Tracked, None]:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._helper = loop.create_task(self._acknowledge())
        await self._call(self._create_group)
        backlog: str | None = "0"  # this consumer's own pending entries come first
        claim_idle = self._claim_idle
        next_claim = loop.time() if claim_idle is not None else math.inf
        cursor = "0-0"
        while True:
            claimed = False
            if backlog is None and loop.time() >= next_claim:  # (own pending ones first)
                assert claim_idle is not None
                cursor, entries = await self._call(self._claim, cursor)
                claimed = True
                if cursor in ("0-0", "0"):  # a full pass: the next one after a while
                    next_claim = loop.time() + claim_idle / 2
            elif backlog is not None:
                entries = await self._call(self._read_from, backlog, None)
                # a short page: the backlog is read; else the next page after its last
                backlog = None if len(entries) < self._batch else _text(entries[-1][0])
            else:
                block = self._block
                if claim_idle is not None:
                    block = min(block, max(0.001, next_claim - loop.time()))
                entries = await self._call(self._read_from, ">", block)
            for entry_id, fields in entries:
                if entry_id in self._in_flight:
                    # a claim of an entry this consumer works on (a late heartbeat), or
                    # finished and not acknowledged yet
                    continue
                if fields is None:  # deleted (trimmed) while pending: nothing to process
                    self._completed(entry_id)
                    continue
                try:
                    item = self._codec.decode(fields)
                except Exception as exc:
                    if self._dead_letter is None:
                        note(
                            exc,
                            f"decoding entry {_text(entry_id)} of Redis stream {self.stream!r} "
                            f"(group {self.group!r}); it stays pending",
                        )
                        raise
                    await self._call(self._bury, entry_id, fields, exc)
                    continue
                self._read += 1
                if claimed:
                    self._claimed += 1
                self._in_flight.add(entry_id)
                yield Tracked(item, Ticket(entry_id, self._completed))

    async def _create_group(self) -> None:
        try:
            await keep_cancel(
                self._client.xgroup_create(self.stream, self.group, id=self._start, mkstream=True),
                "the Redis client",
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_from(self, start: str, block: float | None) -> list[Any]:
        reply = await keep_cancel(
            self._client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: start},
                count=self._batch,
                block=None if block is None else max(1, round(block * 1000)),
            ),
            "the Redis client",
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            for entries in reply.values():
                return list(entries[0]) if entries and isinstance(entries[0], list) else []
            return []
        return list(reply[0][1])

    async def _claim(self, cursor: str) -> tuple[str, list[Any]]:
        assert self._claim_idle is not None
        reply = await keep_cancel(
            self._client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=max(1, round(self._claim_idle * 1000)),
                start_id=cursor,
                count=self._batch,
            ),
            "the Redis client",
        )
        return _text(reply[0]), list(reply[1])

    async def _bury(self, entry_id: object, fields: Mapping[Any, Any], exc: Exception) -> None:
        assert self._dead_letter is not None
        record = dict(fields)
        record["headrace-id"] = _text(entry_id)
        record["headrace-stream"] = self.stream
        record["headrace-error"] = f"{type(exc).__name__}: {safe_repr(exc, 500)}"
        # two commands, not one transaction: the streams may live in different cluster
        # slots (a crash in between dead-letters the entry again: at least once)
        await keep_cancel(self._client.xadd(self._dead_letter, record), "the Redis client")
        await keep_cancel(self._client.xack(self.stream, self.group, entry_id), "the Redis client")
        self._dead += 1
        events.warning(
            "entry %s of Redis stream %r was not decodable (%s): moved to %r",
            _text(entry_id),
            self.stream,
            type(exc).__name__,
            self._dead_letter,
            kind="Flow",
            component=None,
            event="dead_lettered",
            stream=self.stream,
            error_type=type(exc).__name__,
        )

    async def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)``, again while Redis cannot be reached (within the reconnect time).

        A group that went missing (a Redis restarted without its data) is created again.
        """
        loop = asyncio.get_running_loop()
        give_up = None if self._reconnect is None else loop.time() + self._reconnect
        delays = iter(_RETRY.delays())
        while True:
            try:
                return await fn(*args)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) or fn == self._create_group:
                    raise
                await self._call(self._create_group)
                continue
            except _TRANSIENT as exc:
                error: Exception = exc
            delay = next(delays)
            if give_up is not None and loop.time() + delay > give_up:
                note(
                    error,
                    f"Redis stream {self.stream!r} could not be read for "
                    f"{self._reconnect:g}s (reconnect_timeout)",
                )
                raise error
            await asyncio.sleep(delay)

    # -- acknowledging --------------------------------------------------------------------
    def _completed(self, entry_id: object) -> None:
        """An entry's item has left the pipeline: acknowledge it (in the background).

        It stays in flight until Redis confirmed the acknowledgement, so that a claim
        meanwhile (of an entry idle for long) never hands it to the pipeline again.
        """
        self._acks.append(entry_id)
        wake = self._wake
        if wake is not None:
            wake.set()

    async def _acknowledge(self) -> None:
        """Send the acknowledgements as they come; renew the in-flight entries' claim."""
        wake = self._wake
        assert wake is not None
        beat = None if self._claim_idle is None else self._claim_idle / 3
        delays = iter(_RETRY.delays())
        while True:
            if not self._acks:
                try:
                    async with asyncio.timeout(beat):
                        await wake.wait()
                except TimeoutError:
                    await self._heartbeat()
                    continue
                wake.clear()
            try:
                await self._send_acks()
            except Exception:
                await asyncio.sleep(next(delays))  # sent again once Redis answers
                continue
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # KeyboardInterrupt & co.: settle() raises it
                self._interrupt = exc
                return
            delays = iter(_RETRY.delays())

    async def _send_acks(self) -> None:
        """Acknowledge every completed entry in one ``XACK``; on failure keep them."""
        ids = self._acks
        self._acks = []
        try:
            await keep_cancel(self._client.xack(self.stream, self.group, *ids), "the Redis client")
        except BaseException:
            self._acks[:0] = ids  # acknowledging twice is harmless: in order, again
            raise
        self._acked += len(ids)
        in_flight = self._in_flight
        for entry_id in ids:
            in_flight.discard(entry_id)

    async def _heartbeat(self) -> None:
        """Reset the idle time of the entries in flight, so no other consumer claims them."""
        ids = list(self._in_flight)
        if not ids:
            return
        # on failure the next beat tries again (meanwhile another consumer may claim them)
        with contextlib.suppress(Exception):
            await keep_cancel(
                self._client.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True),
                "the Redis client",
            )

    async def settle(self) -> None:
        """Acknowledge what was completed (within ``ack_timeout``); then stop.

        Entries read and not completed (a stop, a cancel, an error that ended the run)
        stay pending: this consumer reads them again at its next run, and others claim
        them after ``claim_idle``.

        Raises:
            Exception: the last error of Redis when completed entries could not be
                acknowledged in time (they will be delivered again).
            BaseException: a ``KeyboardInterrupt`` or ``SystemExit`` that the client
                raised while acknowledging in the background.
        """
        helper, self._helper = self._helper, None
        self._running = False
        self._wake = None
        if helper is None:
            return
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)
        self._in_flight.clear()
        interrupt, self._interrupt = self._interrupt, None
        if interrupt is not None:
            self._acks = []
            raise interrupt
        if not self._acks:
            return
        error: BaseException | None = None
        delays = iter(_RETRY.delays())
        try:
            async with asyncio.timeout(self._ack_timeout):
                while self._acks:
                    try:
                        await self._send_acks()
                    except Exception as exc:
                        error = exc
                        await asyncio.sleep(next(delays))
        except TimeoutError as exc:
            left, self._acks = len(self._acks), []
            failure = error or exc
            note(
                failure,
                f"{left} completed entries of Redis stream {self.stream!r} were not "
                f"acknowledged within {self._ack_timeout:g}s; they will be delivered again",
            )
            raise failure from None


def redis_stream_source(
    client: Redis | RedisCluster,
    stream: str,
    group: str,
    consumer: str,
    *,
    batch: int = 16,
    block: float = 1.0,
    claim_idle: float | None = 30.0,
    codec: StreamCodec | None = None,
    start: str = "0",
    dead_letter: str | None = None,
    reconnect_timeout: float | None = 30.0,
    ack_timeout: float = 10.0,
) -> RedisStreamSource:
    """A source that reads a Redis stream through a consumer group, at least once.

    The group is created (with the stream) when missing, and used as it is when it
    exists. Each entry is decoded into an item and acknowledged (``XACK``) only once the
    item has left the pipeline: it reached the end (the last stage, or the consumer of
    ``iterate()``), was filtered, or failed or was dropped and the error handler let the
    run go on. An item that fans out is acknowledged when its last output has left; a
    batch acknowledges all of its items. A process that dies between reading and
    finishing leaves its entries pending: this consumer reads them first when it starts
    again, and any consumer of the group claims them (``XAUTOCLAIM``) once they have been
    idle for ``claim_idle`` seconds. While an item is worked on, its entry's idle time is
    reset every ``claim_idle / 3`` seconds, so a slow item is not claimed by another
    consumer while this one is alive.

    Redis going away (a restart, a failover) is survived: reads and acknowledgements are
    tried again, backing off, for up to ``reconnect_timeout`` seconds; a group that
    went missing (a restart without persistence) is created again. After that the read's
    error ends the source (a ``SourceError`` for the run's error handler).

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client.
        stream: the stream's key.
        group: the consumer group's name.
        consumer: this consumer's name in the group (unique per process; the same name
            after a restart recovers its pending entries at once).
        batch: entries read per round trip (``COUNT``).
        block: the longest a read waits for new entries, in seconds (``BLOCK``).
        claim_idle: claim entries pending for longer than this many seconds on any
            consumer (one that died); ``None``: never claim.
        codec: turns an entry's fields into an item (:class:`JsonCodec` by default).
        start: where a group created here starts: ``"0"`` (every entry in the stream)
            or ``"$"`` (only entries added from now on).
        dead_letter: a stream to move undecodable entries to (with the error, the entry
            id and the stream in extra fields; then acknowledged); ``None``: the decoding
            error ends the source and the entry stays pending.
        reconnect_timeout: how long to keep trying while Redis cannot be reached;
            ``None``: as long as it takes.
        ack_timeout: how long the end of a run waits for the last acknowledgements.

    Returns:
        The :class:`RedisStreamSource`.

    Raises:
        ConfigurationError: for an invalid argument, naming it.
    """
    _check_client(client)
    return RedisStreamSource(
        client,
        _check_key("stream", stream),
        _check_key("group", group),
        _check_key("consumer", consumer),
        batch=check_int("batch", batch, ge=1),
        block=check_number("block", block, gt=0),
        claim_idle=None if claim_idle is None else check_number("claim_idle", claim_idle, gt=0),
        codec=_check_codec(codec),
        start=_check_start(start),
        dead_letter=None if dead_letter is None else _check_key("dead_letter", dead_letter),
        reconnect_timeout=None
        if reconnect_timeout is None
        else check_number("reconnect_timeout", reconnect_timeout, ge=0),
        ack_timeout=check_number("ack_timeout", ack_timeout, gt=0),
    )


def _check_start(start: object) -> str:
    if start not in ("0", "$") and not (
        isinstance(start, str) and start.replace("-", "", 1).isdigit()
    ):
        raise ConfigurationError(f"start must be '0', '$' or an entry id, got {safe_repr(start)}")
    return str(start)
