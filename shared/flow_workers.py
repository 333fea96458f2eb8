"""Functions that flow's process-stage tests and benchmarks send to worker processes.

They live in an importable module: a worker process started with ``spawn`` imports them by
name.
"""

from __future__ import annotations

import os
import time


def double(x: int) -> int:
    """Twice ``x``."""
    return 2 * x


def pid_of(x: int) -> tuple[int, int]:
    """``x`` and the id of the process that saw it."""
    return x, os.getpid()


def fail_on_three(x: int) -> int:
    """``x``, or a ``ValueError`` for 3."""
    if x == 3:
        raise ValueError("three")
    return x


def die_on_three(x: int) -> int:
    """``x``, or the process ends abruptly for 3."""
    if x == 3:
        os._exit(7)
    return x


def sleepy(x: float) -> float:
    """Block for ``x`` seconds (a call that a timeout must end)."""
    time.sleep(x)
    return x


def unpicklable_result(x: int) -> object:
    """A result that cannot be sent back."""
    return lambda: x


def spin(n: int) -> int:
    """About ``n`` microseconds... of pure-Python work: a CPU-bound item."""
    total = 0
    for i in range(n * 20):
        total += i * i % 7
    return total


def misbehave(x: object) -> object:
    """``x``, or for ``("fault", name)`` what :func:`shared.faults.inject` does for it."""
    if isinstance(x, tuple) and len(x) == 2 and x[0] == "fault":
        from shared.faults import Fault, inject

        return inject(Fault(x[1]), wrong="wrong")
    return x
