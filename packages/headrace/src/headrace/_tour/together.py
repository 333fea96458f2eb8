"""Tour finale: the family working together in one request."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from headrace._tour._ui import Scene, TourUI
from headrace_coalesce import Loader
from headrace_flow import flow, stage
from headrace_guards import CircuitBreaker, CircuitOpenError, Retry
from headrace_leveled import Processor, Task
from headrace_throttle import Throttle


async def run(ui: TourUI) -> None:
    """A leveled request runs a flow pipeline whose stage loads through every guard."""
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    backend_calls: list[int] = []

    async def fetch_many(keys: list[int]) -> list[Any]:
        # The backend: one round trip for a whole batch, sometimes failing.
        backend_calls.append(len(keys))
        await asyncio.sleep(0.1)
        if rng.random() < 0.08:
            raise ConnectionError("backend hiccup")
        return [{"id": k, "score": k % 7} for k in keys]

    loader: Loader[int, Any] = Loader(fetch_many, cache=False)
    breaker = CircuitBreaker("backend", failure_threshold=3, recovery_timeout=0.3)
    retry = Retry(attempts=3, retry_on=ConnectionError)
    throttle = Throttle(16, name="backend")
    events: list[str] = []
    ctx: dict[str, Any] = {"rows": []}

    async def load(item: int) -> Any:
        async def guarded(slot: object) -> Any:
            return await retry.call(breaker.call, loader.load, item)

        try:
            return await throttle.execute(guarded)
        except (ConnectionError, CircuitOpenError):
            return None

    async def keep(row: Any) -> None:
        if row is not None:
            ctx["rows"].append(row)

    async def open_pool(c: dict[str, Any]) -> None:
        events.append(f"{loop.time():7.2f}s  open the connection pool")

    async def close_pool(c: dict[str, Any]) -> None:
        events.append(f"{loop.time():7.2f}s  close the connection pool (cleanup, always)")

    async def run_pipeline(c: dict[str, Any]) -> int:
        stats = await flow(stage(load, workers=32), keep).run(range(400))
        events.append(f"{loop.time():7.2f}s  pipeline done: {stats.completed} items")
        return stats.completed

    processor = (
        Processor.builder()
        .add_task(Task("pool", pre_execute=open_pool, post_execute=close_pool), level=0)
        .add_task(Task("pipeline", execute=run_pipeline), level=1)
        .build()
    )
    ui.say("A request: a [bold]leveled[/bold] processor opens a pool, runs a [bold]flow[/bold]")
    ui.say("pipeline of 400 ids whose stage loads through a [bold]throttle[/bold],")
    ui.say("a [bold]retry[/bold], a [bold]circuit breaker[/bold]")
    ui.say("and a [bold]coalescing loader[/bold];")
    ui.say("cleanup runs last, whatever happens.")
    await ui.pause(1.0)
    report = await processor.process_tasks(ctx)
    for line in events:
        ui.say(line)
    snap = breaker.snapshot()
    ui.table(
        "What each part did",
        ["part", "figure"],
        [
            ["flow", f"{len(ctx['rows'])} rows kept of 400"],
            ["coalesce", f"{len(backend_calls)} backend calls for 400 loads"],
            ["breaker", f"{snap.successes} ok, {snap.failures} failed, {snap.rejected} shed"],
            ["retry", f"{retry.snapshot().retries} retries"],
            ["throttle", f"concurrency {throttle.snapshot().concurrency}"],
            ["leveled", f"run took {report.duration:.2f} s of virtual time"],
        ],
    )
    await throttle.drain()
    await ui.pause(1.0)


SCENE = Scene(name="together", title="The family together", run=run, order=90)
