"""Leases held by this process (bulkhead slots, throttle admissions), renewed while held."""

from __future__ import annotations

import asyncio

from headrace_core.lowlevel import being_cancelled, safe_repr
from headrace_guards._redis_base import DOWN, MALFORMED, Script, logger, text
from headrace_guards._redis_limits import LimitsPart
from headrace_guards._redis_lua import BULKHEAD_RENEW

__all__ = ["RENEW", "LeasePart"]

RENEW = Script(BULKHEAD_RENEW)


class LeasePart(LimitsPart):
    """Renewal of the leases this process holds, by lease zset (a base class of the store).

    A lease lives in a zset scored by its expiry; while held it is renewed every third of
    its TTL, so a crashed holder's lease ends by TTL and a live one's never does.
    """

    __slots__ = ("_held", "_renew_handle", "_renew_loop", "_renew_tasks")

    def _init_leases(self) -> None:
        self._held: dict[str, dict[str, float]] = {}
        self._renew_handle: asyncio.TimerHandle | None = None
        self._renew_loop: asyncio.AbstractEventLoop | None = None
        self._renew_tasks: set[asyncio.Task[None]] = set()

    def _hold(self, key: str, lease_id: str, ttl: float) -> None:
        loop = asyncio.get_running_loop()
        if self._renew_loop is not loop:  # a new loop: the old one's timer is gone
            self._renew_loop, self._renew_handle = loop, None
            self._held.clear()
        self._held.setdefault(key, {})[lease_id] = ttl
        if self._renew_handle is None:
            self._renew_handle = loop.call_later(ttl / 3, self._renew_due)

    def _unhold(self, key: str, lease_id: str) -> None:
        leases = self._held.get(key)
        if leases is not None and leases.pop(lease_id, None) is not None and not leases:
            del self._held[key]
            if not self._held and self._renew_handle is not None:
                self._renew_handle.cancel()
                self._renew_handle = None

    def _renew_due(self) -> None:
        self._renew_handle = None
        if not self._held:
            return
        task = asyncio.get_running_loop().create_task(self._renew_held())
        self._renew_tasks.add(task)
        task.add_done_callback(self._renewed)

    def _renewed(self, task: asyncio.Task[None]) -> None:
        self._renew_tasks.discard(task)
        if self._held and self._renew_handle is None and not task.cancelled():
            ttl = min(min(leases.values()) for leases in self._held.values())
            self._renew_handle = asyncio.get_running_loop().call_later(ttl / 3, self._renew_due)

    async def _renew_held(self) -> None:
        # A background task: nothing it meets may escape into the loop. A failed renewal
        # leaves the leases to their TTL; KeyboardInterrupt/SystemExit (from a client's
        # code) goes to the next caller of the store.
        try:
            await self._renew_all()
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            logger.warning("lease renewal failed: the client raised CancelledError")
        except Exception as exc:
            logger.warning("lease renewal failed: %s", safe_repr(exc))
        except BaseException as exc:
            self._defer(exc)

    async def _renew_all(self) -> None:
        for key, leases in list(self._held.items()):
            if not leases:
                continue
            ttl = min(leases.values())
            reply = await self._run(RENEW, (key,), (ttl, *leases))
            if reply is DOWN:
                continue
            try:
                alive = {text(lease) for lease in reply}
            except MALFORMED:
                raise self._malformed("renew", reply) from None
            for lease in [lease for lease in leases if lease not in alive]:
                if leases.pop(lease, None) is not None:
                    logger.warning("%s: lease %s expired before renewal", key, lease)
            if not leases:
                self._held.pop(key, None)
