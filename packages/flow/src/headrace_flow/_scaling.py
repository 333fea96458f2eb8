"""Scaling strategies: how many workers a stage runs."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast, final, runtime_checkable

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_int, check_number, check_optional_number
from headrace_flow._stats import StageSnapshot, StageStats

__all__ = ["FixedScaling", "ScalingStrategy", "UtilizationScaling"]


@runtime_checkable
class ScalingStrategy(Protocol):
    """Decides a stage's worker count.

    The runtime starts ``initial_workers()`` workers, then calls ``decide`` on item
    events (``tick=False``) and on a periodic tick (``tick=True``); the returned delta is
    clamped so the count stays within ``[min_workers, max_workers]``.
    """

    @property
    def min_workers(self) -> int:
        """The fewest workers the stage may have."""
        ...

    @property
    def max_workers(self) -> int:
        """The most workers the stage may have."""
        ...

    def initial_workers(self) -> int:
        """Return the number of workers to start with."""
        ...

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        """Return the change in workers (positive adds, negative retires)."""
        ...


@final
class FixedScaling:
    """A constant number of workers, all started when the run starts.

    Args:
        workers: the number of workers, ``>= 1``.

    Raises:
        ConfigurationError: when ``workers`` is not an int ``>= 1`` (for a stage that
            scales down to no worker when idle, use ``UtilizationScaling(min_workers=0)``).
    """

    __slots__ = ("workers",)

    def __init__(self, workers: int = 1) -> None:
        if workers == 0 and type(workers) is int:
            raise ConfigurationError.argument_error(
                "workers",
                workers,
                "must be an int >= 1; for a stage that scales to zero workers when idle, "
                "use UtilizationScaling(min_workers=0)",
            )
        self.workers = check_int("workers", workers, ge=1)

    @property
    def min_workers(self) -> int:
        """Equal to ``workers``."""
        return self.workers

    @property
    def max_workers(self) -> int:
        """Equal to ``workers``."""
        return self.workers

    def initial_workers(self) -> int:
        """Return ``workers``."""
        return self.workers

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        """Return 0: the count never changes."""
        return 0

    def on_enqueue(self, stats: StageSnapshot) -> int:
        """Return 0 (flowrhythm's strategy method)."""
        return 0

    def on_dequeue(self, stats: StageSnapshot) -> int:
        """Return 0 (flowrhythm's strategy method)."""
        return 0

    def __repr__(self) -> str:
        return f"FixedScaling(workers={self.workers})"


@final
class UtilizationScaling:
    """Scale on backlog and utilization, within ``[min_workers, max_workers]``.

    Up when work waits (``queue_length > 0``) and ``utilization >= upper_utilization``;
    down when the queue is empty and ``utilization <= lower_utilization``. Decisions
    happen on item events and on a tick every ``sampling_period`` seconds of loop time
    (1.0 s by default), at most one per ``cooldown_seconds``. Each decision moves the
    count by ``max(1, round(rate * dampening))``. A stage with no worker and waiting
    items gets one at once, whatever the cooldown, so ``min_workers=0`` works.

    Args:
        min_workers: the floor, ``>= 0``.
        max_workers: the ceiling, ``>= max(1, min_workers)``.
        lower_utilization: scale down at or below this, in ``[0, upper)``.
        upper_utilization: scale up at or above this, in ``(lower, 1]``.
        upscaling_rate: workers added per step before dampening, ``>= 1``.
        downscaling_rate: workers retired per step before dampening, ``>= 1``.
        cooldown_seconds: the least time between two scale events, ``>= 0``.
        dampening: the step multiplier, in ``(0, 1]``.
        sampling_period: the tick period in seconds (``None``: 1.0), ``> 0``; a period
            under a millisecond ticks every millisecond.
        sampling_events: evaluate on every n-th item event only (``None``: every), ``> 0``.

    Raises:
        ConfigurationError: naming the first bad argument.
    """

    __slots__ = (
        "_flow_events",
        "_flow_last_scale",
        "cooldown_seconds",
        "dampening",
        "downscaling_rate",
        "lower_utilization",
        "max_workers",
        "min_workers",
        "sampling_events",
        "sampling_period",
        "upper_utilization",
        "upscaling_rate",
    )

    def __init__(
        self,
        min_workers: int = 1,
        max_workers: int = 8,
        lower_utilization: float = 0.2,
        upper_utilization: float = 0.8,
        upscaling_rate: int = 1,
        downscaling_rate: int = 1,
        cooldown_seconds: float = 5.0,
        dampening: float = 0.5,
        sampling_period: float | None = None,
        sampling_events: int | None = None,
    ) -> None:
        self.min_workers = check_int("min_workers", min_workers, ge=0)
        self.max_workers = check_int("max_workers", max_workers, ge=1)
        if self.min_workers > self.max_workers:
            raise ConfigurationError.argument_error(
                "min_workers", min_workers, f"must be <= max_workers={max_workers!r}"
            )
        self.lower_utilization = check_number("lower_utilization", lower_utilization, ge=0, lt=1)
        self.upper_utilization = check_number("upper_utilization", upper_utilization, gt=0, le=1)
        if self.lower_utilization >= self.upper_utilization:
            raise ConfigurationError.argument_error(
                "lower_utilization",
                lower_utilization,
                f"must be < upper_utilization={upper_utilization!r}",
            )
        self.upscaling_rate = check_int("upscaling_rate", upscaling_rate, ge=1)
        self.downscaling_rate = check_int("downscaling_rate", downscaling_rate, ge=1)
        self.cooldown_seconds = check_number("cooldown_seconds", cooldown_seconds, ge=0)
        self.dampening = check_number("dampening", dampening, gt=0, le=1)
        self.sampling_period = check_optional_number("sampling_period", sampling_period, gt=0)
        if sampling_events is not None:
            check_int("sampling_events", sampling_events, ge=1)
        self.sampling_events = sampling_events
        # state for flowrhythm's on_enqueue/on_dequeue methods only (the flow runtime
        # keeps per-stage state itself and calls decide())
        self._flow_last_scale: float | None = None
        self._flow_events = 0

    @property
    def tick_period(self) -> float:
        """Seconds between periodic evaluations."""
        return 1.0 if self.sampling_period is None else self.sampling_period

    def initial_workers(self) -> int:
        """Return ``min_workers``."""
        return self.min_workers

    def step_up(self) -> int:
        """Workers added by one decision."""
        return max(1, round(self.upscaling_rate * self.dampening))

    def step_down(self) -> int:
        """Workers retired by one decision."""
        return max(1, round(self.downscaling_rate * self.dampening))

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        """Return the worker delta for ``stats`` at loop time ``now``.

        Args:
            stats: the stage now.
            now: the loop time.
            tick: whether this is the periodic evaluation.

        Returns:
            A positive, negative or zero delta (the runtime clamps it to the bounds).
        """
        return self.evaluate(
            stats.workers,
            stats.busy_workers,
            stats.queue_length,
            _latest(stats.last_scale_up_at, stats.last_scale_down_at),
            now,
        )

    def evaluate(
        self, workers: int, busy: int, queue_length: int, last_scale: float | None, now: float
    ) -> int:
        """The decision of :meth:`decide` from plain numbers (no snapshot needed).

        Returns:
            The worker delta.
        """
        if workers == 0:
            return 1 if queue_length > 0 and self.max_workers > 0 else 0
        if last_scale is not None and now - last_scale < self.cooldown_seconds:
            return 0
        utilization = busy / workers
        if queue_length > 0:
            if utilization >= self.upper_utilization and workers < self.max_workers:
                return min(self.step_up(), self.max_workers - workers)
            return 0
        if utilization <= self.lower_utilization and workers > self.min_workers:
            return -min(self.step_down(), workers - self.min_workers)
        return 0

    def _legacy(self, snapshot: StageSnapshot) -> int:
        if self.sampling_events is not None:
            self._flow_events += 1
            if self._flow_events < self.sampling_events:
                return 0
            self._flow_events = 0
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = 0.0
        delta = self.evaluate(
            snapshot.total_workers,
            snapshot.busy_workers,
            snapshot.queue_length,
            self._flow_last_scale,
            now,
        )
        if delta:
            self._flow_last_scale = now
        return delta

    def on_enqueue(self, stats: StageSnapshot) -> int:
        """Return the delta for an enqueue event (flowrhythm's strategy method)."""
        return self._legacy(stats)

    def on_dequeue(self, stats: StageSnapshot) -> int:
        """Return the delta for a dequeue event (flowrhythm's strategy method)."""
        return self._legacy(stats)

    def __repr__(self) -> str:
        return f"UtilizationScaling(min_workers={self.min_workers}, max_workers={self.max_workers})"


def _latest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class LegacyAdapter:
    """Runs a flowrhythm-style strategy (``initial_workers``, ``on_enqueue``, ``on_dequeue``)."""

    __slots__ = ("_inner", "max_workers", "min_workers")

    def __init__(self, inner: Any) -> None:
        self._inner = inner  # the user's strategy: whatever its methods return is checked
        self.min_workers, self.max_workers = bounds(inner)

    def initial_workers(self) -> int:
        count: int = self._inner.initial_workers()  # the runtime checks it is an int
        return count

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        return 0

    def legacy(self, stats: StageStats, enqueue: bool) -> object:
        """Return what the strategy's ``on_enqueue`` / ``on_dequeue`` returns for ``stats``."""
        snapshot = StageSnapshot(
            stage_name=stats.name,
            busy_workers=stats.busy_workers,
            idle_workers=stats.idle_workers,
            queue_length=stats.queue_length,
            oldest_item_enqueued_at=stats.oldest_item_enqueued_at,
            last_enqueue_at=stats.last_enqueue_at,
            last_dequeue_at=stats.last_dequeue_at,
            last_scale_up_at=stats.last_scale_up_at,
            last_scale_down_at=stats.last_scale_down_at,
            last_error_at=stats.last_error_at,
        )
        method = self._inner.on_enqueue if enqueue else self._inner.on_dequeue
        result: object = method(snapshot)  # the runtime checks it is an int
        return result

    def __repr__(self) -> str:
        return repr(self._inner)


def as_strategy(value: object, argument: str = "scaling") -> ScalingStrategy:
    """Validate a strategy: return it, or an adapter for a flowrhythm-style one.

    Raises:
        ConfigurationError: when ``value`` is not a strategy.
    """
    if isinstance(value, FixedScaling | UtilizationScaling):
        return value
    if callable(getattr(value, "decide", None)) and callable(
        getattr(value, "initial_workers", None)
    ):
        # duck-typed: bounds() reads min_workers / max_workers with defaults
        return cast("ScalingStrategy", value)
    if callable(getattr(value, "initial_workers", None)) and callable(
        getattr(value, "on_enqueue", None)
    ):
        return LegacyAdapter(value)
    raise ConfigurationError.argument_error(
        argument, value, "must be a ScalingStrategy (initial_workers() and decide())"
    )


#: The most workers a stage gets from a strategy that declares no ``max_workers``.
DEFAULT_MAX_WORKERS = 1024


def bounds(strategy: object) -> tuple[int, int]:
    """Return (min, max) of a strategy.

    A strategy that declares no ``min_workers`` (or not an int >= 0) gets 0; one that
    declares no ``max_workers`` (or not an int >= 1) gets ``DEFAULT_MAX_WORKERS``, so a
    decision that asks for a huge number of workers stays bounded.
    """
    low = getattr(strategy, "min_workers", 0)
    high = getattr(strategy, "max_workers", None)
    low_i = int(low) if isinstance(low, int) and low >= 0 else 0
    high_i = int(high) if isinstance(high, int) and high >= 1 else DEFAULT_MAX_WORKERS
    return low_i, max(high_i, low_i)
