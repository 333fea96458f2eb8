"""Progress: finished calls counted against an expected total, with a throughput-based ETA.

``rate`` is finished calls per second since the first admission, so the ETA
(``remaining / rate``) reflects the concurrency actually reached, not a mean duration.
Failures count as finished; cancellations do not count at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import final

from headrace_core.stats import Listeners
from headrace_throttle._types import ThrottleSnapshot

__all__ = ["Progress"]


@final
class Progress:
    """Counts a throttle's finished calls and reports each ``step`` percent crossed.

    Args:
        total: the expected number of calls, or None.
        step: percent between two reports, in ``(0, 100]``.
        on_progress: called with a snapshot at each report (a user's listener).
    """

    __slots__ = ("_milestone", "_step", "completed", "failed", "listeners", "reporting", "total")

    def __init__(
        self,
        total: int | None,
        step: float,
        on_progress: Callable[[ThrottleSnapshot], object] | None,
    ) -> None:
        #: Calls that returned.
        self.completed = 0
        #: Calls that raised a failure.
        self.failed = 0
        self.total = total
        self._step = float(step)
        self._milestone = 0
        self.listeners: Listeners[ThrottleSnapshot] = Listeners("headrace.throttle", "on_progress")
        if on_progress is not None:
            self.listeners.add(on_progress)
        #: Whether finishing a call may report (a total and a listener are set).
        self.reporting = total is not None and on_progress is not None

    def tick(self, snapshot: Callable[[], ThrottleSnapshot]) -> None:
        """Report ``snapshot()`` if the latest finished call crossed a step (in the caller).

        A sync listener's ``KeyboardInterrupt`` reaches the caller; other errors are logged.
        """
        total = self.total
        if not self.reporting or not total:
            return
        finished = self.completed + self.failed
        crossed = math.floor(100.0 * finished / total / self._step + 1e-9)
        if crossed > self._milestone:
            self._milestone = crossed
            self.listeners.emit(snapshot())

    def figures(
        self, now: float, first_admit: float | None
    ) -> tuple[float, float | None, float | None]:
        """``(rate, percentage, eta_seconds)`` at ``now``.

        Args:
            now: the loop time.
            first_admit: the loop time of the first admission, or None.
        """
        finished = self.completed + self.failed
        elapsed = now - first_admit if first_admit is not None else 0.0
        rate = finished / elapsed if elapsed > 0 else 0.0
        total = self.total
        if total is None:
            return rate, None, None
        percentage = min(100.0, 100.0 * finished / total) if total else 100.0
        eta = 0.0 if finished >= total else (total - finished) / rate if rate > 0 else None
        return rate, percentage, eta
