"""headrace: the family of small, fast, fully typed asyncio concurrency libraries.

This umbrella re-exports every public name of headrace-core, headrace-guards,
headrace-coalesce, headrace-leveled, headrace-flow and headrace-throttle, as the same
objects. ``python -m headrace`` runs a live tour of the family.

This file is written by ``scripts/sync_umbrella.py``; do not edit it by hand.
"""

from headrace._version import __version__ as __version__
from headrace_core import BulkheadFull as BulkheadFull
from headrace_core import CapacityExceeded as CapacityExceeded
from headrace_core import CircuitOpenError as CircuitOpenError
from headrace_core import CircuitState as CircuitState
from headrace_core import Closed as Closed
from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import GuardTimeout as GuardTimeout
from headrace_core import HeadraceError as HeadraceError
from headrace_core import LoopBinding as LoopBinding
from headrace_core import PerLoop as PerLoop
from headrace_core import RateLimited as RateLimited
from headrace_core import Rejected as Rejected
from headrace_core import check_int as check_int
from headrace_core import check_number as check_number
from headrace_core import check_optional_number as check_optional_number
from headrace_core import loop_time as loop_time
from headrace_guards import BreakerSnapshot as BreakerSnapshot
from headrace_guards import Bulkhead as Bulkhead
from headrace_guards import BulkheadSnapshot as BulkheadSnapshot
from headrace_guards import CircuitBreaker as CircuitBreaker
from headrace_guards import Consecutive as Consecutive
from headrace_guards import CountWindow as CountWindow
from headrace_guards import Fallback as Fallback
from headrace_guards import FallbackSnapshot as FallbackSnapshot
from headrace_guards import GuardEvent as GuardEvent
from headrace_guards import Hedge as Hedge
from headrace_guards import HedgeSnapshot as HedgeSnapshot
from headrace_guards import Pipeline as Pipeline
from headrace_guards import PipelineSnapshot as PipelineSnapshot
from headrace_guards import RateLimiter as RateLimiter
from headrace_guards import RateLimiterSnapshot as RateLimiterSnapshot
from headrace_guards import Retry as Retry
from headrace_guards import RetrySnapshot as RetrySnapshot
from headrace_guards import Timeout as Timeout
from headrace_guards import TimeoutSnapshot as TimeoutSnapshot
from headrace_guards import TimeWindow as TimeWindow
from headrace_guards import pipeline as pipeline

__all__ = [
    "BreakerSnapshot",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSnapshot",
    "CapacityExceeded",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Closed",
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
    "LoopBinding",
    "PerLoop",
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
    "check_int",
    "check_number",
    "check_optional_number",
    "loop_time",
    "pipeline",
]
