"""The context manager behind ``Throttle.acquire()``: one slot for one block, no retry."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, final

from headrace_throttle._errors import ThrottleClosed
from headrace_throttle._outcomes import NOT_A_HINT
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
        throttle, tokens = self._throttle, self._tokens
        if self._slot is not None:
            raise RuntimeError("this acquire() context is already entered")
        if tokens:
            throttle._check_tokens(tokens)
        if throttle._closed:
            raise ThrottleClosed(name=throttle.name)
        breaker = throttle._breaker
        if breaker is not None:
            throttle._check_breaker()
        slot = Slot(tokens)
        loop = asyncio.get_running_loop()
        if loop is not throttle._loop:
            throttle._bind_loop(loop)
        if throttle._waiting or throttle._in_flight >= throttle._limit:
            await throttle._enqueue(slot, loop)
        elif throttle._simple:
            throttle._admit(slot, loop.time())
        elif throttle._try_admit(slot, loop.time()):
            await throttle._enqueue(slot, loop)
        if breaker is not None:
            try:
                await breaker.__aenter__()
            except BaseException as exc:
                throttle._finish_error(slot, exc)
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
        if self._breaker_entered and throttle._breaker is not None:
            self._breaker_entered = False
            await throttle._breaker.__aexit__(exc_type, exc, tb)
        if exc is None:
            throttle._finish_ok(slot)
        else:
            if isinstance(exc, Exception) and throttle._runner is not None:
                hint = throttle._hint(exc)
                if hint != NOT_A_HINT:
                    throttle._apply_hint(hint, slot._epoch, exc)
            throttle._finish_error(slot, exc)
