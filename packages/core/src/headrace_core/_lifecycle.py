"""One component's life: open or closed, the calls it is running, and who waits for them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import final

from headrace_core._errors import Closed


@final
class Lifecycle:
    """The state behind the family's one ``aclose()`` contract.

    Every long-lived headrace component keeps one. :meth:`close` makes it refuse new
    calls (:meth:`enter` raises the component's :class:`~headrace_core.Closed` error);
    the calls already running are counted (:meth:`enter` / :meth:`leave`) and
    :meth:`wait_idle` returns once none is left. Hot paths may inline the bookkeeping:
    ``if life.closed: raise life.refuse()`` then ``life.running += 1`` on the way in, and
    ``life.running -= 1`` then ``if not life.running and life.idle: life.wake()`` on the
    way out.

    Args:
        describe: the component as messages name it (``"CircuitBreaker 'db'"``).
        error: builds the error for a refused call; by default a
            :class:`~headrace_core.Closed` saying the component is closed.

    Example::

        life = Lifecycle("Loader 'users'")
        life.enter()
        try:
            ...  # the call
        finally:
            life.leave()
        life.close()
        await life.wait_idle()
    """

    __slots__ = ("_error", "closed", "describe", "idle", "running")

    def __init__(self, describe: str, error: Callable[[], Closed] | None = None) -> None:
        self.describe = describe
        self._error = error
        #: Whether :meth:`close` was called: new calls are refused from then on.
        self.closed = False
        #: The calls that entered and have not left yet.
        self.running = 0
        #: Set while a task waits in :meth:`wait_idle` (the way out checks it).
        self.idle: asyncio.Event | None = None

    def refuse(self) -> Closed:
        """Build the error a call gets once the component is closed."""
        if self._error is not None:
            return self._error()
        return Closed(f"{self.describe} is closed and accepts no new calls")

    def enter(self) -> None:
        """Count a call that starts now.

        Raises:
            Closed: (the component's subclass) when the component is closed.
        """
        if self.closed:
            raise self.refuse()
        self.running += 1

    def leave(self) -> None:
        """Count a call that ended (however it ended); wakes :meth:`wait_idle` at zero."""
        self.running -= 1
        if not self.running and self.idle is not None:
            self.wake()

    def wake(self) -> None:
        """Release the tasks waiting in :meth:`wait_idle` (no call is running)."""
        idle = self.idle
        if idle is not None:
            self.idle = None
            idle.set()

    def close(self) -> bool:
        """Refuse new calls from now on; return whether this call closed it (idempotent)."""
        if self.closed:
            return False
        self.closed = True
        return True

    async def wait_idle(self) -> None:
        """Return once no call is running (at once when none is)."""
        while self.running > 0:
            idle = self.idle
            if idle is None:
                idle = self.idle = asyncio.Event()
            await idle.wait()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Lifecycle of {self.describe}: {state}, {self.running} running>"
