"""headrace-throttle: an adaptive throttle that backs off, recovers, paces and budgets.

``Throttle`` keeps concurrency under an AIMD (or latency-based :class:`Gradient` or
:class:`Vegas`) limit,
admits calls in strict FIFO order through optional pacing and rolling request and token
budgets, honours server hints (:class:`ServerBusy`, ``retry_after=``), composes
``headrace_guards``' retry and circuit breaker, and reports progress and ETA.
"""

from headrace_core import CircuitOpenError as CircuitOpenError
from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import HeadraceError as HeadraceError
from headrace_throttle._budget import RequestBudget as RequestBudget
from headrace_throttle._budget import TokenBudget as TokenBudget
from headrace_throttle._compat import CircuitBreakerConfig as CircuitBreakerConfig
from headrace_throttle._compat import RetryConfig as RetryConfig
from headrace_throttle._config import ThrottleConfig as ThrottleConfig
from headrace_throttle._errors import ServerBusy as ServerBusy
from headrace_throttle._errors import ThrottleClosed as ThrottleClosed
from headrace_throttle._errors import TokenBudgetExceeded as TokenBudgetExceeded
from headrace_throttle._limit import AIMD as AIMD
from headrace_throttle._limit import Gradient as Gradient
from headrace_throttle._limit import Limit as Limit
from headrace_throttle._throttle import Throttle as Throttle
from headrace_throttle._types import SharedSnapshot as SharedSnapshot
from headrace_throttle._types import Slot as Slot
from headrace_throttle._types import ThrottleEvent as ThrottleEvent
from headrace_throttle._types import ThrottleSnapshot as ThrottleSnapshot
from headrace_throttle._types import ThrottleState as ThrottleState
from headrace_throttle._vegas import Vegas as Vegas
from headrace_throttle._version import __version__ as __version__

__all__ = [
    "AIMD",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "ConfigurationError",
    "Gradient",
    "HeadraceError",
    "Limit",
    "RequestBudget",
    "RetryConfig",
    "ServerBusy",
    "SharedSnapshot",
    "Slot",
    "Throttle",
    "ThrottleClosed",
    "ThrottleConfig",
    "ThrottleEvent",
    "ThrottleSnapshot",
    "ThrottleState",
    "TokenBudget",
    "TokenBudgetExceeded",
    "Vegas",
]

for _obj in (
    AIMD,
    CircuitBreakerConfig,
    Gradient,
    Limit,
    RequestBudget,
    RetryConfig,
    ServerBusy,
    SharedSnapshot,
    Slot,
    Throttle,
    ThrottleClosed,
    ThrottleConfig,
    ThrottleEvent,
    ThrottleSnapshot,
    ThrottleState,
    TokenBudget,
    TokenBudgetExceeded,
    Vegas,
):
    _obj.__module__ = __name__
del _obj
