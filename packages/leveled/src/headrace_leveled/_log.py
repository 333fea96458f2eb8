"""The package's event records on ``headrace.leveled``."""

from __future__ import annotations

from typing import Final

from headrace_core.lowlevel import EventLog

__all__ = ["event_logger", "events"]

#: A call site tests ``event_logger.isEnabledFor(level)`` first, so that disabled logging
#: costs one call.
events: Final = EventLog("headrace.leveled")
event_logger: Final = events.logger
