"""Drop-in shims for kompoz's concurrency combinators, built on headrace guards.

``from headrace_guards.compat import with_timeout, limited, circuit_breaker, CircuitState``
keeps kompoz's semantics (a ``(False, ctx)`` result counts as a breaker failure; rejections
and timeouts return ``(False, ctx)``). When kompoz is installed, the shims are kompoz async
combinators and compose with its operators (``&``, ``|``, ``~``) and functions.
"""

from headrace_core import CircuitState as CircuitState
from headrace_guards._compat import AsyncCircuitBreaker as AsyncCircuitBreaker
from headrace_guards._compat import AsyncLimited as AsyncLimited
from headrace_guards._compat import AsyncTimeout as AsyncTimeout
from headrace_guards._compat import circuit_breaker as circuit_breaker
from headrace_guards._compat import limited as limited
from headrace_guards._compat import with_timeout as with_timeout

__all__ = [
    "AsyncCircuitBreaker",
    "AsyncLimited",
    "AsyncTimeout",
    "CircuitState",
    "circuit_breaker",
    "limited",
    "with_timeout",
]

for _obj in (
    AsyncCircuitBreaker,
    AsyncLimited,
    AsyncTimeout,
    circuit_breaker,
    limited,
    with_timeout,
):
    _obj.__module__ = __name__
del _obj
