"""headrace-core: the loop clock, errors, stats, listeners and backoff shared by headrace.

Public submodules: :mod:`headrace_core.testing` (the virtual clock), :mod:`headrace_core.otel`,
:mod:`headrace_core.backoff`, :mod:`headrace_core.stats` and :mod:`headrace_core.store`.
"""

from headrace_core import backoff as backoff
from headrace_core import stats as stats
from headrace_core import store as store
from headrace_core import testing as testing
from headrace_core._errors import BackoffError as BackoffError
from headrace_core._errors import BulkheadFull as BulkheadFull
from headrace_core._errors import CapacityExceeded as CapacityExceeded
from headrace_core._errors import CircuitOpenError as CircuitOpenError
from headrace_core._errors import CircuitState as CircuitState
from headrace_core._errors import Closed as Closed
from headrace_core._errors import ConfigurationError as ConfigurationError
from headrace_core._errors import GuardTimeout as GuardTimeout
from headrace_core._errors import HeadraceError as HeadraceError
from headrace_core._errors import RateLimited as RateLimited
from headrace_core._errors import Rejected as Rejected
from headrace_core._errors import being_cancelled as being_cancelled
from headrace_core._errors import callable_name as callable_name
from headrace_core._errors import safe_repr as safe_repr
from headrace_core._loop import TIME_TOLERANCE as TIME_TOLERANCE
from headrace_core._loop import LoopBinding as LoopBinding
from headrace_core._loop import PerLoop as PerLoop
from headrace_core._loop import within as within
from headrace_core._stats import loop_time as loop_time
from headrace_core._validate import check_int as check_int
from headrace_core._validate import check_number as check_number
from headrace_core._validate import check_optional_number as check_optional_number
from headrace_core._validate import is_async_callable as is_async_callable
from headrace_core._version import __version__ as __version__

__all__ = [
    "TIME_TOLERANCE",
    "BackoffError",
    "BulkheadFull",
    "CapacityExceeded",
    "CircuitOpenError",
    "CircuitState",
    "Closed",
    "ConfigurationError",
    "GuardTimeout",
    "HeadraceError",
    "LoopBinding",
    "PerLoop",
    "RateLimited",
    "Rejected",
    "being_cancelled",
    "callable_name",
    "check_int",
    "check_number",
    "check_optional_number",
    "is_async_callable",
    "loop_time",
    "safe_repr",
    "within",
]

for _obj in (
    BackoffError,
    BulkheadFull,
    CapacityExceeded,
    CircuitOpenError,
    CircuitState,
    Closed,
    ConfigurationError,
    GuardTimeout,
    HeadraceError,
    LoopBinding,
    PerLoop,
    RateLimited,
    Rejected,
    being_cancelled,
    callable_name,
    check_int,
    check_number,
    check_optional_number,
    is_async_callable,
    safe_repr,
    within,
):
    _obj.__module__ = __name__
del _obj
