"""A worker process of the shared-throttle tests: requests to a busy server through a throttle.

``python -m shared.throttle_worker REDIS_URL PORT MODE REQUESTS MAX_CONCURRENCY LEASE_TTL``
sends REQUESTS requests to ``http://127.0.0.1:PORT/work`` through a ``Throttle`` with
``max_concurrency=MAX_CONCURRENCY``: shared through Redis (``MODE`` = ``shared``), or this
process's own (``local``). A 429 raises ``ServerBusy`` with the server's ``Retry-After``
(the throttle pauses, and shared, every worker pauses). It prints ``started`` when it
begins and, at the end, a JSON line ``{"ok": ..., "busy": ..., "failed": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from headrace_guards.redis import RedisStore
from headrace_throttle import ServerBusy, Slot, Throttle
from shared.busy_http import get


async def main(url: str, port: int, mode: str, requests: int, limit: int, ttl: float) -> None:
    store = RedisStore.from_url(url, prefix="shared-throttle:", lease_ttl=ttl, timeout=1.0)
    throttle = Throttle(
        limit,
        name="partner-api",
        store=store if mode == "shared" else None,
        failure_threshold=1,
        cooling_period=0.5,
    )
    counts = {"ok": 0, "busy": 0, "failed": 0}

    async def call(slot: Slot) -> None:
        status, headers, _ = await get(port, "/work")
        if status == 429:
            raise ServerBusy(retry_after=float(headers["retry-after"]))

    async def one() -> None:
        try:
            await throttle.execute(call)
            counts["ok"] += 1
        except ServerBusy:
            counts["busy"] += 1
        except Exception:
            counts["failed"] += 1

    print("started", flush=True)
    await asyncio.gather(*(one() for _ in range(requests)))
    await throttle.aclose()
    await store.aclose()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    url, port, mode, requests, limit, ttl = sys.argv[1:7]
    asyncio.run(main(url, int(port), mode, int(requests), int(limit), float(ttl)))
