"""Counters, gauges, an exponentially weighted rate and a log-linear latency histogram."""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import final

from headrace_core._errors import safe_repr
from headrace_core._validate import check_number

# Log-linear buckets: each power of two is split into _SUB linear sub-buckets, so the
# relative error of a quantile is at most 1 / (2 * _SUB) (about 3 %).
_SUB = 16


def loop_time() -> float:
    """Return the running event loop's time (the default clock of every component).

    Raises:
        RuntimeError: when called outside a running event loop.
    """
    return asyncio.get_running_loop().time()


@final
class Counter:
    """A monotonically increasing count (cheap enough for a hot path)."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def inc(self, n: int = 1) -> None:
        """Add ``n`` (default 1)."""
        self.value += n

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Counter({self.value})"


@final
class Gauge:
    """A value that goes up and down, remembering the highest value it reached."""

    __slots__ = ("peak", "value")

    def __init__(self, value: float = 0) -> None:
        self.value = value
        self.peak = value

    def set(self, value: float) -> None:
        """Set the current value."""
        self.value = value
        if value > self.peak:
            self.peak = value

    def inc(self, n: float = 1) -> None:
        """Add ``n``."""
        self.value += n
        if self.value > self.peak:
            self.peak = self.value

    def dec(self, n: float = 1) -> None:
        """Subtract ``n``."""
        self.value -= n

    def __repr__(self) -> str:
        return f"Gauge({self.value}, peak={self.peak})"


@final
class EwmaRate:
    """Events per second, exponentially weighted, read from a clock (the loop's by default).

    Each event contributes ``exp(-age / tau) / tau`` to the rate, so a steady stream of
    ``r`` events per second reads ``r`` once it has run for a few ``tau``.

    Args:
        tau: the time constant in seconds (``> 0``); larger is smoother.
        clock: a zero-argument callable returning seconds; default the running loop's time.
    """

    __slots__ = ("_clock", "_last", "_rate", "tau")

    def __init__(self, tau: float = 1.0, *, clock: Callable[[], float] | None = None) -> None:
        self.tau = check_number("tau", tau, gt=0)
        self._clock = clock or loop_time
        self._rate = 0.0
        self._last: float | None = None

    def mark(self, n: float = 1) -> None:
        """Record ``n`` events now."""
        now = self._clock()
        last = self._last
        if now != now:  # a NaN reading says nothing about time: count, keep the time
            self._rate += n / self.tau
            return
        if last is not None and now > last:
            self._rate *= math.exp((last - now) / self.tau)
        self._last = now if last is None or now > last else last
        self._rate += n / self.tau

    def rate(self) -> float:
        """Return the current rate in events per second."""
        last = self._last
        if last is None:
            return 0.0
        now = self._clock()
        if not now > last:  # also a NaN reading
            return self._rate
        return self._rate * math.exp((last - now) / self.tau)

    def __repr__(self) -> str:
        return f"EwmaRate(tau={self.tau})"


@final
@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """A frozen summary of a :class:`LatencyHistogram` (seconds)."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float


# Bucket boundaries: every power of two from 2**-30 (about 1 ns) to 2**30 s is split
# into _SUB equal parts. Sample i falls in bucket bisect_right(_BOUNDS, x): 0 holds values
# below 1 ns (read as 0), len(_BOUNDS) holds values above 2**30 s (read as the maximum).
_BOUNDS: list[float] = [
    math.ldexp(1.0 + sub / _SUB, exponent) for exponent in range(-30, 31) for sub in range(_SUB)
]
_FLUSH_AT = 2048


def _bucket_value(index: int) -> float:
    if index <= 0:
        return 0.0
    if index >= len(_BOUNDS):
        return math.inf
    return (_BOUNDS[index - 1] + _BOUNDS[index]) / 2


@final
class LatencyHistogram:
    """A mergeable latency histogram with log-linear buckets and bounded memory.

    ``record`` only appends to a small buffer (a few tens of nanoseconds); the buffer is
    folded into the buckets in C-speed batches. Quantiles are exact to within about 3 %
    and clamped to the exact minimum and maximum seen. Memory is bounded by the bucket
    count (under 1000) plus the buffer (2048 samples).
    """

    __slots__ = ("_buckets", "_buffer", "_count", "_max", "_min", "_total")

    def __init__(self) -> None:
        self._buckets: collections.Counter[int] = collections.Counter()
        self._buffer: list[float] = []
        self._count = 0
        self._total = 0.0
        self._min = math.inf
        self._max = 0.0

    def record(self, seconds: float) -> None:
        """Record one sample, in seconds.

        Negative samples count as zero; NaN and infinite samples are ignored (not
        counted), so one bad duration cannot corrupt the mean, the maximum or the
        percentiles.
        """
        buffer = self._buffer
        buffer.append(seconds)
        if len(buffer) >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        buffer = self._buffer
        if not buffer:
            return
        try:
            total = math.fsum(buffer)
        except ValueError:  # inf and -inf among the samples
            total = math.nan
        if not math.isfinite(total):
            buffer[:] = [x for x in buffer if math.isfinite(x)]
            if not buffer:
                return
            total = math.fsum(buffer)
        low = min(buffer)
        if low < 0:
            buffer[:] = [x if x > 0 else 0.0 for x in buffer]
            low = 0.0
            total = math.fsum(buffer)
        self._count += len(buffer)
        self._total += total
        high = max(buffer)
        if high > self._max:
            self._max = high
        if low < self._min:
            self._min = low
        # Sort (in C), then cut the sorted run at each bucket boundary within its range:
        # the Python-level work is per bucket touched, not per sample.
        buffer.sort()
        buckets = self._buckets
        bounds = _BOUNDS
        cut = bisect.bisect_right
        index = cut(bounds, buffer[0])
        last = cut(bounds, buffer[-1])
        position = 0
        size = len(buffer)
        while index < last:
            end = cut(buffer, bounds[index], position)
            if end > position:
                buckets[index] += end - position
                position = end
            index += 1
        if position < size:
            buckets[last] += size - position
        buffer.clear()

    @property
    def count(self) -> int:
        """The number of samples recorded."""
        return self._count + len(self._buffer)

    @property
    def total(self) -> float:
        """The sum of the samples, in seconds."""
        self._flush()
        return self._total

    @property
    def min(self) -> float:
        """The smallest sample (``inf`` when empty)."""
        self._flush()
        return self._min

    @property
    def max(self) -> float:
        """The largest sample (0.0 when empty)."""
        self._flush()
        return self._max

    def quantile(self, q: float) -> float:
        """Return the ``q`` quantile (``0 <= q <= 1``) in seconds; 0.0 when empty.

        Raises:
            ValueError: when ``q`` is outside ``[0, 1]``.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q={safe_repr(q)}: must be in [0, 1]")
        return self._quantiles((q,))[0]

    def _quantiles(self, qs: Iterable[float]) -> list[float]:
        self._flush()
        if not self._count:
            return [0.0 for _ in qs]
        keys = sorted(self._buckets)
        out = []
        for q in qs:
            if q <= 0.0:
                out.append(self._min)
                continue
            if q >= 1.0:
                out.append(self._max)
                continue
            rank = q * self._count
            seen = 0
            value = self._max
            for key in keys:
                seen += self._buckets[key]
                if seen >= rank:
                    value = _bucket_value(key)
                    break
            out.append(min(self._max, max(self._min, value)))
        return out

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` into this histogram."""
        self._flush()
        other._flush()
        self._buckets.update(other._buckets)
        self._count += other._count
        self._total += other._total
        self._max = max(self._max, other._max)
        self._min = min(self._min, other._min)

    def reset(self) -> None:
        """Forget every sample."""
        self._buckets.clear()
        self._buffer.clear()
        self._count = 0
        self._total = 0.0
        self._min = math.inf
        self._max = 0.0

    @property
    def buckets(self) -> int:
        """The number of buckets in use (memory is bounded by their count)."""
        self._flush()
        return len(self._buckets)

    @property
    def mean(self) -> float:
        """The exact mean of the samples, 0.0 when empty."""
        self._flush()
        return self._total / self._count if self._count else 0.0

    def snapshot(self) -> LatencySnapshot:
        """Return a frozen summary: count, mean, min, p50, p90, p99, max."""
        p50, p90, p99 = self._quantiles((0.5, 0.9, 0.99))
        return LatencySnapshot(
            count=self._count,
            mean=self.mean,
            min=self._min if self._count else 0.0,
            p50=p50,
            p90=p90,
            p99=p99,
            max=self._max,
        )

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count})"
