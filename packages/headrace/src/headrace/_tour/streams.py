"""Tour scene: two flow consumers share one Redis stream, at least once (HEADRACE_REDIS_URL)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from headrace._tour._ui import Scene, TourUI

ORDERS = 40


async def share(url: str) -> dict[str, Any]:
    """Produce ORDERS orders on a stream, consume them with two flows, stop one mid-item.

    Returns:
        Per consumer, the orders it processed; the pending entries after the stop; and
        what the stopped consumer processed when it started again.
    """
    from redis.asyncio import Redis

    from headrace_flow import flow, stage
    from headrace_flow.redis import redis_stream_sink, redis_stream_source

    client: Any = Redis.from_url(url)
    stream = f"tour-orders-{uuid.uuid4().hex[:8]}"
    try:
        await flow(redis_stream_sink(client, stream)).run(range(ORDERS))
        seen: dict[str, list[int]] = {"alpha": [], "beta": []}
        hold = asyncio.Event()

        def consumer(name: str) -> tuple[Any, Any]:
            async def handle(order: int) -> None:
                if name == "beta" and len(seen["beta"]) >= 8:
                    await hold.wait()  # beta is stopped while it works on this one
                await asyncio.sleep(0.01)
                seen[name].append(order)

            source = redis_stream_source(client, stream, "billing", name, batch=2, block=0.01)
            return flow(stage(handle, workers=2)), source

        (alpha, alpha_src), (beta, beta_src) = consumer("alpha"), consumer("beta")
        runs = [asyncio.create_task(alpha.run(alpha_src)), asyncio.create_task(beta.run(beta_src))]
        while not (len(seen["beta"]) >= 8 and beta_src.stats().in_flight):
            await asyncio.sleep(0.01)
        await beta.stop()  # what beta holds is never acknowledged
        await runs[1]
        while True:  # alpha takes everything else
            pending = int((await client.xpending(stream, "billing"))["pending"])
            acked = alpha_src.stats().acked + beta_src.stats().acked
            if acked + pending >= ORDERS and not alpha_src.stats().in_flight:
                break
            await asyncio.sleep(0.01)
        await alpha.drain()
        await runs[0]
        pending = int((await client.xpending(stream, "billing"))["pending"])  # beta's alone
        before = len(seen["beta"])
        hold.set()
        again, again_src = consumer("beta")
        restarted = asyncio.create_task(again.run(again_src))
        while again_src.stats().acked < pending:
            await asyncio.sleep(0.01)
        await again.drain()
        await restarted
        return {
            "alpha": len(seen["alpha"]),
            "beta": before,
            "pending": pending,
            "redelivered": len(seen["beta"]) - before,
            "total": len(set(seen["alpha"]) | set(seen["beta"])),
        }
    finally:
        await client.delete(stream)
        await client.aclose()


async def run(ui: TourUI) -> None:
    """Two consumers share a stream; one stops mid-item and recovers its entries."""
    url = os.environ.get("HEADRACE_REDIS_URL")
    if not url:
        ui.say(
            "Set [bold]HEADRACE_REDIS_URL[/bold]=redis://host:port/0 to run this scene: two "
            "flows share a Redis stream through a consumer group (headrace_flow.redis)."
        )
        return
    ui.say(
        f"{ORDERS} orders go onto a Redis stream; two flows, [bold]alpha[/bold] and "
        "[bold]beta[/bold], read it through one consumer group. An entry is acknowledged "
        "only after its order has left the pipeline."
    )
    await ui.pause(0.5)
    result = await share(url)
    ui.table(
        "Orders processed",
        ["consumer", "orders"],
        [
            ["alpha", result["alpha"]],
            ["beta, until stopped mid-item", result["beta"]],
            ["beta, started again: its pending entries first", result["redelivered"]],
            ["distinct orders processed", f"{result['total']} of {ORDERS}"],
        ],
    )
    ui.say(
        f"beta was stopped with {result['pending']} entries read and not finished: they "
        "stayed pending in Redis, and beta read them first when it started again "
        "(another consumer would claim them after claim_idle)."
    )
    await ui.pause(1.0)


SCENE = Scene(
    name="streams", title="Beyond one machine: a pipeline on a Redis stream", run=run, order=86
)
