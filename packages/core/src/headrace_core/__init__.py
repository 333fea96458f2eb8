"""headrace-core: the loop clock, errors, stats, listeners and backoff shared by headrace.

Public submodules: :mod:`headrace_core.testing` (the virtual clock), :mod:`headrace_core.otel`
and :mod:`headrace_core.prometheus` (metrics exports, optional extras),
:mod:`headrace_core.backoff`, :mod:`headrace_core.stats`, :mod:`headrace_core.store` and
:mod:`headrace_core.lowlevel` (plumbing: per-loop state, validators, the loop clock).
"""

from logging import NullHandler as _NullHandler
from logging import getLogger as _getLogger

from headrace_core import backoff as backoff
from headrace_core import lowlevel as lowlevel
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
from headrace_core._errors import ConfigurationTypeError as ConfigurationTypeError
from headrace_core._errors import GuardTimeout as GuardTimeout
from headrace_core._errors import HeadraceError as HeadraceError
from headrace_core._errors import RateLimited as RateLimited
from headrace_core._errors import Rejected as Rejected
from headrace_core._version import __version__ as __version__

__all__ = [
    "BackoffError",
    "BulkheadFull",
    "CapacityExceeded",
    "CircuitOpenError",
    "CircuitState",
    "Closed",
    "ConfigurationError",
    "ConfigurationTypeError",
    "GuardTimeout",
    "HeadraceError",
    "RateLimited",
    "Rejected",
]

for _obj in (
    BackoffError,
    BulkheadFull,
    CapacityExceeded,
    CircuitOpenError,
    CircuitState,
    Closed,
    ConfigurationError,
    ConfigurationTypeError,
    GuardTimeout,
    HeadraceError,
    RateLimited,
    Rejected,
):
    _obj.__module__ = __name__
del _obj

# Every headrace package logs on a child of the "headrace" logger (``headrace.guards``,
# ``headrace.throttle``, ...) and imports this package: one NullHandler on the parent keeps
# them all silent until the application configures logging.
_root = _getLogger("headrace")
if not any(isinstance(handler, _NullHandler) for handler in _root.handlers):
    _root.addHandler(_NullHandler())
del _root, _getLogger, _NullHandler
