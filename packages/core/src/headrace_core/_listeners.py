"""The one listener registry every component uses."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar, final

from headrace_core._errors import ConfigurationTypeError, callable_name
from headrace_core._tasks import first_step, start_task

E = TypeVar("E")

Listener = Callable[[E], Awaitable[Any] | Any]


@final
class Listeners(Generic[E]):
    """Listeners of one component: sync or async, isolated, fired once per event in order.

    A listener's exception is logged with ``logger.exception`` on the component's logger
    and swallowed, ``CancelledError`` raised by the listener itself included. An awaitable
    returned by a listener is scheduled as a task, referenced until done, and awaited or
    cancelled by :meth:`aclose`.

    ``KeyboardInterrupt`` and ``SystemExit`` are not swallowed: raised by a sync listener,
    the remaining listeners still run, then the first of them propagates to the code that
    emitted the event (components emit after their state has changed, so they stay
    consistent). Raised by an async listener (its own task, with no caller to reach), it
    is logged as an error and does not escape into the event loop.

    Args:
        logger: the logger name, ``headrace.<package>``.
        component: a description of the owning component for log messages.
    """

    __slots__ = ("_callbacks", "_logger", "_tasks", "active", "component")

    def __init__(self, logger: str, component: str | None = None) -> None:
        self._callbacks: list[Listener[E]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._logger = logging.getLogger(logger)
        self.component = component
        #: Whether any listener is registered: a plain attribute, so a hot path can test
        #: ``if listeners.active:`` before building an event, for the cost of one load.
        self.active = False

    def add(self, callback: Listener[E]) -> Callable[[], None]:
        """Register ``callback``; return a callable that removes it (idempotent).

        Raises:
            ConfigurationTypeError: (a ``TypeError``) when ``callback`` is not callable.
        """
        if not callable(callback):
            raise ConfigurationTypeError.argument_error(
                "callback", callback, "a listener must be callable"
            )
        self._callbacks.append(callback)
        self.active = True

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)
            self.active = bool(self._callbacks)

        return remove

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def __len__(self) -> int:
        return len(self._callbacks)

    @property
    def pending(self) -> int:
        """The number of async listener tasks not yet done."""
        return len(self._tasks)

    def emit(self, event: E) -> None:
        """Call every listener with ``event``; never raises."""
        if not self._callbacks:
            return
        interrupt: BaseException | None = None
        for callback in tuple(self._callbacks):
            try:
                result = callback(event)
            except (Exception, asyncio.CancelledError):
                self._logger.exception(
                    "listener %s of %s failed",
                    callable_name(callback),
                    self.component or "component",
                )
                continue
            except BaseException as exc:  # KeyboardInterrupt, SystemExit: after the others
                if interrupt is None:
                    interrupt = exc
                continue
            if inspect.isawaitable(result):
                self._schedule(callback, result)
        if interrupt is not None:
            raise interrupt

    def _schedule(self, callback: Listener[E], awaitable: Awaitable[Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            self._logger.error(
                "async listener %s of %s needs a running event loop",
                callable_name(callback),
                self.component or "component",
            )
            return
        task = start_task(loop, _isolated(awaitable))
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (error := task.exception()) is not None:
                self._logger.error(
                    "listener %s of %s failed",
                    callable_name(callback),
                    self.component or "component",
                    exc_info=error,
                )

        task.add_done_callback(done)

    async def aclose(self, timeout: float | None = None) -> None:
        """Await pending async listeners; cancel and await any still running after ``timeout``."""
        await finish_tasks(self._tasks, timeout)


async def finish_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float | None) -> None:
    """Await ``tasks``; cancel those still running after ``timeout`` and await them too.

    When the caller is cancelled meanwhile, every task still running is cancelled and
    awaited (shielded) before the cancellation goes on, so none is left pending. The
    calling task itself is skipped (an async listener closing its own component would
    otherwise wait for itself).
    """
    current = asyncio.current_task()
    tasks = tuple(task for task in tasks if task is not current)
    if not tasks:
        return
    try:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
    except asyncio.CancelledError:
        pending = {task for task in tasks if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.shield(asyncio.wait(pending))
        raise
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


async def _isolated(awaitable: Awaitable[Any]) -> Any:
    # An async listener runs in its own task with no caller to reach: KeyboardInterrupt
    # and SystemExit become its failure (logged) instead of escaping into the event loop.
    try:
        await first_step()  # start_task: cancelled before it ran, it closes the listener's
    except asyncio.CancelledError:  # coroutine (never awaited, and never warned about)
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise
    try:
        return await awaitable
    except (KeyboardInterrupt, SystemExit) as exc:
        raise RuntimeError(f"listener raised {type(exc).__name__}") from exc
