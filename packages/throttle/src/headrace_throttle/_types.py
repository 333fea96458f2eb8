"""The throttle's value types: state, events, snapshots and the per-call slot."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, final

from headrace_core.lowlevel import EventLog, safe_repr
from headrace_core.stats import Listeners

__all__ = [
    "Events",
    "SharedSnapshot",
    "Slot",
    "ThrottleEvent",
    "ThrottleSnapshot",
    "ThrottleState",
    "check_count",
]

#: The throttle's event records on ``headrace.throttle``; a call site tests
#: ``event_logger.isEnabledFor(level)`` first, so that disabled logging costs one call.
event_log = EventLog("headrace.throttle")
event_logger = event_log.logger

_LEGACY_KINDS = {
    "decreased": "decelerated",
    "increased": "reaccelerated",
}


@final
@dataclass(frozen=True, slots=True)
class SharedSnapshot:
    """What the store said last of a throttle shared between processes.

    Attributes:
        concurrency: the shared limit.
        in_flight: the calls running in every process (leases held).
        hold_until: the loop time (this process's) until which a server's hint holds
            every process, or None.
        epoch: the shared epoch (one per decrease).
        decreases: the shared decreases so far.
    """

    concurrency: int
    in_flight: int
    hold_until: float | None
    epoch: int
    decreases: int


@final
class ThrottleState(enum.Enum):
    """What a throttle is doing; :attr:`ThrottleSnapshot.state` is the first that applies.

    ``CLOSED`` (closed, nothing in flight), ``DRAINING`` (closed, calls in flight),
    ``CIRCUIT_OPEN`` (the composed breaker is open), ``PAUSED`` (a server hint or
    ``hold()`` pauses dispatch), ``COOLING`` (concurrency below the maximum, or, when
    the floor is also the ceiling, after a congestion event until a success
    ``cooling_period`` later), else ``RUNNING``.
    """

    RUNNING = "running"
    COOLING = "cooling"
    PAUSED = "paused"
    CIRCUIT_OPEN = "circuit_open"
    DRAINING = "draining"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


@final
@dataclass(frozen=True, slots=True, init=False)
class ThrottleEvent:
    """One thing that happened to a throttle, delivered to its listeners.

    Kinds: ``decreased`` / ``increased`` (``data``: ``concurrency`` and
    ``dispatch_interval``, each ``(old, new)``, and ``reason``), ``paused`` (``until``,
    ``reason``), ``resumed``, ``closed``, ``drained`` and ``retry`` (``attempt``,
    ``delay``, ``error``).

    Args:
        kind: what happened.
        at: the loop time of the event (``timestamp=`` is accepted as gentlify's name).
        data: details, by kind.
        name: the throttle's name, if it has one.
        timestamp: an alias of ``at``.

    Attributes:
        kind: what happened.
        at: the loop time of the event.
        data: details, by kind.
        name: the throttle's name, if it has one.
    """

    kind: str
    at: float
    data: Mapping[str, Any]
    name: str | None

    def __init__(
        self,
        kind: str,
        at: float | None = None,
        data: Mapping[str, Any] | None = None,
        name: str | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        if at is None:
            if timestamp is None:
                raise TypeError("ThrottleEvent needs at= (or timestamp=)")
            at = timestamp
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "data", {} if data is None else data)
        object.__setattr__(self, "name", name)

    @property
    def timestamp(self) -> float:
        """The loop time of the event (the same value as :attr:`at`)."""
        return self.at

    @property
    def kind_legacy(self) -> str:
        """The event's kind in gentlify's words (``decelerated``, ``reaccelerated``, ...)."""
        return _LEGACY_KINDS.get(self.kind, self.kind)


@final
class Events:
    """A throttle's listeners, and the one way its parts tell them what happened.

    Args:
        name: the throttle's name, carried by every event.
    """

    __slots__ = ("listeners", "name", "owner")

    def __init__(self, name: str | None) -> None:
        self.name = name
        #: The throttle, as log messages name it.
        self.owner = f"throttle {name!r}" if name else "throttle"
        self.listeners: Listeners[ThrottleEvent] = Listeners("headrace.throttle", self.owner)

    def emit(self, kind: str, data: dict[str, Any], at: float) -> None:
        """Tell every listener (isolated: a failing one is logged, see core's ``Listeners``)."""
        if self.listeners:
            self.listeners.emit(ThrottleEvent(kind, at, data, self.name))

    def log(self, level: int, event: str, message: str, *args: object, **fields: Any) -> None:
        """Log one event of this throttle on ``headrace.throttle`` (rate-limited per event).

        The caller tests ``event_logger.isEnabledFor(level)`` first.
        """
        event_log.log(
            level, message, *args, kind="Throttle", component=self.name, event=event, **fields
        )


@final
@dataclass(frozen=True, slots=True)
class ThrottleSnapshot:
    """A frozen view of a throttle, taken without awaiting.

    Attributes:
        concurrency: the current concurrency limit.
        max_concurrency: the ceiling the limit recovers to.
        in_flight: calls admitted and not yet finished.
        waiting: calls queued for admission.
        dispatch_interval: the current minimum gap between starts, in seconds.
        state: see :class:`ThrottleState`.
        tokens_used: tokens charged in the token budget's window (None without one).
        tokens_remaining: tokens still available in that window (None without one).
        completed: calls that returned.
        failed: calls that raised (cancellations excluded).
        total: the expected number of calls, or None.
        percentage: ``100 * (completed + failed) / total``, or None without a total.
        rate: finished calls per second since the first admission.
        eta_seconds: seconds until ``total`` calls finish at that rate (0.0 when done),
            or None when unknown.
        paused_until: loop time until which dispatch is paused, or None.
        epoch: the number of decreases so far (the admission-epoch counter).
        name: the throttle's name.
        shared: what the store said last of the limit every process shares (None
            without ``store=``, or before the first reply).
    """

    concurrency: int
    max_concurrency: int
    in_flight: int
    waiting: int
    dispatch_interval: float
    state: ThrottleState
    tokens_used: int | None
    tokens_remaining: int | None
    completed: int
    failed: int
    total: int | None
    percentage: float | None
    rate: float
    eta_seconds: float | None
    paused_until: float | None
    epoch: int = 0
    name: str | None = None
    shared: SharedSnapshot | None = None

    @property
    def completed_tasks(self) -> int:
        """Finished calls, succeeded or failed (gentlify's name)."""
        return self.completed + self.failed

    @property
    def total_tasks(self) -> int:
        """The expected number of calls, 0 when unknown (gentlify's name)."""
        return self.total or 0


@final
class Slot:
    """The handle a throttled call receives: its attempt number and its token count.

    Attributes:
        attempt: 0 for the first try, growing by 1 per retry (use it in idempotency keys).
        tokens: the estimate reserved at admission (the ``tokens=`` argument).
    """

    __slots__ = (
        "_charges",
        "_epoch",
        "_grants",
        "_hinted",
        "_lease",
        "_ran",
        "_recorded",
        "_shared_epoch",
        "_start",
        "_turn",
        "attempt",
        "tokens",
    )

    def __init__(self, tokens: int = 0) -> None:
        self.attempt = 0
        self.tokens = tokens
        self._recorded: int | None = None
        # Set as the call goes (not here: the fast path builds one slot per call).
        # ``_epoch`` and ``_start`` when the throttle admits the call; ``_charges`` when
        # in-memory budgets charge it (only they read it, and only on calls they
        # charged); ``_grants`` (shared-budget grants) and ``_ran`` (whether the function
        # was called: a breaker may refuse it) by the full admission (``acquire()``,
        # shared budgets); ``_turn`` (the future of its turn) when it queues; ``_lease``,
        # ``_shared_epoch`` and ``_hinted`` by a throttle whose limit is shared.
        self._epoch: int
        self._start: float
        self._charges: list[Any] | None
        self._grants: list[Any] | None
        self._ran: bool
        self._turn: asyncio.Future[None]
        self._lease: str | None
        self._shared_epoch: int
        self._hinted: bool

    def record_tokens(self, count: int) -> None:
        """Report tokens this call consumed; the total replaces the estimate when it ends.

        Calls add up (call it once per response, or once with the total). Tokens
        recorded by a call that fails still count.

        Args:
            count: tokens consumed, an int ``>= 0``.

        Raises:
            ValueError: when ``count`` is not an int ``>= 0``.
        """
        if type(count) is not int or count < 0:
            check_count("count", count)  # raises
        recorded = self._recorded
        self._recorded = count if recorded is None else recorded + count

    @property
    def tokens_recorded(self) -> int:
        """Tokens reported with :meth:`record_tokens` so far."""
        return self._recorded or 0

    @property
    def tokens_reported(self) -> int:
        """Alias of :attr:`tokens_recorded` (gentlify's name)."""
        return self._recorded or 0

    def __repr__(self) -> str:
        return f"Slot(attempt={self.attempt}, tokens={self.tokens}, recorded={self._recorded})"


def check_count(argument: str, count: object) -> None:
    """Refuse a token count that is not an int ``>= 0`` (a call-time ``ValueError``)."""
    if type(count) is not int or count < 0:
        raise ValueError(f"{argument}={safe_repr(count)}: must be an int >= 0")
