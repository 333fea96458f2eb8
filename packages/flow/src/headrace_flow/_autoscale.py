"""A stage's worker count in one run: its strategy's bounds, the target, and the decisions."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from headrace_core.lowlevel import safe_repr
from headrace_flow._scaling import (
    FixedScaling,
    LegacyAdapter,
    ScalingStrategy,
    UtilizationScaling,
    bounds,
)
from headrace_flow._stats import StageStats

#: The shortest tick of a dynamic stage: a shorter ``sampling_period`` is taken as this. An
#: event loop times no finer (epoll waits in whole milliseconds), and a period so short that
#: ``now + period == now`` would re-arm the tick at the same instant for ever.
MIN_TICK = 0.001


class Scaler:
    """How many workers one stage should have, and when it last changed.

    ``target`` is the count the run keeps (it spawns workers up to it and retires those
    beyond it); a dynamic stage's strategy moves it on item events and on a periodic
    tick, clamped to ``[low, high]``.
    """

    __slots__ = (
        "dynamic",
        "events",
        "high",
        "last_down",
        "last_up",
        "low",
        "sampling_events",
        "strategy",
        "target",
        "tick",
        "tick_handle",
    )

    def __init__(self, strategy: ScalingStrategy) -> None:
        self.strategy = strategy
        self.low, self.high = bounds(strategy)
        self.dynamic = not isinstance(strategy, FixedScaling)
        self.sampling_events: int | None = None
        self.tick = 1.0
        if isinstance(strategy, UtilizationScaling):
            self.tick = max(strategy.tick_period, MIN_TICK)
            self.sampling_events = strategy.sampling_events
        elif self.dynamic:
            period = getattr(strategy, "sampling_period", None)
            if isinstance(period, int | float) and period > 0:
                self.tick = max(float(period), MIN_TICK)  # (nan is not > 0)
        self.events = 0
        self.target = 0
        self.last_up: float | None = None
        self.last_down: float | None = None
        self.tick_handle: asyncio.TimerHandle | None = None

    def initial(self) -> int:
        """The worker count to start with (the strategy's, clamped).

        Raises:
            Exception: what the strategy's ``initial_workers()`` raised.
            TypeError: when it returned something else than a number.
        """
        strategy = self.strategy
        wanted = worker_delta(strategy.initial_workers(), strategy, "initial_workers")
        return self.clamp(wanted)

    def clamp(self, wanted: int) -> int:
        """``wanted`` within ``[low, high]``."""
        return min(max(wanted, self.low), self.high)

    def decide(
        self,
        workers: int,
        busy: int,
        queue_length: int,
        stats: Callable[[float], StageStats],
        now: float,
        *,
        tick: bool,
        enqueue: bool,
    ) -> int:
        """Return the strategy's worker delta now (``0`` between sampled events).

        ``stats(now)`` builds the stage's snapshot; it is called only for a strategy that
        needs one (``UtilizationScaling`` decides from the plain numbers).

        Raises:
            BaseException: what the user's strategy raised.
            TypeError: when it returned something else than a number.
        """
        if not tick and self.sampling_events is not None:
            self.events += 1
            if self.events < self.sampling_events:
                return 0
            self.events = 0
        strategy = self.strategy
        if isinstance(strategy, UtilizationScaling):
            last = self.last_up
            down = self.last_down
            if last is None or (down is not None and down > last):
                last = down
            return strategy.evaluate(workers, busy, queue_length, last, now)
        if isinstance(strategy, LegacyAdapter):
            if tick:
                return 0
            delta: object = strategy.legacy(stats(now), enqueue)
        else:
            delta = strategy.decide(stats(now), now, tick)
        return worker_delta(delta, strategy, "decide")

    def moved(self, wanted: int, now: float) -> int:
        """Set the target to ``wanted`` (clamped); return the previous one."""
        wanted = self.clamp(wanted)
        before = self.target
        self.target = wanted
        if wanted > before:
            self.last_up = now
        elif wanted < before:
            self.last_down = now
        return before

    def stop_ticking(self) -> None:
        """Cancel the periodic tick."""
        if self.tick_handle is not None:
            self.tick_handle.cancel()
            self.tick_handle = None


def worker_delta(value: object, strategy: object, method: str) -> int:
    """Return a strategy's worker count or delta as an int, or raise a clear error.

    Raises:
        TypeError: for anything but an int or a finite float (``None``, NaN, a string).
    """
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    raise TypeError(
        f"scaling strategy {safe_repr(strategy)}: {method}() returned {safe_repr(value)}; "
        "it must return an int"
    )
