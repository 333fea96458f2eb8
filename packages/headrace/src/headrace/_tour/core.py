"""Tour scene: headrace-core's virtual clock, backoff schedules and latency histogram."""

from __future__ import annotations

import asyncio
import itertools
import random

from headrace._tour._ui import Scene, TourUI
from headrace_core.backoff import Backoff, decorrelated_jitter, exponential, fixed, full_jitter
from headrace_core.stats import LatencyHistogram


async def run(ui: TourUI) -> None:
    """Show virtual time, four backoff schedules, and a latency histogram filling up."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    ui.say("Every headrace component reads the event loop's clock, so tests can make it virtual.")
    await asyncio.sleep(3600)
    ui.say(
        f"An hour of [bold]asyncio.sleep[/bold] just passed: {loop.time() - start:.0f} s virtual."
    )
    await ui.pause(0.8)

    rng = random.Random(7)
    schedules: dict[str, Backoff] = {
        "fixed(0.5)": fixed(0.5),
        "exponential(0.1, 2, max=5)": exponential(0.1, 2.0, 5.0),
        "full_jitter(0.1, 2, max=5)": full_jitter(0.1, 2.0, 5.0),
        "decorrelated_jitter(0.1, max=5)": decorrelated_jitter(0.1, 5.0),
    }
    rows = [
        [name, *(f"{d:.2f}" for d in itertools.islice(s.delays(rng), 7))]
        for name, s in schedules.items()
    ]
    ui.table("Backoff schedules: the first seven delays (s)", ["schedule", *"1234567"], rows)
    await ui.pause(1.2)

    histogram = LatencyHistogram()
    with ui.live_table(
        "A latency histogram filling up", ["samples", "p50", "p90", "p99", "max"]
    ) as live:
        for _ in range(10):
            for _sample in range(2000):
                # A service with a long tail: mostly ~20 ms, sometimes ~400 ms.
                sample = (
                    rng.lognormvariate(-3.9, 0.3) if rng.random() < 0.97 else rng.uniform(0.2, 0.6)
                )
                histogram.record(sample)
            snap = histogram.snapshot()
            live.update(
                [
                    [
                        snap.count,
                        f"{snap.p50 * 1e3:.1f} ms",
                        f"{snap.p90 * 1e3:.1f} ms",
                        f"{snap.p99 * 1e3:.1f} ms",
                        f"{snap.max * 1e3:.1f} ms",
                    ]
                ]
            )
            await asyncio.sleep(1)
            await ui.pause(0.15)
    ui.say(f"{histogram.count} samples in {histogram.buckets} buckets: bounded memory.")


SCENE = Scene(name="core", title="headrace-core: time, backoff and stats", run=run, order=0)
