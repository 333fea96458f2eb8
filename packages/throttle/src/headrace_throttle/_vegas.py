"""A delay-based limit after TCP Vegas: it estimates the queue from the minimum latency."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import final

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_int, check_number, within
from headrace_throttle._limit import _Bounded, _jitter

__all__ = ["Vegas"]


@final
class Vegas(_Bounded):
    """A latency-based limit after TCP Vegas (and Netflix's VegasLimit).

    Once per round trip (a window of ``limit`` samples) it estimates how many calls
    wait in the service's queue, ``queue = limit * (1 - min_rtt / rtt)``, where
    ``min_rtt`` is the lowest latency seen (the service without a queue) and ``rtt``
    the window's mean. With ``log = log10(limit)``: a queue below ``log`` grows the limit
    by ``beta``, below ``alpha`` by ``log``; a queue above ``beta`` (or a failure)
    shrinks it by ``log``; in between the limit holds. ``alpha`` and ``beta`` default to
    ``3 * log`` and ``6 * log``.

    Args:
        min_limit: the lowest limit, ``>= 1``.
        max_limit: the highest limit, or None for the throttle's ``max_concurrency``.
        alpha: the queue below which the limit grows, or None for ``3 * log10(limit)``.
        beta: the queue above which it shrinks, or None for ``6 * log10(limit)``.
        smoothing: how far the limit moves toward the new value, in ``(0, 1]``.
        probe_interval: seconds after which ``min_rtt`` is measured afresh (the
            service's own latency may change), or None to keep the lowest ever seen.
        rng: a random source for the probe's jitter.

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    __slots__ = (
        "_min_rtt",
        "_next_probe",
        "_rng",
        "_window_left",
        "_window_min",
        "_window_n",
        "_window_sum",
        "alpha",
        "beta",
        "max_limit",
        "min_limit",
        "probe_interval",
        "smoothing",
    )

    def __init__(
        self,
        *,
        min_limit: int = 1,
        max_limit: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        smoothing: float = 1.0,
        probe_interval: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.min_limit = check_int("min_limit", min_limit, ge=1)
        self.max_limit = None if max_limit is None else check_int("max_limit", max_limit, ge=1)
        if self.max_limit is not None and self.max_limit < self.min_limit:
            raise ConfigurationError.argument_error(
                "max_limit", max_limit, f"must be >= min_limit ({min_limit})"
            )
        self.alpha = None if alpha is None else check_number("alpha", alpha, gt=0)
        self.beta = None if beta is None else check_number("beta", beta, gt=0)
        if self.alpha is not None and self.beta is not None and self.beta < self.alpha:
            raise ConfigurationError.argument_error("beta", beta, f"must be >= alpha ({alpha})")
        self.smoothing = check_number("smoothing", smoothing, gt=0, le=1)
        self.probe_interval = (
            None if probe_interval is None else check_number("probe_interval", probe_interval, gt=0)
        )
        self._rng = rng or random.Random()
        self._min_rtt = math.inf
        self._next_probe: float | None = None
        self._window_left = 0
        self._window_sum = 0.0
        self._window_n = 0
        self._window_min = math.inf

    def _bind(
        self, initial: int, low: int, high: int, clock: Callable[[], float] | None = None
    ) -> None:
        low = max(low, self.min_limit)
        if self.max_limit is not None:
            high = max(low, min(high, self.max_limit))
        super()._bind(initial, low, high, clock)

    @property
    def min_rtt(self) -> float | None:
        """The lowest latency seen (the no-queue latency), or None before any sample."""
        return None if self._min_rtt == math.inf else self._min_rtt

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Take one sample; once per window, move the limit by the queue estimate.

        Args:
            rtt: the call's duration in seconds.
            in_flight: calls in flight while it ran.
            dropped: True for a failure (the limit shrinks at the window's end).

        Returns:
            The new limit.
        """
        if rtt <= 0.0:
            return int(self.limit)
        self._window_sum += rtt
        self._window_n += 1
        self._window_min = min(self._window_min, rtt)
        if self._window_left <= 0:
            self._window_left = max(1, math.ceil(self.limit))
        if dropped:
            self._window_left = 1  # a failure ends the window now
        self._window_left -= 1
        if self._window_left > 0:
            return int(self.limit)
        mean = self._window_sum / self._window_n
        window_min = self._window_min
        self._window_sum, self._window_n, self._window_min = 0.0, 0, math.inf
        if self.probe_interval is not None and self._probe_due():
            self._min_rtt = window_min
        else:
            self._min_rtt = min(self._min_rtt, window_min)
        limit = self.limit
        log = max(1.0, math.log10(limit))
        alpha = self.alpha if self.alpha is not None else 3.0 * log
        beta = self.beta if self.beta is not None else 6.0 * log
        queue = limit * (1.0 - self._min_rtt / mean)
        if dropped:
            target = limit - log
        elif in_flight * 2 < limit:
            return int(limit)  # the caller, not the service, is the bottleneck
        elif queue <= log:
            target = limit + beta
        elif queue < alpha:
            target = limit + log
        elif queue > beta:
            target = limit - log
        else:
            return int(limit)
        limit = (1.0 - self.smoothing) * limit + self.smoothing * target
        self.limit = min(float(self._max), max(float(self._min), limit))
        return int(self.limit)

    def _probe_due(self) -> bool:
        now = self._clock()
        interval = self.probe_interval
        assert interval is not None
        if self._next_probe is None or within(self._next_probe, now):
            first = self._next_probe is None
            self._next_probe = now + interval * _jitter(self._rng)
            return not first
        return False

    def __repr__(self) -> str:
        return f"Vegas(alpha={self.alpha!r}, beta={self.beta!r}, smoothing={self.smoothing:g})"
