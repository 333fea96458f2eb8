"""A consumer process of flow's Redis Streams tests: one stream in, one stream out.

``python -m shared.stream_worker REDIS_URL CONSUMER DELAY CLAIM_IDLE`` reads the stream
``jobs`` through the group ``workers`` as ``CONSUMER``, works ``DELAY`` seconds on each
item, and appends ``{"item": ..., "by": CONSUMER}`` to the stream ``done``. It prints
``ready`` once its run has started; SIGTERM drains the run (what was read is finished and
acknowledged), and it prints the source's stats as one JSON line before it exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys

from redis.asyncio import Redis

from headrace_flow import flow, stage
from headrace_flow.redis import redis_stream_sink, redis_stream_source


async def main(url: str, consumer: str, delay: float, claim_idle: float) -> None:
    client = Redis.from_url(url)
    source = redis_stream_source(
        client, "jobs", "workers", consumer, batch=4, block=0.05, claim_idle=claim_idle
    )

    async def work(item: int) -> dict[str, object]:
        await asyncio.sleep(delay)
        return {"item": item, "by": consumer}

    pipeline = flow(stage(work, workers=4), redis_stream_sink(client, "done"))
    pipeline.set_producer(source)
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[object]] = []
    loop.add_signal_handler(
        signal.SIGTERM, lambda: draining.append(loop.create_task(pipeline.drain()))
    )
    await pipeline.start()
    print("ready", flush=True)
    await pipeline.wait()
    for task in draining:
        await task
    print(json.dumps(dataclasses.asdict(source.stats())), flush=True)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
