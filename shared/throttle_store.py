"""An in-memory ``ThrottleStore``: the shared throttle's rules, in one process, for tests.

It follows the Redis store's scripts step for step (leases under the shared limit, AIMD
with the admission-epoch rule, a hold, pacing), on the event loop's clock, so a test on
virtual time can drive a shared throttle without a server.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from typing import Any


class MemoryThrottleStore:
    """A well-behaved ``ThrottleStore`` in memory (one per "cluster" of throttles)."""

    def __init__(self) -> None:
        self.leases: dict[str, set[str]] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, deque[float]] = {}
        self.calls = 0

    def _state(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        state = self.state.get(name)
        if state is None:
            initial = config.get("initial_concurrency") or config.get("max_concurrency", 5)
            state = self.state[name] = {
                "limit": int(initial),
                "epoch": 0,
                "last_change": None,
                "last_dispatch": -math.inf,
                "hold_until": 0.0,
                "decreases": 0,
            }
        return state

    def _view(self, name: str, now: float) -> dict[str, Any]:
        state = self.state[name]
        return {
            "concurrency": state["limit"],
            "in_flight": len(self.leases.get(name, ())),
            "epoch": state["epoch"],
            "hold": max(0.0, state["hold_until"] - now),
            "decreases": state["decreases"],
        }

    def _decrease(self, name: str, config: Mapping[str, Any], now: float) -> None:
        state = self.state[name]
        factor = float(config.get("decrease_factor", 0.5))
        new = max(int(config.get("min_concurrency", 1)), math.floor(state["limit"] * factor))
        if new < state["limit"]:
            state.update(limit=new, epoch=state["epoch"] + 1, last_change=now)
            state["decreases"] += 1
        self.failures.pop(name, None)

    async def throttle_admit(
        self, name: str, lease_id: str, ttl: float, **config: Any
    ) -> tuple[bool, float | None, Mapping[str, Any]]:
        self.calls += 1
        await asyncio.sleep(0)
        now = asyncio.get_running_loop().time()
        state = self._state(name, config)
        leases = self.leases.setdefault(name, set())
        if state["hold_until"] > now:
            return False, state["hold_until"] - now, self._view(name, now)
        if len(leases) >= state["limit"]:
            return False, None, self._view(name, now)
        interval = float(config.get("min_dispatch_interval", 0.0))
        if interval and state["last_dispatch"] + interval > now:
            return False, state["last_dispatch"] + interval - now, self._view(name, now)
        leases.add(lease_id)
        state["last_dispatch"] = now
        return True, 0.0, self._view(name, now)

    async def throttle_done(
        self, name: str, lease_id: str, outcome: str, epoch: int, **config: Any
    ) -> Mapping[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)
        now = asyncio.get_running_loop().time()
        state = self._state(name, config)
        self.leases.setdefault(name, set()).discard(lease_id)
        if outcome == "failure" and epoch == state["epoch"]:
            failures = self.failures.setdefault(name, deque())
            failures.append(now)
            window = float(config.get("failure_window", 60.0))
            while failures and failures[0] <= now - window:
                failures.popleft()
            if len(failures) >= int(config.get("failure_threshold", 3)):
                self._decrease(name, config, now)
        elif outcome == "success" and state["limit"] < int(config.get("max_concurrency", 5)):
            if state["last_change"] is None:
                state["last_change"] = now
            elif now - state["last_change"] >= float(config.get("cooling_period", 60.0)):
                state["limit"] = min(
                    int(config.get("max_concurrency", 5)),
                    state["limit"] + int(config.get("increase_by", 1)),
                )
                state["last_change"] = now
        return self._view(name, now)

    async def throttle_hold(
        self, name: str, seconds: float, epoch: int | None = None, **config: Any
    ) -> Mapping[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)
        now = asyncio.get_running_loop().time()
        state = self._state(name, config)
        if seconds > 0:
            state["hold_until"] = max(state["hold_until"], now + seconds)
        if epoch is not None and epoch == state["epoch"]:
            self._decrease(name, config, now)
        return self._view(name, now)

    async def throttle_view(self, name: str, **config: Any) -> Mapping[str, Any]:
        now = asyncio.get_running_loop().time()
        self._state(name, config)
        return self._view(name, now)
