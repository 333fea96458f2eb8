"""Errors and the events an error handler receives."""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, final

from headrace_core import Closed, GuardTimeout
from headrace_core.lowlevel import EventLog

__all__ = [
    "DropReason",
    "Dropped",
    "ErrorEvent",
    "FlowClosed",
    "FlowEvent",
    "ScaleEvent",
    "SourceError",
    "StageTimeout",
    "TransformerError",
    "event_logger",
    "events",
    "log_and_continue",
]

logger = logging.getLogger("headrace.flow")
#: The package's event records; a call site tests ``event_logger.isEnabledFor(level)``
#: first, so that disabled logging costs one call.
events: Final = EventLog("headrace.flow")
event_logger: Final = events.logger


if sys.version_info >= (3, 13):

    class FlowClosed(Closed, asyncio.QueueShutDown):
        """The flow is closed, or a push handle was used when it no longer could be.

        Raised by a new run after ``aclose()``, and by a push handle used after
        ``complete()``, after its block, or after the run ended.

        On Python 3.13+ it is also an ``asyncio.QueueShutDown``, what flowrhythm raises
        there for a ``send()`` into a stopped flow.
        """

else:

    class FlowClosed(Closed):
        """The flow is closed, or a push handle was used when it no longer could be.

        Raised by a new run after ``aclose()``, and by a push handle used after
        ``complete()``, after its block, or after the run ended.

        On Python 3.13+ it is also an ``asyncio.QueueShutDown``, what flowrhythm raises
        there for a ``send()`` into a stopped flow.
        """


class StageTimeout(GuardTimeout):
    """A stage's per-item deadline (``stage(..., timeout=)``) expired.

    It is a ``GuardTimeout`` and so also a ``TimeoutError``: ``retry_on=TimeoutError``
    retries it.

    Attributes:
        timeout: the deadline in seconds.
        name: the stage's name.
    """


@final
class DropReason(enum.Enum):
    """Why an item was dropped without an exception."""

    UPSTREAM_TERMINATED = "upstream_terminated"
    """A downstream stage returned ``Last(value)``; upstream items were discarded."""

    ROUTER_MISS = "router_miss"
    """A router's classifier returned a label with no arm and there is no ``default``."""


@final
@dataclass(frozen=True, slots=True)
class TransformerError:
    """A stage raised on an item (or its per-worker context manager failed to enter).

    Attributes:
        item: the item (``None`` when a context manager failed to enter).
        exception: what the stage raised.
        stage: the stage's name.
    """

    item: Any
    exception: BaseException
    stage: str
    at: float = 0.0


@final
@dataclass(frozen=True, slots=True)
class SourceError:
    """The source raised; the flow drains what it already has and ends.

    Attributes:
        exception: what the source raised.
    """

    exception: BaseException
    at: float = 0.0


@final
@dataclass(frozen=True, slots=True)
class Dropped:
    """An item was dropped on purpose (no exception).

    Attributes:
        item: the dropped item.
        stage: the stage that dropped it (``"<source>"`` for the source).
        reason: why.
    """

    item: Any
    stage: str
    reason: DropReason
    at: float = 0.0


@final
@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """A stage's worker target changed (to listeners only).

    Attributes:
        stage: the stage's name.
        before: the previous target.
        after: the new target.
        at: the loop time of the change.
    """

    stage: str
    before: int
    after: int
    at: float = 0.0


ErrorEvent: TypeAlias = TransformerError | SourceError | Dropped
"""What an error handler receives."""

FlowEvent: TypeAlias = ErrorEvent | ScaleEvent
"""What a flow's listeners receive: an ``ErrorEvent`` or a ``ScaleEvent``."""


async def log_and_continue(event: ErrorEvent) -> None:
    """Log the event on the ``headrace.flow`` logger and let the flow continue.

    Pass it as ``on_error=log_and_continue`` for flowrhythm's old default behaviour
    (log and drop) instead of failing fast.

    Args:
        event: the event to log.
    """
    if isinstance(event, TransformerError):
        logger.error(
            "stage %r failed on %r: %s: %s",
            event.stage,
            event.item,
            type(event.exception).__name__,
            event.exception,
        )
    elif isinstance(event, SourceError):
        logger.error("source failed: %s: %s", type(event.exception).__name__, event.exception)
    else:
        logger.info("stage %r dropped %r (%s)", event.stage, event.item, event.reason.value)
