"""Backoff schedules for retries: fixed, exponential, full jitter, decorrelated jitter.

Each schedule is a frozen, validated dataclass whose ``delays(rng=None)`` returns a fresh
infinite iterator of seconds; ``n`` counts from 0 for the first retry.
"""

from headrace_core._backoff import (
    Backoff as Backoff,
)
from headrace_core._backoff import (
    decorrelated_jitter as decorrelated_jitter,
)
from headrace_core._backoff import (
    exponential as exponential,
)
from headrace_core._backoff import (
    fixed as fixed,
)
from headrace_core._backoff import (
    full_jitter as full_jitter,
)
from headrace_core._backoff import (
    next_delay as next_delay,
)

__all__ = ["Backoff", "decorrelated_jitter", "exponential", "fixed", "full_jitter", "next_delay"]

for _obj in (Backoff, decorrelated_jitter, exponential, fixed, full_jitter, next_delay):
    _obj.__module__ = __name__
del _obj
