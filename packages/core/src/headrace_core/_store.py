"""Protocols of shared-state stores (in-process state needs none; Redis implements all four)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from headrace_core._errors import CircuitState

#: How one call ended, from the breaker's point of view.
Outcome = Literal["success", "failure", "slow", "slow_failure", "neutral"]


@runtime_checkable
class BreakerStore(Protocol):
    """Shared circuit-breaker state; each method is one atomic state change."""

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
    """Shared bulkhead slots held as leases with a TTL."""

    async def acquire(self, name: str, limit: int, lease_id: str, ttl: float) -> bool:
        """Take a slot for ``lease_id`` if fewer than ``limit`` live leases are held."""
        ...

    async def release(self, name: str, lease_id: str) -> None:
        """Give the slot of ``lease_id`` back."""
        ...

    async def renew(self, name: str, lease_id: str, ttl: float) -> bool:
        """Extend the lease of ``lease_id``; False when it had already expired."""
        ...

    async def in_flight(self, name: str) -> int:
        """Return the number of live leases."""
        ...


@runtime_checkable
class RateStore(Protocol):
    """Shared GCRA rate-limiter state."""

    async def reserve(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> float | None:
        """Reserve ``cost``: the seconds to wait, or None (over ``max_wait``: nothing taken)."""
        ...

    async def refund(self, name: str, rate: float, per: float, cost: int) -> None:
        """Give back a reservation that was not used."""
        ...


@runtime_checkable
class BudgetStore(Protocol):
    """Shared rolling-window budgets (requests or tokens per window)."""

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        """Reserve ``amount``: ``(granted, retry_at, entry)``; ``entry`` identifies the grant."""
        ...

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        """Change the amount recorded for ``entry`` (reconcile an estimate)."""
        ...
