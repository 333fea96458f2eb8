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
from headrace_throttle import AIMD as AIMD
from headrace_throttle import CircuitBreakerConfig as CircuitBreakerConfig
from headrace_throttle import Gradient as Gradient
from headrace_throttle import Limit as Limit
from headrace_throttle import RequestBudget as RequestBudget
from headrace_throttle import RetryConfig as RetryConfig
from headrace_throttle import ServerBusy as ServerBusy
from headrace_throttle import Slot as Slot
from headrace_throttle import Throttle as Throttle
from headrace_throttle import ThrottleClosed as ThrottleClosed
from headrace_throttle import ThrottleConfig as ThrottleConfig
from headrace_throttle import ThrottleEvent as ThrottleEvent
from headrace_throttle import ThrottleSnapshot as ThrottleSnapshot
from headrace_throttle import ThrottleState as ThrottleState
from headrace_throttle import TokenBudget as TokenBudget
from headrace_throttle import TokenBudgetExceeded as TokenBudgetExceeded
from headrace_throttle import Vegas as Vegas

__all__ = [
    "AIMD",
    "BreakerSnapshot",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSnapshot",
    "CapacityExceeded",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Closed",
    "ConfigurationError",
    "Consecutive",
    "CountWindow",
    "Fallback",
    "FallbackSnapshot",
    "Gradient",
    "GuardEvent",
    "GuardTimeout",
    "HeadraceError",
    "Hedge",
    "HedgeSnapshot",
    "Limit",
    "LoopBinding",
    "PerLoop",
    "Pipeline",
    "PipelineSnapshot",
    "RateLimited",
    "RateLimiter",
    "RateLimiterSnapshot",
    "Rejected",
    "RequestBudget",
    "Retry",
    "RetryConfig",
    "RetrySnapshot",
    "ServerBusy",
    "Slot",
    "Throttle",
    "ThrottleClosed",
    "ThrottleConfig",
    "ThrottleEvent",
    "ThrottleSnapshot",
    "ThrottleState",
    "TimeWindow",
    "Timeout",
    "TimeoutSnapshot",
    "TokenBudget",
    "TokenBudgetExceeded",
    "Vegas",
    "check_int",
    "check_number",
    "check_optional_number",
    "loop_time",
    "pipeline",
]
