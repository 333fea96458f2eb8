"""Redis Streams as a flow's source and sink, against a real redis-server.

Entries are acknowledged only once their items have left the pipeline; a consumer that
dies leaves them pending for the others to claim; a Redis restart is survived. Claiming
depends on Redis's own idle clock (real time): those tests wait a few tenths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from headrace_core import ConfigurationError
from headrace_flow import (
    DROP,
    ErrorEvent,
    Last,
    SourceError,
    TransformerError,
    batched,
    flow,
    log_and_continue,
    stage,
)
from headrace_flow.redis import (
    JsonCodec,
    RedisStreamSource,
    StreamCodec,
    StreamSourceStats,
    redis_stream_sink,
    redis_stream_source,
)
from shared.pytest_fixtures import REPOSITORY, RedisServer, child_env

pytestmark = pytest.mark.redis

NOT_A_CLIENT: Any = object()
NONE: Any = None
THREE: Any = 3


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    redis = Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
def key() -> str:
    return f"stream-{uuid.uuid4().hex}"


async def fill(client: Any, stream: str, items: list[Any]) -> list[bytes]:
    ids = []
    for item in items:
        ids.append(await client.xadd(stream, {"data": json.dumps(item)}))
    return ids


async def pending(client: Any, stream: str, group: str) -> int:
    info = await client.xpending(stream, group)
    return int(info["pending"])


async def outputs(client: Any, stream: str) -> list[Any]:
    return [json.loads(fields[b"data"]) for _, fields in await client.xrange(stream)]


def source(client: Any, stream: str, consumer: str = "c1", **options: Any) -> RedisStreamSource:
    options.setdefault("block", 0.01)
    return redis_stream_source(client, stream, "g", consumer, **options)


async def run_until_read(f: Any, src: RedisStreamSource, count: int) -> Any:
    """Run ``f`` over ``src`` until ``count`` entries were read, then drain it."""
    task = asyncio.create_task(f.run(src))
    while src.stats().read < count and not task.done():
        await asyncio.sleep(0.005)
    await f.drain()
    return await task


# -- the sink --------------------------------------------------------------------------
async def test_the_sink_appends_each_item_as_json_and_returns_the_entry_id(
    client: Any, key: str
) -> None:
    seen: list[str] = []

    async def record(entry_id: str) -> None:
        seen.append(entry_id)

    f = flow(redis_stream_sink(client, key), stage(record))
    stats = await f.run([{"n": 1}, [2, 3], "four"])
    assert stats.completed == 3
    assert await outputs(client, key) == [{"n": 1}, [2, 3], "four"]
    assert sorted(seen) == sorted(e.decode() for e, _ in await client.xrange(key))


async def test_the_sink_trims_to_maxlen(client: Any, key: str) -> None:
    f = flow(redis_stream_sink(client, key, maxlen=5, approximate=False))
    await f.run(range(20))
    assert await outputs(client, key) == list(range(15, 20))


async def test_an_item_the_codec_cannot_encode_fails_with_the_item(client: Any, key: str) -> None:
    events: list[ErrorEvent] = []

    async def handler(event: ErrorEvent) -> None:
        events.append(event)

    f = flow(redis_stream_sink(client, key, name="out"))
    f.set_error_handler(handler)
    stats = await f.run([1, {2}, 3])  # a set is not JSON
    assert stats.completed == 2
    assert stats.failed == 1
    [event] = events
    assert isinstance(event, TransformerError)
    assert event.item == {2}
    assert event.stage == "out"
    assert isinstance(event.exception, TypeError)
    assert await outputs(client, key) == [1, 3]


class Pairs:
    """A codec of its own: an item (a, b) as two fields."""

    def encode(self, item: Any) -> dict[str, str]:
        return {"a": str(item[0]), "b": str(item[1])}

    def decode(self, fields: Any) -> Any:
        return (int(fields[b"a"]), int(fields[b"b"]))


async def test_a_codec_of_its_own_on_both_ends(client: Any, key: str) -> None:
    assert isinstance(Pairs(), StreamCodec)
    await flow(redis_stream_sink(client, key, codec=Pairs())).run([(1, 2), (3, 4)])
    got: list[Any] = []

    async def keep(item: Any) -> None:
        got.append(item)

    src = source(client, key, codec=Pairs())
    await run_until_read(flow(stage(keep)), src, 2)
    assert got == [(1, 2), (3, 4)]


async def test_a_codec_that_returns_no_fields_fails_the_item(client: Any, key: str) -> None:
    class Empty:
        def encode(self, item: Any) -> dict[str, str]:
            return {}

        def decode(self, fields: Any) -> Any:
            return None

    f = flow(redis_stream_sink(client, key, codec=Empty()))
    with pytest.raises(TypeError, match="not a non-empty mapping"):
        await f.run([1])


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda c: redis_stream_sink(c, ""), "stream"),
        (lambda c: redis_stream_sink(c, "s", maxlen=0), "maxlen"),
        (lambda c: redis_stream_sink(c, "s", codec=NOT_A_CLIENT), "codec"),
        (lambda c: redis_stream_sink(NOT_A_CLIENT, "s"), "client"),
        (lambda c: redis_stream_source(c, "s", "", "c"), "group"),
        (lambda c: redis_stream_source(c, "s", "g", NONE), "consumer"),
        (lambda c: redis_stream_source(c, "s", "g", "c", batch=0), "batch"),
        (lambda c: redis_stream_source(c, "s", "g", "c", block=0), "block"),
        (lambda c: redis_stream_source(c, "s", "g", "c", claim_idle=-1), "claim_idle"),
        (lambda c: redis_stream_source(c, "s", "g", "c", start="latest"), "start"),
        (lambda c: redis_stream_source(c, "s", "g", "c", reconnect_timeout=-1), "reconnect"),
        (lambda c: redis_stream_source(c, "s", "g", "c", ack_timeout=0), "ack_timeout"),
        (lambda c: redis_stream_source(c, "s", "g", "c", dead_letter=THREE), "dead_letter"),
        (lambda c: JsonCodec(""), "field"),
    ],
)
async def test_bad_arguments_fail_at_construction_naming_the_argument(
    client: Any, call: Any, argument: str
) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        call(client)


# -- the source: reading and acknowledging ---------------------------------------------------
async def test_the_group_is_created_with_the_stream_and_every_entry_acknowledged(
    client: Any, key: str
) -> None:
    got: list[int] = []

    async def keep(x: int) -> None:
        got.append(x)

    src = source(client, key)
    f = flow(stage(keep, workers=3))
    task = asyncio.create_task(f.run(src))
    while not await client.exists(key):  # XGROUP CREATE ... MKSTREAM
        await asyncio.sleep(0.005)
    await fill(client, key, list(range(40)))
    while src.stats().acked < 40:
        await asyncio.sleep(0.005)
    assert not task.done()  # a consumer waits for more
    await f.drain()
    await task
    assert sorted(got) == list(range(40))
    assert src.stats() == StreamSourceStats(
        read=40, claimed=0, acked=40, in_flight=0, dead_lettered=0
    )
    assert await pending(client, key, "g") == 0


async def test_an_existing_group_is_used_as_it_is(client: Any, key: str) -> None:
    await fill(client, key, [1, 2])
    await client.xgroup_create(key, "g", id="$")  # starts after the two entries
    await fill(client, key, [3])
    got: list[int] = []

    async def keep(x: int) -> None:
        got.append(x)

    await run_until_read(flow(stage(keep)), source(client, key), 1)
    assert got == [3]


async def test_start_dollar_skips_what_the_stream_holds(client: Any, key: str) -> None:
    await fill(client, key, [1, 2])
    got: list[int] = []

    async def keep(x: int) -> None:
        got.append(x)

    f = flow(stage(keep))
    src = source(client, key, start="$")
    task = asyncio.create_task(f.run(src))
    while not (await client.xinfo_groups(key)):
        await asyncio.sleep(0.005)
    await fill(client, key, [3])
    while src.stats().read < 1:
        await asyncio.sleep(0.005)
    await f.drain()
    await task
    assert got == [3]


async def test_an_entry_is_acknowledged_only_after_its_item_left_the_pipeline(
    client: Any, key: str
) -> None:
    await fill(client, key, [1, 2, 3])
    gate = asyncio.Event()
    seen: list[int] = []

    async def slow(x: int) -> int:
        if x == 2:
            await gate.wait()
        return x

    async def sink(x: int) -> None:
        seen.append(x)

    f = flow(stage(slow, workers=3), stage(sink))
    src = source(client, key)
    task = asyncio.create_task(f.run(src))
    while len(seen) < 2:
        await asyncio.sleep(0.005)
    while src.stats().acked < 2:
        await asyncio.sleep(0.005)
    assert await pending(client, key, "g") == 1  # item 2 is still in the pipeline
    assert src.stats().in_flight == 1
    gate.set()
    while src.stats().acked < 3:
        await asyncio.sleep(0.005)
    await f.drain()
    await task
    assert await pending(client, key, "g") == 0


async def test_fan_out_filter_failures_and_batches_acknowledge_every_entry_once(
    client: Any, key: str
) -> None:
    items = list(range(30))
    await fill(client, key, items)

    async def check(x: int) -> int:
        if x % 7 == 3:
            raise ValueError(x)
        if x % 5 == 1:
            return DROP  # type: ignore[return-value]
        return x

    async def spread(x: int) -> Any:
        for k in range(x % 3):
            yield (x, k)

    out = f"{key}-out"
    f = flow(
        stage(check, workers=4),
        stage(spread, workers=2),
        batched(4, max_wait=0.01),
        redis_stream_sink(client, out),
    )
    f.set_error_handler(log_and_continue)
    src = source(client, key)
    stats = await run_until_read(f, src, len(items))
    assert stats.failed == len([x for x in items if x % 7 == 3])
    assert src.stats().acked == len(items)
    assert src.stats().in_flight == 0
    assert await pending(client, key, "g") == 0
    delivered = [tuple(pair) for batch in await outputs(client, out) for pair in batch]
    expected = [(x, k) for x in items if x % 7 != 3 and x % 5 != 1 for k in range(x % 3)]
    assert sorted(delivered) == sorted(expected)


async def test_a_failure_that_ends_the_run_leaves_its_entry_pending(client: Any, key: str) -> None:
    await fill(client, key, [1, 2, 3])

    async def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    f = flow(stage(fail_on_two))
    src = source(client, key)
    with pytest.raises(ValueError, match="two"):
        await f.run(src)
    assert src.stats().acked == 1
    assert await pending(client, key, "g") == 2  # 2 failed; 3 was read, never finished
    # the same consumer reads its pending entries first at its next run
    got: list[int] = []

    async def keep(x: int) -> None:
        got.append(x)

    await run_until_read(flow(stage(keep)), src, 5)
    assert got == [2, 3]
    assert await pending(client, key, "g") == 0


async def test_stop_acknowledges_exactly_what_was_completed(client: Any, key: str) -> None:
    await fill(client, key, list(range(10)))
    done: list[int] = []
    hold = asyncio.Event()

    async def work(x: int) -> None:
        if x >= 4:
            await hold.wait()  # never set: in flight when the run stops
        done.append(x)

    f = flow(stage(work, workers=3))
    src = source(client, key)
    task = asyncio.create_task(f.run(src))
    while src.stats().acked < 4:
        await asyncio.sleep(0.005)
    await f.stop()
    await task
    assert sorted(done) == [0, 1, 2, 3]
    assert src.stats().acked == 4
    ids = [e for e, _ in await client.xrange(key)]
    still = {p["message_id"] for p in await client.xpending_range(key, "g", "-", "+", 100)}
    assert not still & set(ids[:4])  # the completed ones are acknowledged
    assert set(ids[4 : src.stats().read]) <= still  # the ones in flight are not


async def test_iterate_acknowledges_when_the_consumer_comes_back(client: Any, key: str) -> None:
    await fill(client, key, [1, 2, 3])

    async def same(x: int) -> int:
        return x

    f = flow(stage(same))
    src = source(client, key)
    got = []
    async with contextlib.aclosing(f.iterate(src)) as items:
        async for x in items:
            got.append(x)
            if x == 2:
                break  # the consumer never finished 2: it is not acknowledged
    assert got == [1, 2]
    assert src.stats().acked == 1
    assert await pending(client, key, "g") == 2


async def test_a_last_value_ends_the_run_and_acknowledges_what_it_dropped(
    client: Any, key: str
) -> None:
    await fill(client, key, list(range(8)))
    seen: list[int] = []

    async def until_three(x: int) -> Any:
        return Last(x) if x == 3 else x

    async def sink(x: int) -> None:
        seen.append(x)

    f = flow(stage(until_three), stage(sink))
    f.set_error_handler(log_and_continue)
    src = source(client, key, batch=2)
    await f.run(src)
    assert seen[-1] == 3
    assert sorted(seen) == [0, 1, 2, 3]
    # what was read after the Last was dropped (handled) and acknowledged; what was never
    # read stays in the stream for the next run
    assert src.stats().acked == src.stats().read
    # entries Redis delivered in the last read and the source never handed on stay
    # pending: the same consumer reads them first at its next run
    rest: list[int] = []

    async def keep(x: int) -> None:
        rest.append(x)

    await run_until_read(flow(stage(keep)), src, 8)
    assert sorted(seen + rest) == list(range(8))
    assert await pending(client, key, "g") == 0


# -- decoding ------------------------------------------------------------------------------
async def test_an_undecodable_entry_ends_the_source_and_stays_pending(
    client: Any, key: str
) -> None:
    await client.xadd(key, {"data": "1"})
    bad = await client.xadd(key, {"data": "{not json"})
    events: list[ErrorEvent] = []

    async def handler(event: ErrorEvent) -> None:
        events.append(event)

    async def keep(x: int) -> None:
        pass

    f = flow(stage(keep))
    f.set_error_handler(handler)
    src = source(client, key)
    await f.run(src)  # the source ended: the run drained
    [event] = events
    assert isinstance(event, SourceError)
    assert isinstance(event.exception, ValueError)
    assert any(bad.decode() in note for note in event.exception.__notes__)
    [entry] = await client.xpending_range(key, "g", "-", "+", 10)
    assert entry["message_id"] == bad


async def test_an_undecodable_entry_goes_to_the_dead_letter_stream(client: Any, key: str) -> None:
    await client.xadd(key, {"data": "1"})
    bad = await client.xadd(key, {"data": "{not json"})
    await client.xadd(key, {"data": "3"})
    got: list[int] = []

    async def keep(x: int) -> None:
        got.append(x)

    dead = f"{key}-dead"
    src = source(client, key, dead_letter=dead)
    await run_until_read(flow(stage(keep)), src, 2)
    assert got == [1, 3]
    assert src.stats().dead_lettered == 1
    [(_, fields)] = await client.xrange(dead)
    assert fields[b"data"] == b"{not json"
    assert fields[b"headrace-id"] == bad
    assert fields[b"headrace-error"].startswith(b"JSONDecodeError")
    assert await pending(client, key, "g") == 0


# -- consumers that die, and claiming --------------------------------------------------------
async def test_entries_of_a_dead_consumer_are_claimed_after_claim_idle(
    client: Any, key: str
) -> None:
    await fill(client, key, list(range(6)))
    await client.xgroup_create(key, "g", id="0")
    # a consumer reads three entries and dies without acknowledging them
    await client.xreadgroup("g", "dead", {key: ">"}, count=3)
    got: list[int] = []

    async def keep(x: int) -> None:
        got.append(x)

    src = source(client, key, "alive", claim_idle=0.1)
    started = time.monotonic()
    await run_until_read(flow(stage(keep)), src, 6)
    assert sorted(got) == list(range(6))
    assert src.stats().claimed == 3
    assert time.monotonic() - started >= 0.1  # not before they were idle that long
    assert await pending(client, key, "g") == 0


async def test_a_slow_item_of_a_live_consumer_is_not_claimed(client: Any, key: str) -> None:
    await fill(client, key, [1])
    gate = asyncio.Event()

    async def slow(x: int) -> None:
        await gate.wait()

    async def keep(x: int) -> None:
        pass

    slow_flow = flow(stage(slow))
    slow_source = source(client, key, "slow", claim_idle=0.15)
    task = asyncio.create_task(slow_flow.run(slow_source))
    while slow_source.stats().read < 1:
        await asyncio.sleep(0.005)
    other_flow = flow(stage(keep))
    other = source(client, key, "other", claim_idle=0.15)
    other_task = asyncio.create_task(other_flow.run(other))
    await asyncio.sleep(0.6)  # four times claim_idle: the heartbeat keeps the entry
    assert other.stats().claimed == 0
    gate.set()
    await slow_flow.drain()
    await other_flow.drain()
    await task
    await other_task
    assert slow_source.stats().acked == 1
    assert await pending(client, key, "g") == 0


# -- Redis going away ------------------------------------------------------------------------
@pytest.fixture
def durable_server() -> Iterator[RedisServer]:
    from shared.pytest_fixtures import _redis_binary, _running

    yield from _running(
        RedisServer(_redis_binary(), extra=("--appendonly", "yes", "--appendfsync", "always"))
    )


async def test_a_redis_restart_mid_run_is_survived(durable_server: RedisServer) -> None:
    client: Any = Redis.from_url(durable_server.url)
    try:
        key = "jobs"
        await fill(client, key, list(range(10)))
        got: list[int] = []

        async def keep(x: int) -> None:
            got.append(x)

        f = flow(stage(keep))
        src = source(client, key, reconnect_timeout=10.0)
        task = asyncio.create_task(f.run(src))
        while src.stats().acked < 10:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(durable_server.stop)  # SIGTERM: the data is kept
        await asyncio.sleep(0.1)
        await asyncio.to_thread(durable_server.start)
        await fill(client, key, list(range(10, 20)))
        while src.stats().acked < 20:
            await asyncio.sleep(0.005)
        await f.drain()
        await task
        assert sorted(got) == list(range(20))
        assert await pending(client, key, "g") == 0
    finally:
        await client.aclose()


async def test_a_restart_that_lost_the_group_creates_it_again(
    private_redis_server: RedisServer,
) -> None:
    client: Any = Redis.from_url(private_redis_server.url)
    try:
        got: list[int] = []

        async def keep(x: int) -> None:
            got.append(x)

        f = flow(stage(keep))
        src = source(client, "jobs", reconnect_timeout=10.0)
        task = asyncio.create_task(f.run(src))
        await fill(client, "jobs", [1])
        while src.stats().acked < 1:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(private_redis_server.restart)  # SIGKILL: an empty server
        while not await _exists(client, "jobs"):  # NOGROUP: the group comes back
            await asyncio.sleep(0.01)
        await fill(client, "jobs", [2])
        while src.stats().acked < 2:
            await asyncio.sleep(0.005)
        await f.drain()
        await task
        assert got == [1, 2]
    finally:
        await client.aclose()


async def _exists(client: Any, key: str) -> bool:
    try:
        return bool(await client.exists(key))
    except (RedisConnectionError, OSError):
        return False


async def test_redis_gone_longer_than_reconnect_timeout_ends_the_source(
    private_redis_server: RedisServer,
) -> None:
    client: Any = Redis.from_url(private_redis_server.url)
    try:
        await fill(client, "jobs", [1])

        async def keep(x: int) -> None:
            pass

        f = flow(stage(keep))
        src = source(client, "jobs", reconnect_timeout=0.3)
        task = asyncio.create_task(f.run(src))
        while src.stats().acked < 1:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(private_redis_server.kill)
        with pytest.raises((RedisConnectionError, OSError)) as caught:
            await task
        assert any("reconnect_timeout" in n for n in getattr(caught.value, "__notes__", []))
    finally:
        await client.aclose()


class FailingAcks:
    """The real client, whose XACK fails (Redis unreachable for acknowledgements only)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xack(self, *args: Any) -> int:
        raise RedisConnectionError("acknowledgements refused")


async def test_acknowledgements_that_cannot_be_sent_fail_the_run_and_stay_pending(
    client: Any, key: str
) -> None:
    await fill(client, key, [1, 2])

    async def keep(x: int) -> None:
        pass

    f = flow(stage(keep))
    src = source(client, key)
    src._client = FailingAcks(client)
    src._ack_timeout = 0.2
    task = asyncio.create_task(f.run(src))
    while src.stats().read < 2:
        await asyncio.sleep(0.005)
    await f.drain()
    with pytest.raises(RedisConnectionError) as caught:
        await task
    assert any("will be delivered again" in n for n in caught.value.__notes__)
    assert await pending(client, key, "g") == 2


async def test_one_run_at_a_time(client: Any, key: str) -> None:
    async def keep(x: int) -> None:
        pass

    src = source(client, key)
    f = flow(stage(keep))
    task = asyncio.create_task(f.run(src))
    while src.stats().read == 0 and not src._running:
        await asyncio.sleep(0.005)
    with pytest.raises(RuntimeError, match="one run at a time"):
        await flow(stage(keep)).run(src)
    await f.drain()
    await task


# -- several processes -----------------------------------------------------------------------
class Consumer:
    """A consumer process (``shared.stream_worker``)."""

    def __init__(self, url: str, name: str, delay: float, claim_idle: float) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.stream_worker", url, name, str(delay), str(claim_idle)],
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=REPOSITORY,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"

    def drain(self) -> dict[str, int]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        assert self.process.returncode == 0
        stats: dict[str, int] = json.loads(out.splitlines()[-1])
        return stats

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=30)


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _done(url: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        client: Any = Redis.from_url(url)
        try:
            return [json.loads(f[b"data"]) for _, f in await client.xrange("done")]
        finally:
            await client.aclose()

    return asyncio.run(read())


def _fill_jobs(url: str, n: int) -> None:
    async def write() -> None:
        client: Any = Redis.from_url(url)
        try:
            await fill(client, "jobs", list(range(n)))
        finally:
            await client.aclose()

    asyncio.run(write())


def _pending_of(url: str, consumer: str) -> set[int]:
    async def read() -> set[int]:
        client: Any = Redis.from_url(url)
        try:
            entries = await client.xpending_range("jobs", "workers", "-", "+", 1000, consumer)
            ids = [e["message_id"] for e in entries]
            items = set()
            for entry_id in ids:
                [(_, fields)] = await client.xrange("jobs", entry_id, entry_id)
                items.add(json.loads(fields[b"data"]))
            return items
        finally:
            await client.aclose()

    return asyncio.run(read())


@pytest.mark.parametrize("consumers", [2, 3])
def test_consumer_processes_share_a_stream_and_process_every_entry_once(
    private_redis_server: RedisServer, consumers: int
) -> None:
    url = private_redis_server.url
    workers = [Consumer(url, f"c{i}", 0.002, 30.0) for i in range(consumers)]
    _fill_jobs(url, 300)
    _wait_for(lambda: len(_done(url)) >= 300)
    stats = [w.drain() for w in workers]
    done = _done(url)
    assert sorted(d["item"] for d in done) == list(range(300))  # each exactly once
    assert sum(s["acked"] for s in stats) == 300
    assert all(s["in_flight"] == 0 for s in stats)
    assert len({d["by"] for d in done}) == consumers  # every process took a share


def test_a_consumer_killed_mid_item_has_its_entries_redelivered_to_the_others(
    private_redis_server: RedisServer,
) -> None:
    url = private_redis_server.url
    victim = Consumer(url, "victim", 0.05, 0.5)
    survivors = [Consumer(url, f"s{i}", 0.05, 0.5) for i in range(2)]
    _fill_jobs(url, 200)
    _wait_for(lambda: sum(d["by"] == "victim" for d in _done(url)) >= 10)
    victim.kill()  # SIGKILL: no drain, no acknowledgement
    lost = _pending_of(url, "victim")  # read by the victim, never acknowledged
    assert lost, "the victim died with entries in flight"
    _wait_for(lambda: {d["item"] for d in _done(url)} >= set(range(200)))
    stats = [w.drain() for w in survivors]
    done = _done(url)
    items = [d["item"] for d in done]
    assert set(items) == set(range(200))  # nothing lost
    duplicates = {x for x in items if items.count(x) > 1}
    print(  # the figures of the closing note
        f"200 entries in, {len(items)} items delivered ({len(set(items))} distinct); the "
        f"victim died with {len(lost)} pending; duplicates {len(duplicates)}; claimed by "
        f"the survivors {sum(s['claimed'] for s in stats)}"
    )
    assert duplicates <= lost  # the only duplicates: finished by the victim, not acknowledged
    assert sum(s["claimed"] for s in stats) >= len(
        lost - {d["item"] for d in done if d["by"] == "victim"}
    )
    assert all(s["in_flight"] == 0 for s in stats)


async def test_source_and_sink_on_a_redis_cluster(redis_cluster: Any) -> None:
    from redis.asyncio import RedisCluster

    client: Any = RedisCluster.from_url(redis_cluster.url)
    try:
        stream = f"cluster-{uuid.uuid4().hex}"
        await flow(redis_stream_sink(client, stream)).run([1, 2, "{bad", 4])
        await client.xadd(stream, {"data": "{not json"})
        got: list[Any] = []

        async def keep(x: Any) -> None:
            got.append(x)

        src = redis_stream_source(
            client, stream, "g", "c", block=0.01, claim_idle=1.0, dead_letter=f"{stream}-dead"
        )
        f = flow(stage(keep))
        task = asyncio.create_task(f.run(src))
        while src.stats().acked < 4 or src.stats().dead_lettered < 1:
            await asyncio.sleep(0.005)
        await f.drain()
        await task
        assert got == [1, 2, "{bad", 4]
        assert src.stats().dead_lettered == 1
        assert src.stats().acked == 4
        assert await pending(client, stream, "g") == 0
    finally:
        await client.aclose()


async def test_an_entry_finished_but_not_yet_acknowledged_is_never_claimed_back(
    client: Any, key: str
) -> None:
    await fill(client, key, [1])
    seen: list[int] = []

    async def keep(x: int) -> None:
        seen.append(x)

    f = flow(stage(keep))
    src = source(client, key, claim_idle=0.05, ack_timeout=0.2)
    src._client = FailingAcks(client)  # the acknowledgement cannot be sent
    task = asyncio.create_task(f.run(src))
    while not seen:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)  # six claim periods: the entry is idle in Redis's eyes
    assert seen == [1]  # processed once: this consumer does not claim it back
    assert src.stats().in_flight == 1
    await f.drain()
    with pytest.raises(RedisConnectionError):
        await task
