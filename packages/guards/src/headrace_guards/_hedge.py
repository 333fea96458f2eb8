"""The hedge guard: start backup attempts after a delay; the first success wins."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, final

from headrace_core.lowlevel import Clock, check_int, check_number, within
from headrace_guards._common import (
    ExcSpec,
    GuardBase,
    GuardEvent,
    NotAsyncError,
    check_clock,
    compile_spec,
    now_of,
    raise_if_not_async,
)

P = ParamSpec("P")
T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class HedgeSnapshot:
    """Counters of a :class:`Hedge`.

    Attributes:
        name: the guard's name.
        calls: calls made.
        hedges: backup attempts started.
        hedge_wins: calls won by a backup attempt.
    """

    name: str | None
    calls: int
    hedges: int
    hedge_wins: int


class _Interrupted(Exception):
    """Carries a ``KeyboardInterrupt``/``SystemExit`` out of an attempt's task to the caller."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


async def _attempt(fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
    # One attempt, in its own task: an interrupt never escapes into the loop, it is
    # re-raised in the caller's task.
    try:
        return await fn(*args, **kwargs)
    except TypeError as exc:
        raise_if_not_async(fn, exc)
        raise
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Interrupted(exc) from None


def _interrupt_of(tasks: list[asyncio.Future[Any]]) -> BaseException | None:
    for task in tasks:
        if task.done() and not task.cancelled():
            error = task.exception()
            if isinstance(error, _Interrupted):
                return error.error
    return None


async def _settle(tasks: list[asyncio.Future[Any]]) -> bool:
    """Cancel every task not done and wait for all of them; return True if we were cancelled."""
    for task in tasks:
        if not task.done():
            task.cancel()
    cancelled = False
    pending = [task for task in tasks if not task.done()]
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
        pending = [task for task in tasks if not task.done()]
    for task in tasks:
        if not task.cancelled():
            task.exception()  # mark retrieved: a loser's error is not "never retrieved"
    return cancelled


@final
class Hedge(GuardBase):
    """Start backup attempts of a slow call; the first success wins, the others are cancelled.

    Each further attempt, up to ``max_hedged``, starts ``delay`` seconds after the previous
    one, or at once when an attempt fails with a handled error. Every other attempt is
    cancelled and awaited before :meth:`call` returns, so no task outlives it.

    Args:
        delay: seconds before the next attempt, finite and ``>= 0``.
        max_hedged: backup attempts at most, ``1..10``.
        on: which errors start the next attempt at once (an exception spec); any other
            error propagates at once, after the other attempts are cancelled.
        name: a name for events and snapshots.
        clock: a zero-argument callable returning seconds, for event times.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = ("_calls", "_clock", "_hedges", "_on", "_wins", "delay", "max_hedged")

    def __init__(
        self,
        delay: float,
        *,
        max_hedged: int = 1,
        on: ExcSpec = Exception,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.delay = check_number("delay", delay, ge=0)
        self.max_hedged = check_int("max_hedged", max_hedged, ge=1, le=10)
        self._on = compile_spec("on", on)
        self._clock = check_clock(clock)
        self._init_base(name)
        self._calls = 0
        self._hedges = 0
        self._wins = 0

    def __repr__(self) -> str:
        return f"Hedge(delay={self.delay!r}, max_hedged={self.max_hedged}, name={self.name!r})"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` with backup attempts; return the first success.

        Args:
            fn: the async callable to run (called once per attempt).
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            The value of the first attempt that succeeded.

        Raises:
            Exception: an unhandled error at once, or the last error when every attempt
                failed (the same objects).
            asyncio.CancelledError: when the caller is cancelled (after every attempt is
                cancelled and awaited).
        """
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        try:
            self._calls += 1
            loop = asyncio.get_running_loop()
            tasks: list[asyncio.Future[Any]] = []
            limit = 1 + self.max_hedged
            next_at = 0.0

            def start(now: float, attempt: int) -> None:
                nonlocal next_at
                tasks.append(loop.create_task(_attempt(fn, args, kwargs)))
                next_at = now + self.delay
                if attempt > 1:
                    self._hedges += 1
                    if self._listeners:
                        self._listeners.emit(
                            GuardEvent(
                                source=self._source,
                                kind="hedge",
                                at=now_of(self._clock),
                                attempt=attempt,
                                delay=self.delay,
                            )
                        )

            start(loop.time(), 1)
            last_error: BaseException | None = None
            outcome: asyncio.Future[Any] | None = None
            seen: set[asyncio.Future[Any]] = set()
            try:
                while outcome is None:
                    pending = [task for task in tasks if not task.done()]
                    more = len(tasks) < limit
                    if not pending and not more:
                        break
                    timeout = max(0.0, next_at - loop.time()) if more else None
                    if pending:
                        await asyncio.wait(
                            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                        )
                    failed = 0
                    for task in tasks:
                        if not task.done() or task in seen:
                            continue
                        seen.add(task)
                        if task.cancelled():
                            outcome = task
                            break
                        error = task.exception()
                        if (
                            error is None
                            or isinstance(error, _Interrupted | NotAsyncError)
                            or not self._on(error)
                        ):
                            outcome = task
                            break
                        last_error = error
                        failed += 1
                    if outcome is not None:
                        break
                    now = loop.time()
                    while failed and len(tasks) < limit:
                        start(now, len(tasks) + 1)
                        failed -= 1
                    if (
                        len(tasks) < limit
                        and within(next_at, now)
                        and any(not t.done() for t in tasks)
                    ):
                        start(now, len(tasks) + 1)
            except BaseException:
                await _settle(tasks)
                raise
            cancelled = await _settle(tasks)
            interrupt = _interrupt_of(tasks)
            if interrupt is not None:
                raise interrupt
            if cancelled:
                raise asyncio.CancelledError
            if outcome is None:
                assert last_error is not None
                raise last_error
            if outcome is not tasks[0] and not outcome.cancelled() and outcome.exception() is None:
                self._wins += 1
            return outcome.result()  # type: ignore[no-any-return]
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

    def snapshot(self) -> HedgeSnapshot:
        """Return the guard's counters (O(1), no await).

        Returns:
            A frozen :class:`HedgeSnapshot`.
        """
        return HedgeSnapshot(
            name=self.name, calls=self._calls, hedges=self._hedges, hedge_wins=self._wins
        )
