"""Backoff schedules for :class:`~headrace_guards.Retry`: the very module ``headrace_core.backoff``.

``import headrace_guards.backoff`` gives the same module object as ``headrace_core.backoff``,
so ``headrace_guards.backoff.full_jitter is headrace_core.backoff.full_jitter``.
"""

import sys

import headrace_core.backoff as _core_backoff
from headrace_core.backoff import Backoff as Backoff
from headrace_core.backoff import decorrelated_jitter as decorrelated_jitter
from headrace_core.backoff import exponential as exponential
from headrace_core.backoff import fixed as fixed
from headrace_core.backoff import full_jitter as full_jitter

__all__ = ["Backoff", "decorrelated_jitter", "exponential", "fixed", "full_jitter"]

# One module, two import paths: the import system returns what sys.modules holds.
sys.modules[__name__] = _core_backoff
