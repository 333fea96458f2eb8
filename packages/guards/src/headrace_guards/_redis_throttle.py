"""The shared adaptive throttle on Redis: one limit, its leases, its hold and its pacing.

Every process that uses a throttle of the same name shares, through one atomic script per
step: the concurrency ceiling (each admission holds a lease, renewed while held, that ends
by TTL when its holder dies), the AIMD limit itself (a congestion event lowers it once, by
the admission-epoch rule, however many processes see it), a server's hint to hold off, and
the pacing between any two dispatches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headrace_core import Rejected
from headrace_core.lowlevel import safe_repr
from headrace_guards._redis_base import DOWN, MALFORMED, Script, text
from headrace_guards._redis_leases import LeasePart
from headrace_guards._redis_lua import THROTTLE_ADMIT, THROTTLE_DONE, THROTTLE_HOLD, THROTTLE_VIEW

__all__ = ["ThrottlePart"]

_ADMIT, _DONE = Script(THROTTLE_ADMIT), Script(THROTTLE_DONE)
_HOLD, _VIEW = Script(THROTTLE_HOLD), Script(THROTTLE_VIEW)
_TH_FIELDS = ("leases", "state", "failures")
_OUTCOMES = frozenset({"success", "failure", "neutral"})
#: The configuration every throttle script reads, in order, with its default.
_CONFIG = (
    ("max_concurrency", 5),
    ("min_concurrency", 1),
    ("initial_concurrency", None),
    ("failure_threshold", 3),
    ("failure_window", 60.0),
    ("decrease_factor", 0.5),
    ("cooling_period", 60.0),
    ("increase_by", 1),
    ("min_dispatch_interval", 0.0),
)


def _view(reply: Any) -> dict[str, Any]:
    """``{limit, in_flight, epoch, hold, decreases}`` as the store's view."""
    return {
        "concurrency": int(reply[0]),
        "in_flight": int(reply[1]),
        "epoch": int(reply[2]),
        "hold": float(text(reply[3])),
        "decreases": int(reply[4]),
    }


class ThrottlePart(LeasePart):
    """``ThrottleStore`` on Redis (a base class of ``RedisStore``).

    ``**config`` of every method is the throttle's: ``max_concurrency``,
    ``min_concurrency``, ``initial_concurrency``, ``failure_threshold``,
    ``failure_window``, ``decrease_factor``, ``cooling_period``, ``increase_by``,
    ``min_dispatch_interval``. The first process to use a name sets the limit to
    ``initial_concurrency`` (default ``max_concurrency``); later changes are shared.
    """

    __slots__ = ()

    def _throttle_args(self, config: Mapping[str, Any]) -> list[Any]:
        values = []
        for key, default in _CONFIG:
            value = config.get(key, default)
            if key == "initial_concurrency" and value is None:
                value = config.get("max_concurrency", 5)
            values.append(repr(float(value)) if isinstance(value, float) else str(value))
        return values

    def _view_of(self, reply: Any, operation: str) -> Mapping[str, Any]:
        """The view in ``reply``: empty when Redis failed; a clear error when malformed."""
        if reply is DOWN:
            return {}
        try:
            return _view(reply)
        except MALFORMED:
            raise self._malformed(operation, reply) from None

    async def throttle_admit(
        self, name: str, lease_id: str, ttl: float, **config: Any
    ) -> tuple[bool, float | None, Mapping[str, Any]]:
        """Take a lease if the shared limit, a hold and the pacing all allow it now.

        Args:
            name: the throttle's name.
            lease_id: a unique id of this admission.
            ttl: the lease's time-to-live (at most the store's ``lease_ttl``); renewed
                while held.
            **config: the throttle's configuration (see the class).

        Returns:
            ``(admitted, wait, view)``: ``wait`` is the seconds until a hold or the pacing
            allows a dispatch, or None when only the end of a running call can (poll);
            ``view`` is the shared state (``concurrency``, ``in_flight``, ``epoch``,
            ``hold`` seconds left, ``decreases``; empty when Redis failed). Failing open,
            a failed Redis admits (``(True, 0.0, {})``).

        Raises:
            Rejected: when Redis failed and the store fails closed.
        """
        keys = self._keys_of("th", name, _TH_FIELDS)
        ttl = min(float(ttl), self.lease_ttl)
        lost = self._take_lost("th", name)
        args = [*self._throttle_args(config), lease_id, repr(ttl), *lost]
        try:
            reply = await self._run(_ADMIT, keys, args)
        except BaseException:
            self._lose("th", name, [*lost, lease_id])
            raise
        if reply is DOWN:
            self._lose("th", name, [*lost, lease_id])  # Redis may have taken it
            if self.fail_open:
                return True, 0.0, {}
            raise Rejected(f"throttle {name!r}: Redis is unreachable", retry_after=1.0, name=name)
        try:
            admitted = bool(int(reply[0]))
            wait = float(text(reply[1]))
            view = _view(reply[2:])
        except MALFORMED:
            self._lose("th", name, [lease_id])
            raise self._malformed("throttle_admit", reply) from None
        if admitted:
            self._hold(keys[0], lease_id, ttl)
        return admitted, (None if wait < 0 else wait), view

    async def throttle_done(
        self, name: str, lease_id: str, outcome: str, epoch: int, **config: Any
    ) -> Mapping[str, Any]:
        """End an admission: give its lease back and feed its outcome to the shared limit.

        A ``"failure"`` of a call admitted in the current epoch counts toward a
        decrease (``failure_threshold`` of them within ``failure_window`` lower the limit
        once, by ``decrease_factor``, and start a new epoch); a ``"success"`` grows it by
        ``increase_by`` once ``cooling_period`` has passed since the last change;
        ``"neutral"`` only gives the lease back.

        Args:
            name: the throttle's name.
            lease_id: the admission's lease id.
            outcome: ``"success"``, ``"failure"`` or ``"neutral"``.
            epoch: the epoch the call was admitted in (from the admission's view).
            **config: the throttle's configuration.

        Returns:
            The shared view after the change (empty when Redis failed: the lease is then
            given back with the next call, or ends by its TTL).

        Raises:
            ValueError: for an unknown ``outcome``.
        """
        if outcome not in _OUTCOMES:
            raise ValueError(
                f"outcome must be 'success', 'failure' or 'neutral', got {safe_repr(outcome)}"
            )
        keys = self._keys_of("th", name, _TH_FIELDS)
        self._unhold(keys[0], lease_id)
        lost = self._take_lost("th", name)
        args = [*self._throttle_args(config), lease_id, outcome, str(int(epoch)), *lost]
        try:
            reply = await self._run(_DONE, keys, args)
        except BaseException:
            self._lose("th", name, [*lost, lease_id])
            raise
        if reply is DOWN:
            self._lose("th", name, [*lost, lease_id])
        return self._view_of(reply, "throttle_done")

    async def throttle_hold(
        self, name: str, seconds: float, epoch: int | None = None, **config: Any
    ) -> Mapping[str, Any]:
        """Hold every process's dispatch for ``seconds`` (server time); decrease once.

        Args:
            name: the throttle's name.
            seconds: how long to hold (``>= 0``; a later end than the current one wins).
            epoch: the epoch of the call that got the hint: a decrease is applied when it
                is the current one (once per congestion event); None applies none.
            **config: the throttle's configuration.

        Returns:
            The shared view after the change (empty when Redis failed).
        """
        keys = self._keys_of("th", name, _TH_FIELDS)
        args = [*self._throttle_args(config), repr(max(0.0, float(seconds)))]
        args.append("-1" if epoch is None else str(int(epoch)))
        reply = await self._run(_HOLD, keys, args)
        return self._view_of(reply, "throttle_hold")

    async def throttle_view(self, name: str, **config: Any) -> Mapping[str, Any]:
        """Return the shared state of ``name`` (empty when Redis failed).

        Args:
            name: the throttle's name.
            **config: the throttle's configuration.

        Returns:
            ``concurrency``, ``in_flight``, ``epoch``, ``hold`` (seconds left) and
            ``decreases``.
        """
        keys = self._keys_of("th", name, _TH_FIELDS)
        reply = await self._run(_VIEW, keys, self._throttle_args(config))
        return self._view_of(reply, "throttle_view")
