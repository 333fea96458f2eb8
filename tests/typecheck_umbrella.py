"""Checked by mypy only: the umbrella's names are visible to type checkers."""

from typing import assert_type

import headrace
import headrace_coalesce
import headrace_core
import headrace_core.lowlevel
import headrace_flow
import headrace_guards
import headrace_leveled
import headrace_throttle
from headrace_core.testing import VirtualClock

assert_type(headrace.GuardTimeout, type[headrace_core.GuardTimeout])
assert_type(headrace.ConfigurationError("x"), headrace_core.ConfigurationError)
registry: headrace_core.lowlevel.PerLoop[list[int]] = headrace_core.lowlevel.PerLoop(list)
assert_type(registry, headrace_core.lowlevel.PerLoop[list[int]])
assert_type(VirtualClock().now(), float)
assert_type(headrace.CircuitBreaker, type[headrace_guards.CircuitBreaker])
assert_type(headrace.Timeout(1.0), headrace_guards.Timeout)


async def _load(keys: list[int]) -> list[str]:
    return [str(k) for k in keys]


assert_type(headrace.Loader(_load), headrace_coalesce.Loader[int, str])
assert_type(headrace.ProcessorError, type[headrace_leveled.ProcessorError])
assert_type(headrace.FixedScaling(2), headrace_flow.FixedScaling)
assert_type(headrace.Throttle(4), headrace_throttle.Throttle)
assert_type(headrace.CircuitOpenError, type[headrace_core.CircuitOpenError])
