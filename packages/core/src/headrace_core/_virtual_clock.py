"""A virtual clock for tests: the running loop's time jumps to the next timer when idle."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import math
import selectors
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any, final

from headrace_core._errors import safe_repr
from headrace_core._validate import check_number

_ACTIVE = "_headrace_virtual_clock"
_SO_ACCEPTCONN: int | None = getattr(socket, "SO_ACCEPTCONN", None)


def _is_listening_socket(fd: int) -> bool:
    # ``SO_ACCEPTCONN`` tells a listening socket from any other file descriptor. Where the
    # platform cannot answer, the descriptor counts as I/O in flight (the safe side).
    if _SO_ACCEPTCONN is None:  # pragma: no cover - every platform asyncio selects on has it
        return False
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket: a pipe, say
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, _SO_ACCEPTCONN))
    except OSError:  # pragma: no cover - a socket that cannot answer
        return False
    finally:
        sock.detach()  # the descriptor stays the loop's


@final
class VirtualClock:
    """Make the running loop's time virtual, so no test waits real seconds.

    Use it as ``with VirtualClock() as clock:`` inside a running loop. While active,
    ``loop.time()`` returns virtual time. When no callback is ready, no I/O is ready and a
    timer is pending, virtual time jumps straight to that timer (autojump), so
    ``asyncio.sleep(3600)``, ``asyncio.timeout``, ``asyncio.wait_for``, ``loop.call_later``
    and every headrace component complete at once, in deadline order.

    Real I/O still works: while a file descriptor other than the loop's own wake-up pipe is
    registered, the loop first waits ``autojump_threshold`` real seconds for I/O before it
    jumps. A listening socket (a server's) is the exception: it holds time back only while
    a connection waits in its backlog, which the loop sees without waiting, so an idle
    server in the test's own process costs no real time. Work the loop itself runs in its
    executor (``getaddrinfo`` for a connection by host name, ``loop.run_in_executor``)
    holds time back the same way, so connecting to ``localhost`` does not time out at once.
    Work of ``asyncio.to_thread`` does not: a test's own thread runs beside virtual time.

    A deadline (``asyncio.timeout``, a ``Timeout`` guard) is a pending timer like any
    other: a peer in another process that stays silent longer than
    ``autojump_threshold`` real seconds sees the deadline fire.

    Leaving the block restores the loop; timers still pending keep their remaining delay.

    Args:
        autojump: jump to the next timer whenever the loop is idle. With ``False``, time
            only moves through :meth:`advance`.
        autojump_threshold: real seconds to wait for I/O before jumping while I/O is in
            flight (``>= 0``): a registered descriptor other than an idle listening
            socket, or the loop's own executor work.
        start: the virtual time to start from; default ``0.0``, the same in every run (so
            a test never depends on how long the machine has been up). Timers already
            scheduled keep their remaining delays.
    """

    __slots__ = (
        "_executor_jobs",
        "_limits",
        "_listening",
        "_loop",
        "_now",
        "_real_select",
        "_selector",
        "_start",
        "_wakeup_fd",
        "autojump",
        "autojump_threshold",
    )

    def __init__(
        self,
        *,
        autojump: bool = True,
        autojump_threshold: float = 0.05,
        start: float | None = None,
    ) -> None:
        self.autojump = bool(autojump)
        self.autojump_threshold = check_number("autojump_threshold", autojump_threshold, ge=0)
        self._start = 0.0 if start is None else check_number("start", start)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._selector: selectors.BaseSelector | None = None
        self._real_select: Callable[[float | None], list[Any]] | None = None
        self._wakeup_fd = -1
        self._now = self._start
        self._limits: list[float] = []
        self._executor_jobs = 0
        # fd -> (the selector key it was checked under, whether it is a listening socket)
        self._listening: dict[int, tuple[selectors.SelectorKey, bool]] = {}

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> VirtualClock:
        loop = asyncio.get_running_loop()  # RuntimeError outside a running loop
        if self._loop is not None:
            raise RuntimeError("this VirtualClock is already active")
        if getattr(loop, _ACTIVE, None) is not None:
            raise RuntimeError("a VirtualClock is already active on this loop")
        selector = getattr(loop, "_selector", None)
        if not isinstance(selector, selectors.BaseSelector):
            raise RuntimeError(
                "VirtualClock needs a selector event loop (asyncio's default), not "
                f"{safe_repr(loop)}"
            )
        real_now = loop.time()
        self._now = self._start
        self._shift_timers(loop, self._now - real_now)
        self._loop = loop
        self._selector = selector
        self._real_select = selector.select
        ssock = getattr(loop, "_ssock", None)
        self._wakeup_fd = ssock.fileno() if ssock is not None else -1
        loop.time = self.now  # type: ignore[method-assign]
        loop.run_in_executor = self._tracking(loop.run_in_executor)  # type: ignore[method-assign,assignment]
        selector.select = self._select  # type: ignore[method-assign]
        setattr(loop, _ACTIVE, self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, selector = self._loop, self._selector
        if loop is None or selector is None:
            return
        del loop.time
        del loop.run_in_executor
        del selector.select
        delattr(loop, _ACTIVE)
        self._shift_timers(loop, loop.time() - self._now)
        self._loop = None
        self._selector = None
        self._real_select = None
        self._limits.clear()
        self._listening.clear()

    def _tracking(self, run_in_executor: Callable[..., Any]) -> Callable[..., Any]:
        # Count the loop's own executor jobs while they run; ``asyncio.to_thread`` (a
        # partial of a context's ``run``) is the user's thread and is not counted.
        def run(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
            future = run_in_executor(executor, func, *args)
            target = getattr(func, "func", None)
            if not (
                isinstance(func, functools.partial)
                and isinstance(getattr(target, "__self__", None), contextvars.Context)
            ):
                self._executor_jobs += 1
                future.add_done_callback(self._job_done)
            return future

        return run

    def _job_done(self, future: object) -> None:
        self._executor_jobs -= 1

    @staticmethod
    def _shift_timers(loop: asyncio.AbstractEventLoop, delta: float) -> None:
        # A uniform shift keeps the heap order and every timer's remaining delay.
        if not delta:
            return
        for handle in getattr(loop, "_scheduled", ()):
            handle._when += delta

    # -- time ------------------------------------------------------------------------
    def now(self) -> float:
        """Return the current virtual time in seconds."""
        return self._now

    @property
    def active(self) -> bool:
        """Whether the clock is patching a loop now."""
        return self._loop is not None

    async def advance(self, seconds: float) -> None:
        """Run every timer due within ``seconds``, in deadline order; end exactly ``seconds`` later.

        Other tasks run while the clock advances, as they would while time passes.

        Raises:
            ValueError: when ``seconds`` is negative or not finite.
            RuntimeError: when the clock is not active on the running loop.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds={safe_repr(seconds)}: must be a finite number >= 0")
        if self._loop is None or self._loop is not asyncio.get_running_loop():
            raise RuntimeError("VirtualClock.advance() needs the clock active on this loop")
        target = self._now + seconds
        heapq.heappush(self._limits, -target)
        try:
            await asyncio.sleep(seconds)
        finally:
            self._limits.remove(-target)
            heapq.heapify(self._limits)
        # The sleep's own timer is due at exactly ``target``; make the contract explicit.
        if self._now < target:
            self._now = target

    # -- the selector hook -----------------------------------------------------------
    def _jump_limit(self) -> float:
        if self.autojump:
            return math.inf
        return -self._limits[0] if self._limits else -math.inf

    def _select(self, timeout: float | None = None) -> list[Any]:
        real_select = self._real_select
        loop = self._loop
        assert real_select is not None
        assert loop is not None
        if timeout is not None and timeout <= 0:
            return real_select(timeout)
        scheduled = getattr(loop, "_scheduled", None)
        if not scheduled:
            # No timer: only I/O (or a thread waking the loop) can make progress.
            return real_select(timeout)
        when: float = scheduled[0]._when
        if when > self._jump_limit():
            # Time may not pass on its own: wait for I/O, a thread or another wake-up.
            return real_select(None)
        other_io = self._executor_jobs > 0 or self._io_in_flight()
        wait = 0.0 if not other_io or timeout is None else min(timeout, self.autojump_threshold)
        events = real_select(wait)
        if events:
            return events
        if when > self._now:
            self._now = when
        return []

    def _io_in_flight(self) -> bool:
        # Any registered descriptor other than the wake-up pipe may have I/O in flight,
        # except a listening socket: until a peer connects there is nothing to wait for,
        # and a connection already in its backlog makes the zero-wait poll return it.
        selector = self._selector
        assert selector is not None
        fds = selector.get_map()
        if len(fds) <= (1 if self._wakeup_fd in fds else 0):
            return False
        if len(self._listening) > len(fds):  # forget descriptors no longer registered
            self._listening = {
                fd: entry for fd, entry in self._listening.items() if fds.get(fd) is entry[0]
            }
        for fd, key in fds.items():
            if fd == self._wakeup_fd:
                continue
            if key.events & selectors.EVENT_WRITE or not self._listens(key):
                return True
        return False

    def _listens(self, key: selectors.SelectorKey) -> bool:
        # A selector makes a new key whenever a registration changes, so a cached answer
        # is reused only for the very key it was computed under (a reused fd re-checks).
        cached = self._listening.get(key.fd)
        if cached is not None and cached[0] is key:
            return cached[1]
        listening = _is_listening_socket(key.fd)
        self._listening[key.fd] = (key, listening)
        return listening

    def __repr__(self) -> str:
        state = "active" if self._loop is not None else "inactive"
        return f"<VirtualClock now={self._now!r} {state} autojump={self.autojump}>"
