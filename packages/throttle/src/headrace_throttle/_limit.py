"""Concurrency-limit algorithms: AIMD (the default) and a latency-based Gradient.

A limit sees one sample per finished call (``on_sample(rtt, in_flight, dropped)``) and
returns the new concurrency limit; the throttle clamps it to
``[min_concurrency, max_concurrency]``. The throttle applies the admission-epoch rule
before a sample reaches the limit: a failure of a call admitted before the latest
decrease is not passed on, so one burst of failures lowers the limit once.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Protocol, final, runtime_checkable

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_int, check_number, loop_time, within

__all__ = ["AIMD", "Gradient", "Limit", "bind_limit", "set_limit"]


@runtime_checkable
class Limit(Protocol):
    """A concurrency-limit algorithm; implement it to plug your own into ``Throttle(limit=)``."""

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Take one finished call's sample and return the new limit.

        Args:
            rtt: the call's duration in seconds (admission to finish).
            in_flight: calls still running when it finished.
            dropped: True when the call failed (congestion), False when it succeeded.

        Returns:
            The new concurrency limit (the throttle clamps it to its bounds).
        """
        ...


class _Bounded:
    """Bounds and the current value, set by the throttle when it adopts the limit."""

    __slots__ = ("_bound", "_clock", "_max", "_min", "limit")

    def __init__(self) -> None:
        self._bound = False
        self.limit = 1.0
        self._min = 1
        self._max = 1 << 30
        self._clock: Callable[[], float] = loop_time

    def _bind(
        self, initial: int, low: int, high: int, clock: Callable[[], float] | None = None
    ) -> None:
        if self._bound:
            raise ConfigurationError.argument_error(
                "limit", self, "is already used by another Throttle; create one per throttle"
            )
        self._bound = True
        self._min, self._max = low, high
        self.limit = float(min(high, max(low, initial)))
        if clock is not None:
            self._clock = clock

    def _set(self, value: int) -> None:
        self.limit = float(min(self._max, max(self._min, value)))


def bind_limit(
    limit: Limit, initial: int, low: int, high: int, clock: Callable[[], float] | None = None
) -> int:
    """Adopt ``limit`` for a throttle with these bounds; return the throttle's starting limit.

    headrace's limits (AIMD, Gradient, Vegas) keep their value and bounds, and belong to
    one throttle; a user's :class:`Limit` only answers samples, so ``initial`` stands.

    Args:
        limit: the limit algorithm.
        initial: the throttle's starting limit.
        low: ``min_concurrency``.
        high: ``max_concurrency``.
        clock: the limit's clock (the throttle's loop time, which also answers outside a
            running loop); default the running loop's time.

    Raises:
        ConfigurationError: when one of headrace's limits is already bound to a throttle.
    """
    if isinstance(limit, _Bounded):
        limit._bind(initial, low, high, clock)
        return int(limit.limit)
    return initial


def set_limit(limit: Limit, value: int) -> None:
    """Move ``limit`` to ``value`` (a manual change, or a server hint's decrease).

    A user's :class:`Limit` keeps its own state: it learns the change from later samples.
    """
    if isinstance(limit, _Bounded):
        limit._set(value)


@final
class AIMD(_Bounded):
    """Additive increase, multiplicative decrease: the throttle's default limit.

    ``failure_threshold`` failures (of calls admitted since the latest decrease) within
    ``failure_window`` seconds multiply the limit by ``decrease_factor`` (rounded down,
    at least ``min_concurrency``). A success that finishes ``cooling_period`` seconds
    or more after the latest change adds ``increase_by``, up to ``max_concurrency``.

    Args:
        failure_threshold: failures that make one congestion event, ``>= 1``.
        failure_window: seconds within which they must fall, ``> 0``.
        decrease_factor: the multiplier on a decrease, in ``(0, 1)``.
        cooling_period: seconds between changes before the limit grows again, ``> 0``.
        increase_by: the additive step, ``>= 1``.

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    __slots__ = (
        "_failures",
        "cooling_period",
        "decrease_factor",
        "decreases",
        "failure_threshold",
        "failure_window",
        "increase_by",
        "last_change",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        failure_window: float = 60.0,
        decrease_factor: float = 0.5,
        cooling_period: float = 60.0,
        increase_by: int = 1,
    ) -> None:
        super().__init__()
        self.failure_threshold = check_int("failure_threshold", failure_threshold, ge=1)
        self.failure_window = check_number("failure_window", failure_window, gt=0)
        self.decrease_factor = check_number("decrease_factor", decrease_factor, gt=0, lt=1)
        self.cooling_period = check_number("cooling_period", cooling_period, gt=0)
        self.increase_by = check_int("increase_by", increase_by, ge=1)
        self._failures: deque[float] = deque()
        self.last_change: float | None = None
        self.decreases = 0

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Count a failure toward a decrease, or let a success grow the limit after cooling.

        Args:
            rtt: the call's duration (unused by AIMD).
            in_flight: calls still running (unused by AIMD).
            dropped: True for a failure.

        Returns:
            The new limit.
        """
        now = self._clock()
        if dropped:
            failures = self._failures
            failures.append(now)
            window = self.failure_window
            while failures and within(failures[0] + window, now):
                failures.popleft()
            if len(failures) >= self.failure_threshold:
                self.decrease(now)
        elif self.limit < self._max and self.cooled(now):
            self.limit = float(min(self._max, int(self.limit) + self.increase_by))
            self.last_change = now
        return int(self.limit)

    def decrease(self, now: float) -> int:
        """Apply one multiplicative decrease now (a congestion event) and return the limit.

        Args:
            now: the loop time.

        Returns:
            The new limit.
        """
        self.limit = float(max(self._min, math.floor(self.limit * self.decrease_factor)))
        self.decreases += 1
        self._failures.clear()
        self.last_change = now
        return int(self.limit)

    def cooled(self, now: float) -> bool:
        """Whether ``cooling_period`` has passed since the latest change.

        Args:
            now: the loop time.

        Returns:
            True when the limit may grow again.
        """
        last = self.last_change
        if last is None:
            self.last_change = now
            return False
        return within(self.cooling_period, now - last)

    @property
    def recent_failures(self) -> int:
        """Failures counted toward the next decrease."""
        return len(self._failures)

    def __repr__(self) -> str:
        return (
            f"AIMD(failure_threshold={self.failure_threshold}, "
            f"decrease_factor={self.decrease_factor:g}, cooling_period={self.cooling_period:g})"
        )


@final
class Gradient(_Bounded):
    """A latency-based limit after Netflix's Gradient2: it finds the concurrency from latency.

    Each sample updates ``long_rtt``, an exponential average over ``long_window``
    samples, and compares it with the sample (``short_rtt``): ``gradient =
    clamp(tolerance * long_rtt / short_rtt, 0.5, 1.0)`` and ``new = limit * gradient +
    sqrt(limit)``, smoothed by ``smoothing``. While latency stays within ``tolerance``
    times its long-run level the limit grows by about ``sqrt(limit)`` per sample; as
    queueing raises latency the gradient falls below 1 and the limit settles where
    growth and the gradient balance. The limit does not grow while fewer than half of
    its slots are in use (the caller, not the service, is the bottleneck). The limit is
    updated once per window of samples (one round trip's worth unless ``window`` says
    otherwise), from the window's mean latency, so it moves at the pace of the service.

    A long-run average follows a sustained overload upward; ``probe_interval`` (after
    Envoy's minimum-RTT probe) bounds that drift: every ``probe_interval`` seconds
    (jittered by up to 10 %) the limit drops to ``min_limit`` for a few samples, and
    ``long_rtt`` restarts from the lowest latency seen there.

    Args:
        min_limit: the lowest limit, ``>= 1``.
        max_limit: the highest limit, or None for the throttle's ``max_concurrency``.
        tolerance: how much latency may grow over its long-run level, ``>= 1``.
        smoothing: how fast the limit moves toward the new value, in ``(0, 1]``.
        long_window: samples in the long-run average, ``>= 1``.
        probe_interval: seconds between minimum-latency probes, or None for no probe.
        window: samples per update (their mean latency is the short-run latency), or
            None for one round trip's worth (the current limit).
        rng: a random source for the probe's jitter (for reproducible runs).

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    __slots__ = (
        "_count",
        "_long",
        "_next_probe",
        "_probe_left",
        "_probe_min",
        "_probe_start",
        "_rng",
        "_saved",
        "_window_left",
        "_window_n",
        "_window_sum",
        "long_window",
        "max_limit",
        "min_limit",
        "probe_interval",
        "smoothing",
        "tolerance",
        "window",
    )

    #: Samples a probe takes at the minimum limit before it restores the limit.
    PROBE_SAMPLES = 5

    def __init__(
        self,
        *,
        min_limit: int = 1,
        max_limit: int | None = None,
        tolerance: float = 2.0,
        smoothing: float = 0.2,
        long_window: int = 600,
        probe_interval: float | None = None,
        window: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.window = None if window is None else check_int("window", window, ge=1)
        self._window_left = 0
        self._window_sum = 0.0
        self._window_n = 0
        self.min_limit = check_int("min_limit", min_limit, ge=1)
        self.max_limit = None if max_limit is None else check_int("max_limit", max_limit, ge=1)
        if self.max_limit is not None and self.max_limit < self.min_limit:
            raise ConfigurationError.argument_error(
                "max_limit", max_limit, f"must be >= min_limit ({min_limit})"
            )
        self.tolerance = check_number("tolerance", tolerance, ge=1)
        self.smoothing = check_number("smoothing", smoothing, gt=0, le=1)
        self.long_window = check_int("long_window", long_window, ge=1)
        self.probe_interval = (
            None if probe_interval is None else check_number("probe_interval", probe_interval, gt=0)
        )
        self._rng = rng or random.Random()
        self._long: float | None = None
        self._count = 0
        self._next_probe: float | None = None
        self._probe_left = 0
        self._probe_min = math.inf
        self._probe_start = 0.0
        self._saved = 0.0

    def _bind(
        self, initial: int, low: int, high: int, clock: Callable[[], float] | None = None
    ) -> None:
        low = max(low, self.min_limit)
        if self.max_limit is not None:
            high = max(low, min(high, self.max_limit))
        super()._bind(initial, low, high, clock)

    @property
    def long_rtt(self) -> float | None:
        """The long-run latency average, or None before the first sample."""
        return self._long

    @property
    def probing(self) -> bool:
        """Whether a minimum-latency probe is running."""
        return self._probe_left > 0

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Update the latency averages with one sample and return the new limit.

        Args:
            rtt: the call's duration in seconds.
            in_flight: calls still running when it finished.
            dropped: True for a failure (the latency still counts).

        Returns:
            The new limit.
        """
        if rtt <= 0.0:
            return int(self.limit)  # a manual record carries no latency
        if self._probe_left:
            return self._probe_sample(rtt)
        if self.probe_interval is not None and self._probe_due():
            return int(self.limit)
        # One update per window of samples (one round trip's worth by default): the
        # average latency of the window is the short-run latency.
        self._window_sum += rtt
        self._window_n += 1
        if self._window_left <= 0:
            self._window_left = self.window or max(1, math.ceil(self.limit))
        self._window_left -= 1
        if self._window_left > 0:
            return int(self.limit)
        short = self._window_sum / self._window_n
        self._window_sum = 0.0
        self._window_n = 0
        self._count += 1
        long = self._long
        if long is None:
            long = short
        elif self._count <= 10:  # a plain mean while warming up
            long += (short - long) / self._count
        else:
            long += (short - long) * 2.0 / (self.long_window + 1)
        if long / short > 2.0:  # latency fell back: forget the overload faster
            long *= 0.95
        self._long = long
        limit = self.limit
        if in_flight < limit / 2:
            return int(limit)
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        target = limit * gradient + math.sqrt(limit)
        limit = limit * (1.0 - self.smoothing) + target * self.smoothing
        self.limit = min(float(self._max), max(float(self._min), limit))
        return int(self.limit)

    def _probe_due(self) -> bool:
        now = self._clock()
        interval = self.probe_interval
        assert interval is not None
        if self._next_probe is None:
            self._next_probe = now + interval * _jitter(self._rng)
            return False
        if not within(self._next_probe, now):
            return False
        self._saved = self.limit
        self._probe_left = self.PROBE_SAMPLES
        self._probe_min = math.inf
        self._probe_start = now
        self.limit = float(self._min)
        return True

    def _probe_sample(self, rtt: float) -> int:
        if self._clock() - rtt < self._probe_start:
            return int(self.limit)  # started before the probe: still queued behind the load
        self._probe_min = min(self._probe_min, rtt)
        self._probe_left -= 1
        if self._probe_left == 0:
            self._long = self._probe_min
            self._count = 10
            self._window_sum = 0.0
            self._window_n = 0
            self._window_left = 0
            self.limit = self._saved
            interval = self.probe_interval
            assert interval is not None
            self._next_probe = self._clock() + interval * _jitter(self._rng)
        return int(self.limit)

    def __repr__(self) -> str:
        return (
            f"Gradient(tolerance={self.tolerance:g}, smoothing={self.smoothing:g}, "
            f"long_window={self.long_window})"
        )


def _jitter(rng: random.Random) -> float:
    """A probe's jitter factor in ``[0.9, 1]`` from ``rng``; 1.0 when the rng misbehaves.

    (A user's ``rng`` that raises an ordinary error, or returns something that is not a
    number in range, must not corrupt the probe schedule.)
    """
    try:
        factor: object = rng.uniform(0.9, 1.0)
    except (Exception, asyncio.CancelledError):
        return 1.0
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0.9 <= factor <= 1.0:
        return 1.0
    return float(factor)
