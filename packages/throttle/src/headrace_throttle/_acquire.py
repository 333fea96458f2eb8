"""The context manager behind ``Throttle.acquire()``: one slot for one block, no retry.

It takes the same way in as :meth:`Throttle.execute`: the breaker check, the shared
budgets, the local queue (pacing, local budgets, the concurrency limit), then the
composed breaker's admission (its own ``async with``, in memory or store-backed), and
the same way out.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, final

from headrace_throttle._types import Slot

if TYPE_CHECKING:
    from headrace_throttle._throttle import Throttle

__all__: list[str] = []


@final
class _Acquire:
    """The context manager of :meth:`Throttle.acquire`."""

    __slots__ = ("_breaker_entered", "_slot", "_throttle", "_tokens")

    def __init__(self, throttle: Throttle, tokens: int) -> None:
        self._throttle = throttle
        self._tokens = tokens
        self._slot: Slot | None = None
        self._breaker_entered = False

    async def __aenter__(self) -> Slot:
        throttle = self._throttle
        if self._slot is not None:
            raise RuntimeError("this acquire() context is already entered")
        slot = Slot(self._tokens)
        await throttle._enter(slot)
        breaker = throttle._breaker
        if breaker is not None:
            try:
                await breaker.__aenter__()
            except BaseException as exc:  # refused: the block never runs
                await throttle._leave(slot, exc, hinted=False, ran=False)
                raise
            self._breaker_entered = True
        self._slot = slot
        return slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot, throttle = self._slot, self._throttle
        assert slot is not None
        self._slot = None
        breaker = throttle._breaker
        if self._breaker_entered and breaker is not None:
            self._breaker_entered = False
            try:
                await breaker.__aexit__(exc_type, exc, tb)
            except BaseException as error:
                if error is not exc:
                    # The breaker's own error while recording (a predicate's, a store's).
                    await throttle._leave(slot, error, hinted=False)
                    raise
        if slot._grants is None:
            # No shared budget to reconcile: finishing is synchronous (no extra frame).
            if exc is None:
                throttle._finish_ok(slot)
            else:
                throttle._finish_error(slot, exc)
            return
        await throttle._leave(slot, exc, hinted=False)
