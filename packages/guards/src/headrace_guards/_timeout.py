"""The timeout guard: ``asyncio.timeout()`` that tells its own deadline from the callee's."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final

from headrace_core import GuardTimeout
from headrace_core.lowlevel import (
    Clock,
    Deadlines,
    LoopBinding,
    check_callable,
    check_number,
    raise_if_expired,
)
from headrace_guards._common import (
    GuardBase,
    GuardEvent,
    check_clock,
    event_logger,
    events,
    now_of,
    raise_if_not_async,
)

P = ParamSpec("P")
T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class TimeoutSnapshot:
    """Counters of a :class:`Timeout`.

    Attributes:
        name: the guard's name.
        seconds: the deadline in seconds.
        calls: calls started (``call`` and ``async with``).
        timeouts: calls that hit this guard's deadline.
    """

    name: str | None
    seconds: float
    calls: int
    timeouts: int


@final
class Timeout(GuardBase):
    """Bound a call (or an ``async with`` block) by a deadline.

    Built on ``asyncio.Timeout`` (what ``asyncio.timeout()`` returns) on every Python
    version, never ``wait_for``; one loop timer per guard watches every call's deadline,
    so a call that finishes in time schedules no timer of its own. Only this guard's own expired
    deadline is a timeout: a ``TimeoutError`` raised by the callee propagates as the same
    object. A caller's cancellation always wins over the deadline, even when both land in
    the same loop iteration, and ``task.cancelling()`` is left as the caller made it.

    Args:
        seconds: the deadline, finite and ``> 0``.
        on_timeout: called with the call's ``*args, **kwargs`` when the deadline expires
            (awaited if it returns an awaitable); its value is returned instead of raising
            :class:`GuardTimeout`. Not used by ``async with``.
        name: a name for events, errors and snapshots.
        clock: a zero-argument callable returning seconds, used for event times only.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = (
        "_binding",
        "_calls",
        "_clock",
        "_deadlines",
        "_entered",
        "_on_timeout",
        "_timeouts",
        "seconds",
    )

    def __init__(
        self,
        seconds: float,
        *,
        on_timeout: Callable[..., Any] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.seconds = check_number("seconds", seconds, gt=0)
        self._on_timeout = check_callable("on_timeout", on_timeout)
        self._clock = check_clock(clock)
        self._init_base(name)
        self._calls = 0
        self._timeouts = 0
        self._entered: dict[asyncio.Task[Any], list[tuple[asyncio.Timeout, list[Any]]]] = {}
        self._deadlines: Deadlines[None] | None = None
        self._binding = LoopBinding(self._describe())

    def __repr__(self) -> str:
        return f"Timeout(seconds={self.seconds!r}, name={self.name!r})"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` with this guard's deadline.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            What ``fn`` returned, or ``on_timeout``'s value when the deadline expired.

        Raises:
            GuardTimeout: when the deadline expired and no ``on_timeout`` is set (also
                when the callee swallowed the cancellation and returned late).
            asyncio.CancelledError: when the caller was cancelled (it wins over the deadline).
        """
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        self._calls += 1
        try:
            loop = asyncio.get_running_loop()
            deadlines = self._deadlines
            if deadlines is None or deadlines.loop is not loop:
                deadlines = self._bind()
            cm = asyncio.Timeout(None)
            # Deadlines.add and .done, written out: this is the per-call fast path.
            entry: list[Any] = [loop.time() + self.seconds, cm, None]
            entries = deadlines.entries
            entries.append(entry)
            if deadlines.handle is None:
                deadlines.handle = loop.call_at(entry[0], deadlines.fire)
            try:
                async with cm:
                    result = await fn(*args, **kwargs)
            except TimeoutError as exc:
                if not cm.expired():
                    raise
                return await self._timed_out(exc, args, kwargs)  # type: ignore[no-any-return]
            except TypeError as exc:
                raise_if_not_async(fn, exc)
                raise
            finally:
                entry[1] = None
                while entries and entries[0][1] is None:
                    entries.popleft()
            if entry[0] is None and cm.expired():
                # The callee swallowed the cancellation and returned late.
                return await self._timed_out(None, args, kwargs)  # type: ignore[no-any-return]
            return result
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

    def _bind(self) -> Deadlines[None]:
        """Watch deadlines on the running loop (the guard moved to a new loop)."""
        loop, _ = self._binding.check()  # RuntimeError if the old loop runs in another thread
        old = self._deadlines
        if old is not None:
            old.close()  # the old loop is not running (checked above): cancel its idle timer
        deadlines = self._deadlines = Deadlines(loop, self.seconds)
        return deadlines

    async def _timed_out(
        self, cause: BaseException | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        error = self._own_timeout()
        handler = self._on_timeout
        if handler is None:
            raise error from cause
        value = handler(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value

    def _emit(self, error: BaseException) -> None:
        self._listeners.emit(
            GuardEvent(
                source=self._source,
                kind="timeout",
                at=now_of(self._clock),
                delay=self.seconds,
                error=error,
            )
        )

    async def __aenter__(self) -> Timeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Timeout must be used inside a task")
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._bind()
        self._life.enter()
        cm = asyncio.Timeout(None)
        await cm.__aenter__()
        self._calls += 1
        self._entered.setdefault(task, []).append((cm, deadlines.add(cm, None)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._entered.get(task) if task is not None else None
        if not stack:
            raise RuntimeError("Timeout.__aexit__ without a matching __aenter__ in this task")
        cm, entry = stack.pop()
        if not stack:
            del self._entered[task]  # type: ignore[arg-type]
        deadlines = self._deadlines
        try:
            await cm.__aexit__(exc_type, exc, tb)
        except TimeoutError as raised:
            raise_if_expired(cm, self._own_timeout, raised)
            raise
        finally:
            if deadlines is not None:
                deadlines.done(entry)
            self._life.leave()
        if cm.expired() and (exc_type is None or issubclass(exc_type, TimeoutError)):
            # The body swallowed the cancellation (or turned it into its own TimeoutError).
            raise self._own_timeout() from exc

    def _own_timeout(self) -> GuardTimeout:
        self._timeouts += 1
        error = GuardTimeout(timeout=self.seconds, name=self.name)
        if event_logger.isEnabledFor(logging.DEBUG):
            events.debug(
                "timed out after %.3fs",
                self.seconds,
                kind="Timeout",
                component=self.name,
                event="timeout",
                delay=self.seconds,
            )
        if self._listeners:
            self._emit(error)
        return error

    async def aclose(self) -> None:
        """Close the guard for good (the family's one ``aclose()``; idempotent).

        New calls raise :class:`~headrace_core.Closed`; calls already running keep their
        deadline and finish normally. Returns once they have ended, then once pending
        async listeners have ended (under a deadline, ``asyncio.timeout``, those still
        running are cancelled); the loop timer that watched the deadlines is cancelled,
        so a closed guard leaves nothing scheduled. ``snapshot()`` and ``add_listener()``
        keep working.
        """
        await super().aclose()
        deadlines = self._deadlines
        if deadlines is not None and deadlines.loop is asyncio.get_running_loop():
            deadlines.close()

    def snapshot(self) -> TimeoutSnapshot:
        """Return the guard's counters (O(1), no await).

        Returns:
            A frozen :class:`TimeoutSnapshot`.
        """
        return TimeoutSnapshot(
            name=self.name, seconds=self.seconds, calls=self._calls, timeouts=self._timeouts
        )
