"""Binding components to event loops: a per-loop registry and a loop-binding check."""

from __future__ import annotations

import asyncio
import functools
import math
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar, final

T = TypeVar("T")

#: Slack allowed when a wait or deadline computed from loop times meets its bound. Loop
#: times are floats whose rounding grows with the clock's magnitude (at 1e6 s one unit in
#: the last place is about 1e-10 s); far below anything a timer can resolve, it keeps a
#: decision at a bound from flipping with how long the machine has been up.
TIME_TOLERANCE = 1e-7


def within(value: float, bound: float) -> bool:
    """Return whether ``value <= bound``, forgiving the float rounding of loop-time arithmetic.

    Use it wherever a wait or a deadline computed from loop times meets a bound (a
    limiter's ``max_wait``, a budget window, a pacing interval, a lease): the outcome then
    does not depend on the clock's magnitude. ``inf`` bounds admit every finite value.
    """
    return value <= bound + TIME_TOLERANCE or (math.isinf(bound) and bound > 0)


_stock_create_future = asyncio.BaseEventLoop.create_future


def future_maker(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
    """``loop.create_future``; on asyncio's own loops, the same call without its frame.

    asyncio's ``create_future`` is ``Future(loop=self)`` written in Python; a loop that
    overrides it (uvloop, a test loop) keeps its own. For a hot path that makes a future
    per call: take the maker once per loop, call it per future.
    """
    if type(loop).create_future is _stock_create_future:
        return functools.partial(asyncio.Future, loop=loop)
    return loop.create_future


@final
class PerLoop(Generic[T]):
    """State kept per event loop, created on first use by ``factory``.

    Keyed weakly by loop, so the state of a closed loop goes away with it, and a
    component declared at import time works across successive ``asyncio.run()`` calls.

    Args:
        factory: builds the state for a loop that has none yet.
    """

    __slots__ = ("_factory", "_last", "_states")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        # The last (loop, value) pair, read and written as one tuple: two threads, each
        # running its own loop, never see one's loop with the other's value.
        self._last: tuple[weakref.ReferenceType[asyncio.AbstractEventLoop], T] | None = None

    def get(self, loop: asyncio.AbstractEventLoop | None = None) -> T:
        """Return the state of ``loop`` (default: the running loop), creating it if needed.

        Raises:
            RuntimeError: when ``loop`` is None and no event loop is running.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        try:
            value = self._states[loop]
        except KeyError:
            value = self._states.setdefault(loop, self._factory())
        self._last = (weakref.ref(loop), value)
        return value

    def peek(self, loop: asyncio.AbstractEventLoop | None = None) -> T | None:
        """Return the state of ``loop`` if it has one, without creating it."""
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
        return self._states.get(loop)

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Return every (loop, state) pair still alive."""
        return list(self._states.items())

    def clear(self) -> None:
        """Forget the state of every loop."""
        self._states.clear()
        self._last = None

    def __len__(self) -> int:
        return len(self._states)


@final
class LoopBinding:
    """Binds a component to the loop of its first use.

    ``check()`` returns the running loop. It rebinds (and reports it) when the previous
    loop is closed or not running, and raises ``RuntimeError`` when the component is used
    from a second loop while the first is still running (in another thread).

    Args:
        owner: a description of the component, for the error message.
    """

    __slots__ = ("_loop", "owner")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._loop: weakref.ReferenceType[asyncio.AbstractEventLoop] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop currently bound, if it is still alive."""
        return self._loop() if self._loop is not None else None

    def check(self) -> tuple[asyncio.AbstractEventLoop, bool]:
        """Return ``(running loop, rebound)``; ``rebound`` is True when the binding changed.

        Raises:
            RuntimeError: outside a running loop, or when the bound loop is still running
                in another thread.
        """
        loop = asyncio.get_running_loop()
        bound = self._loop() if self._loop is not None else None
        if bound is loop:
            return loop, False
        if bound is not None and not bound.is_closed() and bound.is_running():
            raise RuntimeError(
                f"{self.owner} is bound to an event loop that is running in another thread; "
                "create one instance per loop (or per thread)"
            )
        self._loop = weakref.ref(loop)
        return loop, True
