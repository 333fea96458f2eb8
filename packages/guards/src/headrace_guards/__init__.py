"""headrace-guards: timeout, bulkhead, circuit breaker, retry, rate limiter, fallback and hedge.

Every guard works on any async callable, three ways: ``await guard.call(fn, *args)``,
as a decorator, and (``Timeout``, ``Bulkhead``, ``CircuitBreaker``, ``RateLimiter``) as
``async with guard:``. ``pipeline(*guards)`` composes them, the first guard outermost.

Public submodules: :mod:`headrace_guards.backoff` (the same module as
``headrace_core.backoff``) and :mod:`headrace_guards.compat` (kompoz shims).
"""

from headrace_core import BulkheadFull as BulkheadFull
from headrace_core import CapacityExceeded as CapacityExceeded
from headrace_core import CircuitOpenError as CircuitOpenError
from headrace_core import CircuitState as CircuitState
from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import GuardTimeout as GuardTimeout
from headrace_core import HeadraceError as HeadraceError
from headrace_core import RateLimited as RateLimited
from headrace_core import Rejected as Rejected
from headrace_guards import backoff as backoff
from headrace_guards._bulkhead import Bulkhead as Bulkhead
from headrace_guards._bulkhead import BulkheadSnapshot as BulkheadSnapshot
from headrace_guards._circuit import BreakerSnapshot as BreakerSnapshot
from headrace_guards._circuit import CircuitBreaker as CircuitBreaker
from headrace_guards._common import GuardEvent as GuardEvent
from headrace_guards._fallback import Fallback as Fallback
from headrace_guards._fallback import FallbackSnapshot as FallbackSnapshot
from headrace_guards._hedge import Hedge as Hedge
from headrace_guards._hedge import HedgeSnapshot as HedgeSnapshot
from headrace_guards._pipeline import Pipeline as Pipeline
from headrace_guards._pipeline import PipelineSnapshot as PipelineSnapshot
from headrace_guards._pipeline import pipeline as pipeline
from headrace_guards._policies import Consecutive as Consecutive
from headrace_guards._policies import CountWindow as CountWindow
from headrace_guards._policies import TimeWindow as TimeWindow
from headrace_guards._rate import RateLimiter as RateLimiter
from headrace_guards._rate import RateLimiterSnapshot as RateLimiterSnapshot
from headrace_guards._retry import Retry as Retry
from headrace_guards._retry import RetrySnapshot as RetrySnapshot
from headrace_guards._timeout import Timeout as Timeout
from headrace_guards._timeout import TimeoutSnapshot as TimeoutSnapshot
from headrace_guards._version import __version__ as __version__

__all__ = [
    "BreakerSnapshot",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSnapshot",
    "CapacityExceeded",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "Consecutive",
    "CountWindow",
    "Fallback",
    "FallbackSnapshot",
    "GuardEvent",
    "GuardTimeout",
    "HeadraceError",
    "Hedge",
    "HedgeSnapshot",
    "Pipeline",
    "PipelineSnapshot",
    "RateLimited",
    "RateLimiter",
    "RateLimiterSnapshot",
    "Rejected",
    "Retry",
    "RetrySnapshot",
    "TimeWindow",
    "Timeout",
    "TimeoutSnapshot",
    "pipeline",
]

for _obj in (
    BreakerSnapshot,
    Bulkhead,
    BulkheadSnapshot,
    CircuitBreaker,
    Consecutive,
    CountWindow,
    Fallback,
    FallbackSnapshot,
    GuardEvent,
    Hedge,
    HedgeSnapshot,
    Pipeline,
    PipelineSnapshot,
    RateLimiter,
    RateLimiterSnapshot,
    Retry,
    RetrySnapshot,
    TimeWindow,
    Timeout,
    TimeoutSnapshot,
    pipeline,
):
    _obj.__module__ = __name__
del _obj
