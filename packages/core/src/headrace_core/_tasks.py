"""Tasks whose cleanup runs even when they are cancelled before their first step."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

from headrace_core._errors import safe_repr

T = TypeVar("T")


@types.coroutine
def first_step() -> Generator[None, None, None]:
    """The first await of a coroutine that :func:`start_task` runs.

    Await it at the top of the ``try`` whose ``except``/``finally`` must run: the task's
    first step resumes the coroutine here. Awaited in a coroutine run another way, it is
    one hop through the event loop, like ``asyncio.sleep(0)``.
    """
    yield


def start_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    *,
    name: str | None = None,
) -> asyncio.Task[T]:
    """Create a task for ``coro`` whose cleanup runs whatever cancels it, and when.

    A task cancelled before its first step never runs a line of its coroutine: no
    ``try`` of it is entered, so no ``finally`` of it runs, and whoever waits for what the
    task would have done waits for ever. ``start_task`` first steps ``coro`` up to its
    ``await first_step()``, inside its ``try``; the task's first step resumes it there,
    one hop later, as it would have started. A cancel before that step raises
    ``CancelledError`` at the ``await first_step()``, where the coroutine handles it.

    Raises:
        RuntimeError: when ``coro`` returns, or awaits a future, before it reaches
            ``await first_step()`` (``coro`` is closed).
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        yielded = coro  # not None: refused below
    if yielded is not None:
        coro.close()
        raise RuntimeError(
            f"start_task(): the first await of {safe_repr(coro)} must be `await first_step()`"
        )
    if name is None:
        return loop.create_task(coro)
    return loop.create_task(coro, name=name)


async def despite_cancel(work: Callable[[], Awaitable[T]], bound: float | None) -> T:
    """Await ``work()`` within ``bound`` seconds although the current task is being cancelled.

    For the task of :func:`start_task` whose job must be done even when something else
    cancelled it before its first step (a lease's release, a refund, in a shutdown that
    cancels every task): call it in the ``except CancelledError`` at ``await
    first_step()``, then re-raise. The task's pending cancellation is taken back
    (``uncancel()``) so that ``work()`` is not cancelled at its first await; a cancel
    that arrives while it runs is obeyed. ``bound=None``: ``work()`` bounds itself.

    Raises:
        TimeoutError: when ``work()`` takes longer than ``bound`` (it is cancelled).
    """
    task = asyncio.current_task()
    assert task is not None  # called from a task's except CancelledError
    while task.uncancel():
        pass
    async with asyncio.timeout(bound):
        return await work()
