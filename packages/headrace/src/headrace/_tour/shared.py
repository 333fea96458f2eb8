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
    start = time.time()
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            await limiter.acquire()
            done += 1
    finally:
        await store.aclose()
    print(json.dumps({"calls": done, "start": start, "end": time.time()}))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


async def run_workers(
    url: str, *, workers: int = WORKERS, seconds: float = SECONDS
) -> list[tuple[int, float, float]]:
    """Start ``workers`` processes sharing one Redis-backed limiter.

    Returns:
        Per process: its calls, and the wall-clock times it started and ended its loop.
    """
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
    results = []
    for proc in procs:
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tour worker failed: {err.decode(errors='replace')[-500:]}")
        line = json.loads(out.decode().strip().splitlines()[-1])
        results.append((int(line["calls"]), float(line["start"]), float(line["end"])))
    return results


async def run(ui: TourUI) -> None:
    """Three processes, one limit: the rate they reach together is the shared rate."""
    url = os.environ.get("HEADRACE_REDIS_URL")
    if not url:
        ui.say(
            "Set [bold]HEADRACE_REDIS_URL[/bold]=redis://host:port/0 to run this scene: three "
            "processes share one RateLimiter through headrace_guards.redis.RedisStore."
        )
        return
    ui.say(f"Three processes share one limiter of {RATE:g} calls/s on {url}, for {SECONDS:g} s.")
    await ui.pause(0.5)
    results = await run_workers(url)
    total = sum(calls for calls, _, _ in results)
    # The processes start a moment apart: the rate is over the time any of them ran.
    span = max(end for _, _, end in results) - min(start for _, start, _ in results)
    rows: list[list[object]] = [[f"worker {i + 1}", r[0]] for i, r in enumerate(results)]
    rows.append(["together", f"{total} in {span:.2f} s = {total / span:.1f} calls/s"])
    ui.table("Calls made (the limit is global, not per process)", ["process", "calls"], rows)
    ui.say(
        f"The limit is {RATE:g} calls/s with a burst of 1: the first call of the run is "
        f"free, so {total} calls need {(total - 1) / RATE:.2f} s at least."
    )
    await ui.pause(1.0)


SCENE = Scene(
    name="shared", title="Beyond one process: a rate limit shared on Redis", run=run, order=85
)
