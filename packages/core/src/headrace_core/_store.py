"""Protocols of shared-state stores (in-process state needs none; Redis implements all four).

Every protocol also admits one optional method, which a component looks up with
``getattr`` and calls, when present, at construction::

    def check_name(self, name: str) -> None: ...

It raises :class:`~headrace_core.ConfigurationError` naming ``name`` when this store cannot
use that name as a key (for example an empty or too long name, or characters that would
break its key format), so that a bad name fails where the component is built, not at its
first call. A store without it accepts every name.

:class:`BulkheadStore` also admits an optional keyword parameter of ``acquire``,
``release`` (see there), which a bulkhead finds in the method's signature at construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from headrace_core._errors import CircuitState

#: How one call ended, from the breaker's point of view.
Outcome = Literal["success", "failure", "slow", "slow_failure", "neutral"]


@runtime_checkable
class BreakerStore(Protocol):
    """Shared circuit-breaker state; each method is one atomic state change.

    Optional: ``check_name(name) -> None`` (see :mod:`headrace_core.store`).
    """

    async def admit(
        self, name: str, now: float, **config: Any
    ) -> tuple[bool, int, CircuitState, float]:
        """Admit or reject one call: ``(allowed, generation, state, retry_after)``."""
        ...

    async def record(
        self, name: str, generation: int, outcome: Outcome, duration: float, **config: Any
    ) -> CircuitState:
        """Record the outcome of a call admitted in ``generation``; return the new state."""
        ...

    async def force(self, name: str, state: CircuitState, **config: Any) -> None:
        """Force the breaker into ``state`` (forced open lasts until reset)."""
        ...

    async def reset(self, name: str) -> None:
        """Close the breaker and clear its counters and windows."""
        ...

    async def snapshot(self, name: str) -> Mapping[str, Any]:
        """Return the stored state of the breaker."""
        ...


@runtime_checkable
class BulkheadStore(Protocol):
    """Shared bulkhead slots held as leases with a TTL.

    A lease id names one acquisition: the caller makes a new one for each, and may send
    :meth:`acquire` again with the same id until it succeeds (taking a lease it already
    holds succeeds without taking a second slot). Once released, an id is not acquired
    again (a store may refuse it).

    Optional: ``check_name(name) -> None`` (see :mod:`headrace_core.store`), and a
    keyword parameter ``release`` of :meth:`acquire`::

        async def acquire(
            self, name: str, limit: int, lease_id: str, ttl: float,
            *, release: Sequence[str] = (),
        ) -> bool: ...

    A store whose ``acquire`` has it gives back the lease ids of ``release`` first, as
    :meth:`release` would (idempotent: ids that are not held change nothing), then takes
    the slot, in one step (one round trip, one script for a Redis store). A bulkhead
    finds the parameter in the method's signature when it is built; its callers then
    never wait for a release: the next acquire of the bulkhead on the same event loop
    carries the slot given back, or, when none starts before the loop's next turn, the
    bulkhead sends :meth:`release` in the background (bounded by the lease's TTL). A
    store without the parameter gets :meth:`release`, which the caller awaits. Either
    way a lease whose release never arrives (a crashed process) ends by its TTL.
    """

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        """Take a slot for ``lease_id`` if fewer than ``limit`` live leases are held.

        Returns False, taking nothing, when the slots are taken, or when ``lease_id`` was
        already released (an acquire still in flight when its lease was given up). With
        the optional ``release`` parameter, those ids are given back before the count is
        taken, also when it returns False.
        """
        ...

    async def release(self, name: str, lease_id: str) -> None:
        """Give the slot of ``lease_id`` back; idempotent.

        Releasing a lease that is not held (never acquired, already released, expired, or
        taken by an acquire whose reply was lost) is a no-op, and an acquire of that id
        that arrives later takes nothing. So an acquire whose outcome is unknown (it timed
        out, or its reply was lost) is undone by releasing its lease id.
        """
        ...

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        """Extend the lease of ``lease_id``; False when it had already expired."""
        ...

    async def in_flight(self, name: str) -> int:
        """Return the number of live leases."""
        ...


@runtime_checkable
class RateStore(Protocol):
    """Shared GCRA rate-limiter state.

    Optional: ``check_name(name) -> None`` (see :mod:`headrace_core.store`).
    """

    async def reserve(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> tuple[bool, float]:
        """Reserve ``cost`` tokens: ``(reserved, wait)``.

        ``(True, wait)``: reserved; the caller waits ``wait`` seconds (``>= 0``) before it
        proceeds. ``(False, wait)``: refused, because the wait would pass ``max_wait``;
        nothing is taken, and ``wait`` is the wait that would have been needed (what a
        limiter reports as ``RateLimited.retry_after``). A store that cannot decide (its
        backend is down) answers ``(True, 0.0)`` when it fails open, and refuses with the
        seconds after which asking again makes sense when it fails closed.
        """
        ...

    async def refund(self, name: str, rate: float, per: float, cost: int) -> None:
        """Give back a reservation that was not used."""
        ...


@runtime_checkable
class BudgetStore(Protocol):
    """Shared rolling-window budgets (requests or tokens per window).

    Optional: ``check_name(name) -> None`` (see :mod:`headrace_core.store`).
    """

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        """Reserve ``amount``: ``(granted, retry_after, entry)``.

        ``entry`` identifies a grant (for :meth:`adjust`; None when the store keeps
        none). On a refusal, ``retry_after`` is the seconds from now (relative, not a
        clock reading) until enough of the window has passed for the same request to be
        granted, or None when that is unknown (e.g. ``amount`` is over ``cap``).
        """
        ...

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        """Change the amount recorded for ``entry`` (reconcile an estimate)."""
        ...


@runtime_checkable
class ThrottleStore(Protocol):
    """A shared adaptive throttle: one concurrency limit, its leases, a hold and pacing.

    ``**config`` of every method is the throttle's configuration (``max_concurrency``,
    ``min_concurrency``, ``initial_concurrency``, ``failure_threshold``,
    ``failure_window``, ``decrease_factor``, ``cooling_period``, ``increase_by``,
    ``min_dispatch_interval``). A *view* is a mapping with ``concurrency`` (the shared
    limit), ``in_flight`` (leases held by every process), ``epoch`` (incremented by each
    decrease), ``hold`` (seconds until a hold ends, 0 when none) and ``decreases``; it is
    empty when the store could not be reached.

    Optional: ``check_name(name) -> None`` (see :mod:`headrace_core.store`).
    """

    async def throttle_admit(
        self, name: str, lease_id: str, ttl: float, **config: Any
    ) -> tuple[bool, float | None, Mapping[str, Any]]:
        """Take a lease if the limit, a hold and the pacing allow: ``(admitted, wait, view)``.

        ``wait`` is the seconds until a hold or the pacing allows a dispatch, or None
        when only the end of a running call can.
        """
        ...

    async def throttle_done(
        self, name: str, lease_id: str, outcome: str, epoch: int, **config: Any
    ) -> Mapping[str, Any]:
        """Give the lease back and feed ``outcome`` (``success``/``failure``/``neutral``).

        A failure counts toward a decrease only when ``epoch`` (the admission's) is the
        current one: one congestion event lowers the limit once, across every process.
        """
        ...

    async def throttle_hold(
        self, name: str, seconds: float, epoch: int | None = None, **config: Any
    ) -> Mapping[str, Any]:
        """Hold every dispatch for ``seconds``; decrease once when ``epoch`` is current."""
        ...

    async def throttle_view(self, name: str, **config: Any) -> Mapping[str, Any]:
        """Return the shared state of ``name``."""
        ...
