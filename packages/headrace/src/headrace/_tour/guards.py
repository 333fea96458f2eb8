"""Tour scene: a flaky service behind retry, breaker, rate limiter, timeout and bulkhead."""

from __future__ import annotations

import asyncio
import random

from headrace._tour._ui import Scene, TourUI
from headrace_core.backoff import full_jitter
from headrace_guards import (
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    Fallback,
    GuardEvent,
    RateLimited,
    RateLimiter,
    Retry,
    Timeout,
    pipeline,
)

# The simulated service: healthy, then an outage (errors and hangs), then healthy again.
_OUTAGE = (20.0, 45.0)
_SECONDS = 70
_PER_SECOND = 12


class _Service:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.calls = 0
        self.start = asyncio.get_running_loop().time()

    async def fetch(self, key: int) -> str:
        self.calls += 1
        now = asyncio.get_running_loop().time() - self.start
        if _OUTAGE[0] <= now < _OUTAGE[1]:
            if self.rng.random() < 0.5:
                await asyncio.sleep(5)  # hangs: the timeout cuts it short
            await asyncio.sleep(0.05)
            raise ConnectionError("service unavailable")
        await asyncio.sleep(self.rng.uniform(0.02, 0.12))
        if self.rng.random() < 0.03:
            raise ConnectionError("transient blip")
        return f"value-{key}"


async def run(ui: TourUI) -> None:
    """Drive a flaky service through a guard stack and watch the breaker open and recover."""
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    service = _Service(rng)
    # Load the limiter sheds is not the service's fault: the breaker ignores RateLimited.
    breaker = CircuitBreaker(
        "inventory", failure_threshold=5, recovery_timeout=8, ignore=RateLimited
    )
    retry = Retry(3, backoff=full_jitter(base=0.1, factor=2, max=1), rng=random.Random(5))
    limiter = RateLimiter(10, 1.0, burst=10, max_wait=1.0)
    stack = pipeline(
        Fallback(lambda exc, key: f"cached-{key}"),
        retry,
        breaker,
        limiter,
        Timeout(0.5),
        Bulkhead(8),
    )
    transitions: list[str] = []

    def on_event(event: GuardEvent) -> None:
        if event.kind == "state_change":
            transitions.append(
                f"t={event.at - service.start:5.1f}s  {event.old_state} -> {event.new_state}"
                f"  ({event.reason})"
            )

    breaker.add_listener(on_event)
    ui.say(
        "A service that is healthy, then down from t=20 s to t=45 s (errors and hangs), "
        "then healthy again."
    )
    ui.say(
        "Callers go through [bold]pipeline(Fallback, Retry, CircuitBreaker, RateLimiter, "
        "Timeout, Bulkhead)[/bold]; 12 requests a second against a limit of 10. "
        "The breaker ignores RateLimited: shed load is not the service failing."
    )
    await ui.pause(0.8)

    counts = {"fresh": 0, "cached": 0}

    async def request(key: int) -> None:
        value = await stack.call(service.fetch, key)
        counts["fresh" if value.startswith("value") else "cached"] += 1

    columns = [
        "t",
        "breaker",
        "fresh",
        "from cache",
        "service calls",
        "retries",
        "breaker rejected",
        "rate limited",
    ]
    rows: list[list[object]] = []
    tasks: list[asyncio.Task[None]] = []
    with ui.live_table("Seventy seconds of virtual time", columns) as live:
        for second in range(_SECONDS):
            tasks += [
                asyncio.create_task(request(second * _PER_SECOND + i)) for i in range(_PER_SECOND)
            ]
            await asyncio.sleep(1)
            if second % 5 == 4:
                snap = breaker.snapshot()
                rows.append(
                    [
                        f"{loop.time() - service.start:.0f}s",
                        snap.state.value,
                        counts["fresh"],
                        counts["cached"],
                        service.calls,
                        retry.snapshot().retries,
                        snap.rejected,
                        limiter.snapshot().rejected,
                    ]
                )
                live.update(rows)
                await ui.pause(0.35)
        await asyncio.gather(*tasks)
    ui.say("[bold]Breaker transitions[/bold] (one event each, after the state changed):")
    for line in transitions:
        ui.say(f"  {line}")
    await ui.pause(0.8)
    limiter_snap = limiter.snapshot()
    ui.say(
        f"The rate limiter granted {limiter_snap.acquired} calls at 10/s and refused "
        f"{limiter_snap.rejected} that would have waited over 1 s (GCRA: no refill timer). "
        "Retries slept at least each error's retry_after; while the breaker was open, "
        "rejected calls never reached the service, and the fallback answered from cache."
    )
    final = breaker.state
    ui.say(
        f"Final breaker state: [bold]{final.value}[/bold]"
        + (" (recovered)." if final is CircuitState.CLOSED else ".")
    )
    await stack.aclose()


SCENE = Scene(
    name="guards",
    title="headrace-guards: a flaky service behind a guard stack",
    run=run,
    order=10,
)
