"""Tour scene: a three-stage pipeline whose middle stage autoscales under a burst."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from headrace._tour._ui import Scene, TourUI
from headrace_flow import FixedScaling, FlowStats, UtilizationScaling, flow, stage

_COLUMNS = ("stage", "workers", "busy", "queue", "utilization", "processed", "peak")


def _rows(stats: FlowStats) -> list[tuple[object, ...]]:
    return [
        (
            name,
            s.workers,
            s.busy_workers,
            s.queue_length,
            f"{s.utilization:4.0%}",
            s.processed,
            s.peak_workers,
        )
        for name, s in stats.stages.items()
    ]


async def run(ui: TourUI) -> None:
    """Send a trickle, a burst and a trickle through parse -> enrich -> store."""
    rng = random.Random(3)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def orders() -> AsyncIterator[int]:
        # quiet for 3 s, a burst of 400 orders in 1 s, then quiet again for 8 s
        for i in range(444):
            await asyncio.sleep(0.0025 if 12 <= i < 412 else 0.25)
            yield i

    async def parse(order: int) -> int:
        await asyncio.sleep(0.002)
        return order

    async def enrich(order: int) -> int:
        await asyncio.sleep(rng.uniform(0.05, 0.15))  # a slow lookup per order
        return order

    async def store(order: int) -> None:
        await asyncio.sleep(0.003)

    scaling = UtilizationScaling(
        min_workers=1, max_workers=12, cooldown_seconds=0.2, sampling_period=0.5, dampening=1.0
    )
    pipeline = flow(
        stage(parse, scaling=FixedScaling(2)),
        stage(enrich, scaling=scaling, queue_size=20),
        stage(store, workers=2),
    )
    ui.say(
        "A pipeline [bold]parse -> enrich -> store[/bold]; [bold]enrich[/bold] is slow and "
        "scales between 1 and 12 workers with [cyan]UtilizationScaling[/cyan]."
    )
    ui.say("Orders trickle in, then a burst of 400 arrives in one second.")
    await ui.pause(0.8)
    task = asyncio.create_task(pipeline.run(orders))
    peak = settled = 0
    with ui.live_table("stage stats (virtual time)", _COLUMNS) as table:
        while True:
            stats = pipeline.stats()
            settled = stats.stages["enrich"].workers
            peak = max(peak, settled)
            table.update(_rows(stats))
            if task.done() or loop.time() - start > 13.0:
                break
            await asyncio.sleep(0.1)
            await ui.pause(0.04)
        summary = await pipeline.drain()
        await task
    ui.say(
        f"enrich grew to [bold]{peak}[/bold] workers for the burst and shrank back to "
        f"[bold]{settled}[/bold] on the sampling tick once idle (the last frame above); "
        f"drain() then stored {summary.completed} of {summary.accepted} orders, "
        f"{summary.discarded} lost, and the run ended with every worker stopped."
    )
    await ui.pause(1.0)


SCENE = Scene(
    name="flow",
    title="headrace-flow: a pipeline that autoscales under a burst",
    run=run,
    order=50,
)
