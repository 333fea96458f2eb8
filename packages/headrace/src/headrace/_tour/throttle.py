"""Tour scene: a rate-limited service starts failing; the throttle halves and recovers."""

from __future__ import annotations

import asyncio
import random

from headrace._tour._ui import Scene, TourUI
from headrace_throttle import ServerBusy, Slot, Throttle, ThrottleEvent, ThrottleState

_JOBS = 1500
_TROUBLE = (12.0, 24.0)  # the service is overloaded in this window (seconds)
_CAPACITY = 12  # calls the service can take at once before it answers 429


class _Service:
    """A service that answers 429 with Retry-After when overloaded or in trouble."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.active = 0
        self.start = asyncio.get_running_loop().time()
        self.refused = 0

    async def call(self, slot: Slot) -> str:
        now = asyncio.get_running_loop().time() - self.start
        self.active += 1
        try:
            await asyncio.sleep(self.rng.uniform(0.3, 0.7))
            in_trouble = _TROUBLE[0] <= now < _TROUBLE[1]
            if in_trouble and (self.active > _CAPACITY // 3 or self.rng.random() < 0.3):
                self.refused += 1
                raise ServerBusy(retry_after=2.0)
            return "ok"
        finally:
            self.active -= 1


async def run(ui: TourUI) -> None:
    """Run 600 jobs through a throttle while the service pushes back for a while."""
    rng = random.Random(7)
    service = _Service(rng)
    lines: list[str] = []
    pauses = [0]

    def on_event(event: ThrottleEvent) -> None:
        at = event.at - service.start
        if event.kind in ("decreased", "increased"):
            old, new = event.data["concurrency"]
            reason = event.data["reason"]
            lines.append(f"t={at:5.1f}s  {event.kind:9} {old:>2} -> {new:<2} ({reason})")
        elif event.kind == "paused":
            pauses[0] += 1

    throttle = Throttle(
        16,
        failure_threshold=3,
        cooling_period=2.0,
        total=_JOBS,
        on_event=on_event,
        name="api",
    )
    ui.say(
        f"{_JOBS} jobs against a service that answers [bold]429 Retry-After: 2[/bold] "
        f"from t={_TROUBLE[0]:.0f} s to t={_TROUBLE[1]:.0f} s. The throttle starts at 16 "
        "calls at once, halves once per congestion event (the admission-epoch rule), "
        "pauses dispatch for the Retry-After, then adds one slot every 2 s of success."
    )
    await ui.pause(0.8)
    results = {"ok": 0, "busy": 0}

    async def job() -> None:
        try:
            await throttle.execute(service.call)
            results["ok"] += 1
        except ServerBusy:
            results["busy"] += 1

    tasks = [asyncio.create_task(job()) for _ in range(_JOBS)]
    shown = 0
    with ui.progress(_JOBS, "starting") as bar:
        while not all(task.done() for task in tasks):
            await asyncio.sleep(1.0)
            snap = throttle.snapshot()
            eta = "?" if snap.eta_seconds is None else f"{snap.eta_seconds:4.0f}s"
            state = "paused" if snap.state is ThrottleState.PAUSED else snap.state.value
            bar.update(
                snap.completed + snap.failed,
                description=f"concurrency {snap.concurrency:>2}/16  {state:8} ETA {eta}",
            )
            for line in lines[shown:]:
                ui.say(f"  {line}")
            shown = len(lines)
            await ui.pause(0.08)
    await asyncio.gather(*tasks)
    for line in lines[shown:]:
        ui.say(f"  {line}")
    snap = throttle.snapshot()
    elapsed = asyncio.get_running_loop().time() - service.start
    ui.say(
        f"Done at t={elapsed:.0f} s: {results['ok']} succeeded, {results['busy']} got 429; "
        f"{snap.epoch} decreases for {results['busy']} refusals (one per congestion event), "
        f"{pauses[0]} Retry-After pauses, and the limit is back at {snap.concurrency}/16. "
        "The ETA is throughput-based (finished calls per second since the first "
        "admission), so it accounts for concurrency."
    )
    await throttle.drain()


SCENE = Scene(
    name="throttle",
    title="headrace-throttle: backing off a service that pushes back, then recovering",
    run=run,
    order=60,
)
