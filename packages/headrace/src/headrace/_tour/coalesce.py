"""Tour scene: headrace-coalesce turns N concurrent calls into one bulk call."""

from __future__ import annotations

import asyncio
import random

from headrace._tour._ui import Scene, TourUI
from headrace_coalesce import Loader, batch, collect

ROUND_TRIP = 0.02  # seconds of (virtual) latency per database call


async def run(ui: TourUI) -> None:
    """Show the N+1 problem, @batch fixing it, a cancelled leader, and a Loader's cache."""
    rng = random.Random(11)
    queries: list[int] = []

    async def db_fetch(ids: list[int]) -> list[str]:
        queries.append(len(ids))
        await asyncio.sleep(ROUND_TRIP)
        return [f"customer {i}" for i in ids]

    orders = [rng.randrange(40) for _ in range(200)]
    ui.say(f"A page lists [bold]{len(orders)}[/bold] orders; each shows its customer.")

    async def one_by_one(customer_id: int) -> str:
        return (await db_fetch([customer_id]))[0]

    await asyncio.gather(*(one_by_one(c) for c in orders))
    naive_work = len(queries) * ROUND_TRIP
    ui.say(
        f"One query per order: [red]{len(queries)} queries[/red], "
        f"{sum(queries)} rows fetched. (That is the N+1 problem.)"
    )
    await ui.pause(0.8)

    queries.clear()

    @batch
    async def customer(customer_id: int) -> list[str]:
        ids = await collect(customer_id)
        return await db_fetch(ids)

    names = await asyncio.gather(*(customer(c) for c in orders))
    assert names == [f"customer {c}" for c in orders]
    stats = customer.stats()
    ui.say(
        "The same code with [bold]@batch[/bold] and [bold]await collect(customer_id)[/bold]: "
        f"[green]{stats.batches} query[/green] for {stats.items} distinct customers "
        f"({stats.deduplicated} duplicates served from the same row): the database works "
        f"{stats.batches * ROUND_TRIP * 1e3:.0f} ms instead of {naive_work * 1e3:.0f} ms."
    )
    ui.table(
        "customer.stats()",
        ["calls", "batches", "items", "deduplicated", "batch_sizes", "cancelled"],
        [
            [
                stats.calls,
                stats.batches,
                stats.items,
                stats.deduplicated,
                stats.batch_sizes,
                stats.cancelled,
            ]
        ],
    )
    await ui.pause(1.2)

    # The leader is cancelled in the middle of the bulk call: the next caller takes over.
    queries.clear()
    tasks = [asyncio.create_task(customer(c)) for c in range(5)]
    await asyncio.sleep(ROUND_TRIP / 2)
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    served = sum(1 for r in results if isinstance(r, str))
    ui.say(
        "Five callers; the leader is cancelled halfway through the bulk call. "
        f"The next caller reran it for the rest: queries of sizes {queries}, "
        f"[green]{served} of 4[/green] survivors served, nothing hangs."
    )
    await ui.pause(1.0)

    loads: list[list[int]] = []

    async def load_customers(ids: list[int]) -> dict[int, str]:
        loads.append(ids)
        await asyncio.sleep(ROUND_TRIP)
        return {i: f"customer {i}" for i in ids}

    loader = Loader(load_customers, max_size=16)
    with ui.live_table(
        "Loader(max_size=16): three pages", ["page", "loads", "calls", "cache hits"]
    ) as live:
        rows: list[list[object]] = []
        for page in range(1, 4):
            ids = [rng.randrange(40) for _ in range(30)]
            await asyncio.gather(*(loader.load(i) for i in ids))
            snap = loader.stats()
            rows.append([page, len(ids), snap.batches, snap.cache_hits])
            live.update(rows)
            await ui.pause(0.4)
    ui.say(f"Batch sizes {loader.stats().batch_sizes}: a cache hit costs no query and no task.")


SCENE = Scene(
    name="coalesce",
    title="headrace-coalesce: N calls, one bulk call",
    run=run,
    order=20,
)
