"""Protocols of shared-state stores: breaker, bulkhead, rate limiter, budget and throttle stores.

``store=None`` on a component means its own in-process state, with no protocol indirection
on the fast path; ``headrace_guards.redis.RedisStore`` implements all five.
"""

from headrace_core._store import BreakerStore as BreakerStore
from headrace_core._store import BudgetStore as BudgetStore
from headrace_core._store import BulkheadStore as BulkheadStore
from headrace_core._store import Outcome as Outcome
from headrace_core._store import RateStore as RateStore
from headrace_core._store import ThrottleStore as ThrottleStore

__all__ = [
    "BreakerStore",
    "BudgetStore",
    "BulkheadStore",
    "Outcome",
    "RateStore",
    "ThrottleStore",
]

for _obj in (BreakerStore, BudgetStore, BulkheadStore, RateStore, ThrottleStore):
    _obj.__module__ = __name__
del _obj
