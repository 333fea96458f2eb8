"""A deadline that raises the component's own timeout error: ``asyncio.timeout`` plus a type."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar, final

T = TypeVar("T")


@final
class Deadline:
    """An :func:`asyncio.timeout` whose expiry raises the caller's own error.

    Every headrace component that bounds a wait (a guard's ``Timeout``, a leveled phase, a
    flow stage, ``drain(timeout=)``) raises a ``GuardTimeout`` subclass of its own, not the
    bare ``TimeoutError``. This is that pattern, written once: inside ``async with`` (or
    :meth:`run` for one awaitable; :func:`bounded` is the same without this object, for hot
    paths), the body runs under asyncio's own ``Timeout`` (no extra task); when the deadline
    expires, ``error()`` is raised with the ``TimeoutError`` as its cause. It is raised too
    when the body swallowed the cancellation and finished late, or turned it into a
    ``TimeoutError`` of its own: the deadline was missed either way. A ``TimeoutError``
    the body raised before the deadline passes through unchanged, and so does a
    cancellation from outside.

    Args:
        delay: seconds from entering, or ``None`` for no deadline (set one later with
            :meth:`reschedule`).
        error: builds the error to raise on expiry; called once, only on expiry.

    Example::

        async with Deadline(2.0, lambda: StageTimeout(timeout=2.0, name="parse")):
            await parse(item)

        value = await Deadline(2.0, make_error).run(parse(item))
    """

    __slots__ = ("_error", "_scope")

    def __init__(self, delay: float | None, error: Callable[[], BaseException]) -> None:
        self._scope = asyncio.timeout(delay)
        self._error = error

    @classmethod
    def at(cls, when: float | None, error: Callable[[], BaseException]) -> Deadline:
        """A deadline at the loop time ``when`` (``None``: none yet)."""
        deadline = cls(None, error)
        deadline._scope = asyncio.timeout_at(when)
        return deadline

    def when(self) -> float | None:
        """The deadline in loop time, or ``None``."""
        return self._scope.when()

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to the loop time ``when`` (``None`` removes it)."""
        self._scope.reschedule(when)

    def expired(self) -> bool:
        """Whether the deadline passed while the body ran."""
        return self._scope.expired()

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` under the deadline: :func:`bounded` with this deadline's scope."""
        return await bounded(self._scope, awaitable, self._error)

    async def __aenter__(self) -> Deadline:
        await self._scope.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        try:
            await scope.__aexit__(exc_type, exc, tb)
        except TimeoutError as expired:
            raise self._error() from expired
        if exc_type is None or issubclass(exc_type, TimeoutError):
            # The body swallowed the cancellation, or turned it into its own TimeoutError.
            raise_if_expired(scope, self._error, exc)


async def bounded(
    scope: asyncio.Timeout, awaitable: Awaitable[T], error: Callable[[], BaseException]
) -> T:
    """Await ``awaitable`` under ``scope``; the scope's expiry raises ``error()``.

    What :class:`Deadline` does, for a hot path that keeps its own ``asyncio.Timeout`` (for
    example one rescheduled by a shared watcher of same-length deadlines): no object of
    its own, one coroutine frame. ``error()`` is chained from the ``TimeoutError``, and is
    raised too when ``awaitable`` swallowed the cancellation and finished late. A
    ``TimeoutError`` of its own before the deadline, and a cancellation from outside,
    pass through unchanged.

    Args:
        scope: an ``asyncio.Timeout`` not yet entered (``asyncio.Timeout(None)`` to set
            the deadline later with ``scope.reschedule(when)``).
        awaitable: what to await (created by the caller, awaited only here).
        error: builds the error to raise on expiry; called once, only on expiry.

    Returns:
        What ``awaitable`` returned.
    """
    try:
        async with scope:
            result = await awaitable
    except TimeoutError as exc:
        raise_if_expired(scope, error, exc)
        raise
    raise_if_expired(scope, error)  # it swallowed the cancellation and finished late
    return result


def raise_if_expired(
    scope: asyncio.Timeout, error: Callable[[], BaseException], cause: BaseException | None = None
) -> None:
    """Raise ``error()`` (chained from ``cause``) when ``scope`` expired; else return.

    The decision of :class:`Deadline` and :func:`bounded`, for a path that writes its own
    ``async with scope:`` (to save a coroutine frame): call it with the ``TimeoutError`` in
    ``except TimeoutError`` (then re-raise), and once more without a cause after the block,
    for a body that swallowed the cancellation and finished late.
    """
    if scope.expired():
        raise error() from cause
