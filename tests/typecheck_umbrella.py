"""Checked by mypy only: the umbrella's names are visible to type checkers."""

from typing import assert_type

import headrace
import headrace_core
from headrace_core.testing import VirtualClock

assert_type(headrace.GuardTimeout, type[headrace_core.GuardTimeout])
assert_type(headrace.ConfigurationError("x"), headrace_core.ConfigurationError)
registry: headrace.PerLoop[list[int]] = headrace.PerLoop(list)
assert_type(registry, headrace_core.PerLoop[list[int]])
assert_type(VirtualClock().now(), float)
