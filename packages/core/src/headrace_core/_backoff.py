"""Backoff schedules: frozen, validated, each an infinite iterator of delays."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from headrace_core._errors import BackoffError, safe_repr
from headrace_core._validate import check_number


@runtime_checkable
class Backoff(Protocol):
    """A backoff schedule: ``delays()`` returns a fresh infinite iterator of seconds."""

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Return a new infinite iterator of delays in seconds (one per retry)."""
        ...


def next_delay(
    delays: Iterator[float], *, owner: str = "backoff", cause: BaseException | None = None
) -> float:
    """Return the next delay of a schedule, or raise :class:`BackoffError` saying what is wrong.

    Use it wherever a retry asks a (possibly user-written) schedule for its next delay: a
    schedule that runs out, or yields a value that is not a finite number ``>= 0`` (``None``,
    a string, NaN, a negative number), fails with a message naming ``owner``, instead of
    ``StopIteration`` escaping into a coroutine. An exception the schedule raises itself
    propagates unchanged.

    Args:
        delays: the iterator returned by the schedule's ``delays()``.
        owner: what the schedule belongs to, for the message (e.g. ``"Retry(backoff=...)"``).
        cause: the error that caused this retry, chained as ``__cause__``.

    Raises:
        BackoffError: the schedule ran out or yielded a bad value.
    """
    try:
        delay: object = next(delays)
    except StopIteration:
        raise BackoffError(
            f"{owner}: the backoff schedule ran out of delays; delays() must yield a delay "
            "for every retry (an endless iterator)"
        ) from cause
    except BackoffError as exc:  # a schedule refused what its rng drew
        raise BackoffError(f"{owner}: the backoff schedule failed: {exc}") from cause
    value = _real(delay)
    if not math.isfinite(value) or value < 0:  # (nan too)
        raise BackoffError(
            f"{owner}: the backoff schedule yielded {safe_repr(delay)}; each delay must be a "
            "finite number >= 0"
        ) from cause
    return value


def _real(value: object) -> float:
    """``value`` as a float when it is an int or a float (not a bool), else nan.

    An int too large for a float is ``inf`` (not finite), never an ``OverflowError``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _draw(value: object) -> float:
    """One draw of the schedule's rng, refused (``BackoffError``) unless a finite number."""
    real = _real(value)
    if not math.isfinite(real):
        raise BackoffError(f"its rng drew {safe_repr(value)}, not a finite number")
    return real


def _check_growth(base: float, factor: float, max: float, *, base_gt_zero: bool) -> None:
    if base_gt_zero:
        check_number("base", base, gt=0)
    else:
        check_number("base", base, ge=0)
    check_number("factor", factor, ge=1)
    check_number("max", max, ge=0, finite=False)
    if max < base:
        check_number("max", max, ge=base, finite=False)


@dataclass(frozen=True, slots=True)
class fixed:
    """The same delay every time: ``delay, delay, ...``.

    Args:
        delay: seconds between attempts, ``>= 0``.
    """

    delay: float = 1.0

    def __post_init__(self) -> None:
        check_number("delay", self.delay, ge=0)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Return an infinite iterator of ``delay``."""
        delay = float(self.delay)
        while True:
            yield delay


@dataclass(frozen=True, slots=True)
class exponential:
    """Exponential growth with a cap: ``min(max, base * factor**n)`` for n = 0, 1, 2, ...

    Args:
        base: the first delay, ``>= 0``.
        factor: the growth per retry, ``>= 1``.
        max: the cap, ``>= base`` (may be ``inf``).
        jitter: in ``[0, 1]``; each delay is multiplied by ``uniform(1 - jitter, 1)``
            (``0.5`` gives sdax's ``delay * uniform(0.5, 1)``; ``0`` is deterministic).
    """

    base: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        _check_growth(self.base, self.factor, self.max, base_gt_zero=False)
        check_number("jitter", self.jitter, ge=0, le=1)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Return an infinite iterator of capped exponential delays."""
        uniform = (rng or random).uniform
        cap, factor, jitter = float(self.max), float(self.factor), float(self.jitter)
        current = float(self.base)
        while True:
            delay = min(cap, current)
            yield delay * _draw(uniform(1.0 - jitter, 1.0)) if jitter else delay
            if current < cap:
                current *= factor


@dataclass(frozen=True, slots=True)
class full_jitter:
    """Exponential with full jitter: ``uniform(0, min(max, base * factor**n))``.

    Args:
        base: the first cap, ``>= 0``.
        factor: the growth per retry, ``>= 1``.
        max: the cap, ``>= base``.
    """

    base: float = 0.1
    factor: float = 2.0
    max: float = 30.0

    def __post_init__(self) -> None:
        _check_growth(self.base, self.factor, self.max, base_gt_zero=False)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Return an infinite iterator of fully jittered delays."""
        uniform = (rng or random).uniform
        cap, factor = float(self.max), float(self.factor)
        current = float(self.base)
        while True:
            yield _draw(uniform(0.0, min(cap, current)))
            if current < cap:
                current *= factor


@dataclass(frozen=True, slots=True)
class decorrelated_jitter:
    """Decorrelated jitter: ``min(max, uniform(base, previous * 3))``, previous starting at base.

    Args:
        base: the smallest delay, ``> 0``.
        max: the cap, ``>= base``.
    """

    base: float = 0.1
    max: float = 30.0

    def __post_init__(self) -> None:
        _check_growth(self.base, 1.0, self.max, base_gt_zero=True)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Return an infinite iterator of decorrelated delays."""
        uniform = (rng or random).uniform
        base, cap = float(self.base), float(self.max)
        previous = base
        while True:
            previous = min(cap, _draw(uniform(base, previous * 3.0)))  # (min() hides nan)
            yield previous
