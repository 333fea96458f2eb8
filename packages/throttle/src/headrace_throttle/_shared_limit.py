"""One adaptive limit shared by every process through a :class:`~headrace_core.store.ThrottleStore`.

With ``store=``, a call takes a lease in the store before it takes a local slot: the store
admits it while the processes' leases are under the shared limit, no hold is in place and
the pacing allows a dispatch (one round trip). Its outcome goes back to the store when it
ends (one round trip, sent without making the call wait): the store applies AIMD once per
congestion event across all processes (the admission-epoch rule, in one script), and a
server's hint holds every process until the hinted instant. The local limit follows the
shared one, so this process's listeners hear the shared changes as ``decreased`` and
``increased`` events (reason ``"shared"``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, final

from headrace_core import HeadraceError
from headrace_core.lowlevel import being_cancelled, finish_tasks, safe_repr
from headrace_core.store import ThrottleStore
from headrace_throttle._shared import StoreReplyError, send_task
from headrace_throttle._types import SharedSnapshot

__all__ = ["SharedLimit"]

_log = logging.getLogger("headrace.throttle")

# A call refused because the shared limit is full polls the store again after this wait,
# doubled up to _POLL_MAX while it stays refused.
_POLL_FIRST = 0.005
_POLL_MAX = 0.25
# The lease's time-to-live asked of the store (at most its lease_ttl; renewed while held).
_LEASE_TTL = 30.0


@final
class SharedLimit:
    """The shared side of one throttle: leases, outcomes and hints, through its store.

    Args:
        store: the shared state.
        name: the throttle's name (the store's key).
        config: the throttle's AIMD and pacing settings, sent with every store call.
        follow: called with the shared limit after each reply that changes it.
    """

    __slots__ = ("_config", "_follow", "_interrupt", "_name", "_store", "_tasks", "view")

    def __init__(
        self,
        store: ThrottleStore,
        name: str,
        config: Mapping[str, Any],
        follow: Callable[[int], None],
    ) -> None:
        self._store = store
        self._name = name
        self._config = dict(config)
        self._follow = follow
        self._tasks: set[asyncio.Task[None]] = set()
        self.view: SharedSnapshot | None = None
        # a KeyboardInterrupt/SystemExit a store call sent without waiting raised, kept
        # for the next admission or drain()
        self._interrupt: BaseException | None = None

    def snapshot(self) -> SharedSnapshot | None:
        """The last view of the shared state (None before the first reply)."""
        return self.view

    def _learn(self, reply: Mapping[str, Any]) -> None:
        if not reply:
            return  # the store could not be reached: nothing learned
        loop = asyncio.get_running_loop()
        hold = float(reply.get("hold", 0.0))
        old = self.view
        view = self.view = SharedSnapshot(
            concurrency=int(reply["concurrency"]),
            in_flight=int(reply["in_flight"]),
            hold_until=loop.time() + hold if hold > 0 else None,
            epoch=int(reply["epoch"]),
            decreases=int(reply.get("decreases", 0)),
        )
        if old is None or old.concurrency != view.concurrency:
            self._follow(view.concurrency)

    async def admit(self, closed: Callable[[], bool]) -> tuple[str, int] | None:
        """Wait for a lease: ``(lease id, the shared epoch it was admitted in)``.

        Returns None, holding nothing, as soon as ``closed()`` says the throttle was
        closed while the call waited.

        Raises:
            Rejected: when the store cannot be reached and fails closed.
        """
        self.raise_interrupt()
        lease = uuid.uuid4().hex
        poll = _POLL_FIRST
        while True:
            try:
                answer = await self._store.throttle_admit(
                    self._name, lease, _LEASE_TTL, **self._config
                )
            except asyncio.CancelledError as exc:
                if being_cancelled():
                    raise
                raise HeadraceError(
                    f"throttle {self._name!r}: the store raised CancelledError by itself"
                ) from exc
            admitted, wait, reply = self._checked(answer)
            if admitted:
                return lease, int(reply.get("epoch", -1)) if reply else -1
            if closed():
                return None
            if wait is None:
                await asyncio.sleep(poll)
                poll = min(poll * 2, _POLL_MAX)
            else:
                await asyncio.sleep(max(float(wait), _POLL_FIRST))
                poll = _POLL_FIRST

    def _checked(self, answer: object) -> tuple[bool, float | None, Mapping[str, Any]]:
        """``(admitted, wait, view)`` from a store's answer, learning the view."""
        try:
            given: Any = answer
            admitted, raw_wait, reply = given
            if not isinstance(admitted, bool) or not isinstance(reply, Mapping):
                raise TypeError
            wait: float | None = None if raw_wait is None else float(raw_wait)
            if wait is not None and not wait >= 0.0:
                wait = None  # unusable: poll
            self._learn(reply)
        except (TypeError, ValueError, KeyError) as exc:
            raise StoreReplyError(
                f"throttle {self._name!r}: the store answered throttle_admit with "
                f"{safe_repr(answer)}, not (admitted, wait, view)"
            ) from exc
        return admitted, wait, reply

    def done(self, lease: str, outcome: str, epoch: int) -> None:
        """Give the lease back with ``outcome``, without making the caller wait."""
        self._send(self._store.throttle_done(self._name, lease, outcome, epoch, **self._config))

    def hold(self, seconds: float, epoch: int) -> None:
        """Hold every process for ``seconds`` (a server's hint) and decrease once."""
        self._send(self._store.throttle_hold(self._name, seconds, epoch, **self._config))

    def _send(self, call: Coroutine[Any, Any, Mapping[str, Any]]) -> None:
        # A task of its own, with no caller to reach: nothing it meets escapes into the
        # loop. One cancelled before it started still gives the lease back (send_task):
        # a lease nobody gives back holds a share of every process's limit until its TTL,
        # the bound (past it the lease is gone anyway).
        task = send_task(functools.partial(self._apply, call), _LEASE_TTL)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, call: Coroutine[Any, Any, Mapping[str, Any]]) -> None:
        try:
            reply = await call
            if not isinstance(reply, Mapping):
                raise StoreReplyError(f"the store answered {safe_repr(reply)}, not a view")
            self._learn(reply)
        except asyncio.CancelledError:
            if being_cancelled():
                _log.warning(
                    "throttle %r: a shared store call was cancelled while it ran: it may "
                    "not have reached the store (a lease is then held until its TTL)",
                    self._name,
                )
                raise
            _log.warning("throttle %r: the store raised CancelledError by itself", self._name)
        except Exception as exc:  # the lease ends by its TTL; the next reply catches up
            _log.warning("throttle %r: a shared store call failed: %s", self._name, safe_repr(exc))
        except BaseException as exc:  # KeyboardInterrupt, SystemExit from a store's code
            if self._interrupt is None:
                self._interrupt = exc  # for the next admission, or drain()

    async def aclose(self, timeout: float | None) -> None:
        """Wait for the outcomes sent without waiting (cancelled past ``timeout``)."""
        await finish_tasks(self._tasks, timeout)

    def raise_interrupt(self) -> None:
        """Raise (once) what a store call sent without waiting raised: an interrupt."""
        error, self._interrupt = self._interrupt, None
        if error is not None:
            raise error
