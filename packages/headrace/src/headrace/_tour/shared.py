"""Tour scene: one rate limit shared by three processes through Redis (HEADRACE_REDIS_URL)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

from headrace._tour._ui import Scene, TourUI

RATE = 20.0  # calls per second, for all workers together
SECONDS = 3.0  # real seconds each worker runs
WORKERS = 3

_WORKER = """
import asyncio, json, sys, time
from headrace_guards import RateLimiter
from headrace_guards.redis import RedisStore

async def main(url, prefix, rate, seconds):
    store = RedisStore.from_url(url, prefix=prefix, timeout=1.0)
    limiter = RateLimiter(rate, per=1.0, burst=1, name="tour-shared", store=store)
    done = 0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            await limiter.acquire()
            done += 1
    finally:
        await store.aclose()
    print(json.dumps({"calls": done}))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


async def run_workers(url: str, *, workers: int = WORKERS, seconds: float = SECONDS) -> list[int]:
    """Start ``workers`` processes sharing one Redis-backed limiter; return each one's calls."""
    prefix = f"headrace-tour-{uuid.uuid4().hex[:8]}:"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            url,
            prefix,
            str(RATE),
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(workers)
    ]
    counts = []
    for proc in procs:
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tour worker failed: {err.decode(errors='replace')[-500:]}")
        counts.append(int(json.loads(out.decode().strip().splitlines()[-1])["calls"]))
    return counts


async def run(ui: TourUI) -> None:
    """Three processes, one limit: the rate they reach together is the shared rate."""
    url = os.environ.get("HEADRACE_REDIS_URL")
    if not url:
        ui.say("Set [bold]HEADRACE_REDIS_URL[/bold]=redis://host:port/0 to run this scene:")
        ui.say("three processes share one RateLimiter through headrace_guards.redis.RedisStore.")
        return
    ui.say(f"Three processes share one limiter of {RATE:g} calls/s on {url}, for {SECONDS:g} s.")
    await ui.pause(0.5)
    counts = await run_workers(url)
    total = sum(counts)
    rows: list[list[object]] = [[f"worker {i + 1}", n] for i, n in enumerate(counts)]
    rows.append(["together", f"{total} = {total / SECONDS:.1f} calls/s (limit {RATE:g})"])
    ui.table("Calls made (the limit is global, not per process)", ["process", "calls"], rows)
    await ui.pause(1.0)


SCENE = Scene(
    name="shared", title="Beyond one process: a rate limit shared on Redis", run=run, order=85
)
