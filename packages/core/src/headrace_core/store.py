"""Protocols of shared-state stores: breaker, bulkhead, rate limiter and budget stores.

``store=None`` on a component means its own in-process state, with no protocol indirection
on the fast path; ``headrace_guards.redis.RedisStore`` implements all four.
"""

from headrace_core._store import BreakerStore as BreakerStore
from headrace_core._store import BudgetStore as BudgetStore
from headrace_core._store import BulkheadStore as BulkheadStore
from headrace_core._store import Outcome as Outcome
from headrace_core._store import RateStore as RateStore

__all__ = ["BreakerStore", "BudgetStore", "BulkheadStore", "Outcome", "RateStore"]

for _obj in (BreakerStore, BudgetStore, BulkheadStore, RateStore):
    _obj.__module__ = __name__
del _obj
