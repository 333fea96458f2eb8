"""Circuit-breaker trip policies and the sliding windows behind them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypeAlias, final

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_int, check_number


@final
@dataclass(frozen=True, slots=True)
class Consecutive:
    """Trip after ``threshold`` failures in a row (a slow call counts as a failure).

    Args:
        threshold: consecutive failures that open the breaker, ``>= 1``.

    Raises:
        ConfigurationError: when ``threshold`` is invalid.
    """

    threshold: int = 5

    def __post_init__(self) -> None:
        check_int("threshold", self.threshold, ge=1)


@final
@dataclass(frozen=True, slots=True)
class CountWindow:
    """Trip on the failure (or slow) rate of the last ``size`` calls.

    Args:
        size: how many recent calls the window holds, ``>= 1``.
        min_calls: the window is evaluated only once it holds this many calls, ``>= 1``.
        failure_rate: trip when failures / calls reaches this, in ``(0, 1]``.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    size: int = 100
    min_calls: int = 10
    failure_rate: float = 0.5

    def __post_init__(self) -> None:
        check_int("size", self.size, ge=1)
        check_int("min_calls", self.min_calls, ge=1)
        check_number("failure_rate", self.failure_rate, gt=0, le=1)
        if self.min_calls > self.size:  # the window could never hold enough calls to trip
            raise ConfigurationError.argument_error(
                "min_calls", self.min_calls, f"must be <= size ({self.size})"
            )


@final
@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Trip on the failure (or slow) rate of the calls that finished in the last ``seconds``.

    The window is kept in 60 buckets, so a call leaves it between ``seconds * 59/60`` and
    ``seconds`` after it finished.

    Args:
        seconds: the window's length, finite and ``> 0``.
        min_calls: the window is evaluated only once it holds this many calls, ``>= 1``.
        failure_rate: trip when failures / calls reaches this, in ``(0, 1]``.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    seconds: float = 60.0
    min_calls: int = 10
    failure_rate: float = 0.5

    def __post_init__(self) -> None:
        check_number("seconds", self.seconds, gt=0)
        check_int("min_calls", self.min_calls, ge=1)
        check_number("failure_rate", self.failure_rate, gt=0, le=1)


Policy: TypeAlias = Consecutive | CountWindow | TimeWindow

_FAILURE = 1
_SLOW = 2


class Window:
    """Counts of calls, failures and slow calls in a sliding window."""

    __slots__ = ("calls", "failure_rate", "failures", "min_calls", "slow")

    def __init__(self, min_calls: int, failure_rate: float) -> None:
        self.min_calls = min_calls
        self.failure_rate = failure_rate
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, failure: bool, slow: bool, now: float) -> None:  # pragma: no cover
        """Record one finished call."""
        raise NotImplementedError

    def expire(self, now: float) -> None:
        """Drop what fell out of the window by ``now``."""

    def clear(self) -> None:  # pragma: no cover
        """Forget every call."""
        raise NotImplementedError

    def verdict(self, slow_call_rate: float) -> str | None:
        """Return ``"failure_rate"`` or ``"slow"`` when the window trips, else None."""
        calls = self.calls
        if calls < self.min_calls:
            return None
        if self.failures >= self.failure_rate * calls:
            return "failure_rate"
        if self.slow and self.slow >= slow_call_rate * calls:
            return "slow"
        return None

    def rates(self) -> tuple[float, float]:
        """Return ``(failure_rate, slow_rate)`` of what the window holds now."""
        calls = self.calls
        if not calls:
            return 0.0, 0.0
        return self.failures / calls, self.slow / calls


@final
class CountRing(Window):
    """The last ``size`` calls, in a ring."""

    __slots__ = ("_codes", "_index", "_size")

    def __init__(self, policy: CountWindow) -> None:
        super().__init__(policy.min_calls, policy.failure_rate)
        self._size = policy.size
        self._codes = bytearray(policy.size)
        self._index = 0

    def add(self, failure: bool, slow: bool, now: float) -> None:
        """Record one finished call, pushing out the oldest when full."""
        code = (_FAILURE if failure else 0) | (_SLOW if slow else 0)
        index = self._index
        if self.calls == self._size:
            old = self._codes[index]
            self.failures -= old & _FAILURE
            self.slow -= (old & _SLOW) >> 1
        else:
            self.calls += 1
        self._codes[index] = code
        self.failures += code & _FAILURE
        self.slow += (code & _SLOW) >> 1
        self._index = (index + 1) % self._size

    def clear(self) -> None:
        """Forget every call."""
        self._codes = bytearray(self._size)
        self._index = 0
        self.calls = self.failures = self.slow = 0


_BUCKETS = 60


@final
class TimeBuckets(Window):
    """Calls that finished in the last ``seconds``, in 60 time buckets."""

    __slots__ = ("_buckets", "_width")

    def __init__(self, policy: TimeWindow) -> None:
        super().__init__(policy.min_calls, policy.failure_rate)
        self._width = float(policy.seconds) / _BUCKETS
        # Each bucket: [index, calls, failures, slow], oldest first.
        self._buckets: deque[list[int]] = deque()

    def expire(self, now: float) -> None:
        """Drop the buckets that fell out of the window by ``now``."""
        oldest = int(now // self._width) - _BUCKETS
        buckets = self._buckets
        while buckets and buckets[0][0] <= oldest:
            _, calls, failures, slow = buckets.popleft()
            self.calls -= calls
            self.failures -= failures
            self.slow -= slow

    def add(self, failure: bool, slow: bool, now: float) -> None:
        """Record one call that finished at ``now``."""
        self.expire(now)
        index = int(now // self._width)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < index:
            buckets.append([index, 0, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        self.calls += 1
        if failure:
            bucket[2] += 1
            self.failures += 1
        if slow:
            bucket[3] += 1
            self.slow += 1

    def clear(self) -> None:
        """Forget every call."""
        self._buckets.clear()
        self.calls = self.failures = self.slow = 0


def make_window(policy: Policy) -> Window | None:
    """Return the window a policy needs (None for :class:`Consecutive`)."""
    if isinstance(policy, CountWindow):
        return CountRing(policy)
    if isinstance(policy, TimeWindow):
        return TimeBuckets(policy)
    return None
