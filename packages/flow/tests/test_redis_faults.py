"""Fault injection where flow's Redis Streams source and sink call code that is not theirs.

``POINTS`` is the table: the codec (``encode`` in the sink, ``decode`` in the source) and
the client the source was given (its reads, and its acknowledgements, which are sent from
a background task). Against a real redis-server; whatever the callback does, the run ends,
no task is left, the user's error reaches the caller (or the error handler), and an entry
is acknowledged only when its item was finished.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

import headrace_flow.redis
from headrace_core import HeadraceError
from headrace_flow import ErrorEvent, SourceError, TransformerError, flow, stage
from headrace_flow.redis import JsonCodec, redis_stream_sink, redis_stream_source
from shared.faults import (
    ASYNC_FAULTS,
    SYNC_FAULTS,
    Fault,
    FaultError,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    missing_points,
    run_injection,
)

pytestmark = pytest.mark.redis

BAD = 2  # the item the callback misbehaves on
ITEMS = [0, 1, BAD, 3]
_url: list[str] = []


@pytest.fixture(autouse=True)
def _remember_url(redis_url: str) -> None:
    _url[:] = [redis_url]


async def connect() -> tuple[Any, str]:
    client: Any = Redis.from_url(_url[0])
    return client, f"faults-{uuid.uuid4().hex}"


async def pending(client: Any, stream: str) -> int:
    return int((await client.xpending(stream, "g"))["pending"])


class Events:
    def __init__(self) -> None:
        self.events: list[ErrorEvent] = []

    async def __call__(self, event: ErrorEvent) -> None:
        self.events.append(event)


def interrupts(fault: Fault) -> bool:
    return fault in (Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT)


# -- the codec ---------------------------------------------------------------------------
class BadEncode(JsonCodec):
    def __init__(self, fault: Fault) -> None:
        super().__init__()
        self.fault = fault

    def encode(self, item: Any) -> dict[str, str]:
        if item == BAD:
            return inject(self.fault, wrong=None)  # type: ignore[no-any-return]
        return super().encode(item)


async def drive_encode(fault: Fault) -> None:
    client, stream = await connect()
    try:
        events = Events()
        f = flow(redis_stream_sink(client, stream, codec=BadEncode(fault), name="out"))
        f.set_error_handler(events)
        if interrupts(fault):
            error = expected_error(fault)
            assert error is not None
            with pytest.raises(error):
                await f.run(ITEMS)
        else:
            stats = await f.run(ITEMS)
            assert stats.failed == 1
            [event] = events.events
            assert isinstance(event, TransformerError)
            assert event.item == BAD
            if fault is Fault.RAISE:
                assert isinstance(event.exception, FaultError)
            elif fault is Fault.CANCEL:
                assert isinstance(event.exception, asyncio.CancelledError)
            else:
                assert isinstance(event.exception, TypeError)  # no fields to append
            written = [json.loads(f[b"data"]) for _, f in await client.xrange(stream)]
            assert written == [0, 1, 3]
        # the next run works
        await flow(redis_stream_sink(client, stream)).run([9])
    finally:
        await client.aclose()


class BadDecode(JsonCodec):
    def __init__(self, fault: Fault) -> None:
        super().__init__()
        self.fault = fault

    def decode(self, fields: Any) -> Any:
        item = super().decode(fields)
        if item == BAD:
            return inject(self.fault, wrong="garbage")
        return item


async def drive_decode(fault: Fault) -> None:
    client, stream = await connect()
    try:
        for item in ITEMS:
            await client.xadd(stream, {"data": json.dumps(item)})
        got: list[Any] = []

        async def keep(x: Any) -> None:
            got.append(x)

        events = Events()
        src = redis_stream_source(
            client, stream, "g", "c", block=0.01, claim_idle=None, codec=BadDecode(fault)
        )
        f = flow(stage(keep))
        f.set_error_handler(events)
        if fault is Fault.WRONG:  # any value is an item: it goes through
            task = asyncio.create_task(f.run(src))
            while src.stats().acked < len(ITEMS):
                await asyncio.sleep(0.001)
            await f.drain()
            await task
            assert got == [0, 1, "garbage", 3]
            assert await pending(client, stream) == 0
            return
        if interrupts(fault):
            error = expected_error(fault)
            assert error is not None
            with pytest.raises(error):
                await f.run(src)
        else:
            await f.run(src)  # the source ended with the error: the run drained
            [event] = events.events
            assert isinstance(event, SourceError)
        assert got == [0, 1]
        assert src.stats().acked == 2
        assert await pending(client, stream) == 2  # BAD and what came with it: kept
    finally:
        await client.aclose()


# -- the client ------------------------------------------------------------------------------
class Faulty:
    """The real client, one of whose commands misbehaves (every time it is called)."""

    def __init__(self, client: Any, command: str, fault: Fault) -> None:
        self._client = client
        self._command = command
        self._fault = fault
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._command:
            return real

        async def misbehave(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await ainject(self._fault, wrong=42)

        return misbehave


async def drive_read(fault: Fault) -> None:
    client, stream = await connect()
    try:
        await client.xadd(stream, {"data": "1"})
        src = redis_stream_source(client, stream, "g", "c", block=0.01, claim_idle=None)
        src._client = Faulty(client, "xreadgroup", fault)
        events = Events()

        async def keep(x: Any) -> None:
            pass

        f = flow(stage(keep))
        f.set_error_handler(events)
        if fault is Fault.HANG:
            task = asyncio.create_task(f.run(src))
            while src._client.calls == 0:
                await asyncio.sleep(0.001)
            await f.drain()  # cancels the read that hangs
            await task
            assert events.events == []
        elif interrupts(fault):
            error = expected_error(fault)
            assert error is not None
            with pytest.raises(error):
                await f.run(src)
        else:
            await f.run(src)
            [event] = events.events
            assert isinstance(event, SourceError)
            expected: type[BaseException] = {
                Fault.RAISE: FaultError,
                Fault.CANCEL: HeadraceError,  # the client's stray CancelledError, wrapped
                Fault.WRONG: TypeError,  # 42 is no reply of XREADGROUP
            }[fault]
            assert isinstance(event.exception, expected)
        assert src.stats().in_flight == 0
    finally:
        await client.aclose()


async def drive_ack(fault: Fault) -> None:
    client, stream = await connect()
    try:
        await client.xadd(stream, {"data": "1"})
        src = redis_stream_source(
            client, stream, "g", "c", block=0.01, claim_idle=None, ack_timeout=1.0
        )
        src._client = Faulty(client, "xack", fault)

        async def keep(x: Any) -> None:
            pass

        f = flow(stage(keep))

        async def drain_once_acknowledging() -> None:
            while src.stats().read < 1 or src._client.calls == 0:
                await asyncio.sleep(0.001)
            await f.drain()

        # (the run in this task: an interrupt it raises must reach this caller)
        drainer = asyncio.create_task(drain_once_acknowledging())
        try:
            if fault is Fault.WRONG:  # the reply of XACK is not needed
                await f.run(src)
                return
            error: type[BaseException] | None = {
                Fault.RAISE: FaultError,
                Fault.CANCEL: HeadraceError,
                Fault.HANG: TimeoutError,
            }.get(fault) or expected_error(fault)
            assert error is not None
            with pytest.raises(error) as caught:
                await f.run(src)
        finally:
            await drainer
        if not interrupts(fault):
            assert any("delivered again" in n for n in caught.value.__notes__)
        assert await pending(client, stream) == 1  # completed, not acknowledged: redelivered
    finally:
        await client.aclose()


POINTS = [
    Point(
        "redis_stream_sink.codec.encode", SYNC_FAULTS, drive_encode, ("redis_stream_sink.codec",)
    ),
    Point(
        "redis_stream_source.codec.decode",
        SYNC_FAULTS,
        drive_decode,
        ("redis_stream_source.codec", "RedisStreamSource.codec"),
    ),
    Point("redis_stream_source.client.xreadgroup", ASYNC_FAULTS, drive_read),
    Point("redis_stream_source.client.xack(background)", ASYNC_FAULTS, drive_ack),
]


def test_every_callable_parameter_is_in_the_table() -> None:
    assert missing_points(headrace_flow.redis, POINTS) == []


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float) -> None:
    run_injection(point.drive, fault, start=start, deadline=120.0)
