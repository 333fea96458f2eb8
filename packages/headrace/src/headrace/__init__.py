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

__all__ = [
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
    "check_int",
    "check_number",
    "check_optional_number",
    "loop_time",
]
