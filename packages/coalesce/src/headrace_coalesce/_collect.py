"""``collect()``: how a ``@batch`` body hands its item to the wrapper that drives it.

The wrapper starts the decorated body by hand (``coro.send(None)``) and runs it up to
``await collect(item)``, which yields the pair ``(COLLECT, item)`` back to the wrapper
instead of suspending the task. The leader's body is resumed later (:func:`resume`) with
the batch's items; a follower's suspended body is closed once its result is in.
A body that awaits something before ``collect()`` is driven by :func:`drive`, which passes
those awaits on to the task.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, TypeVar

__all__ = ["COLLECT", "Box", "collect", "drive", "no_collect", "resume"]

T = TypeVar("T")


class _Marker:
    """First element of the box ``collect()`` yields; its repr explains a misuse."""

    __slots__ = ()

    def __repr__(self) -> str:
        return (
            "<headrace_coalesce: collect() must be awaited directly in the body of a "
            "@batch function, once per call>"
        )


COLLECT: Final = _Marker()
#: The error of a ``collect()`` that no ``@batch`` wrapper drives.
MISPLACED: Final = (
    "collect() must be awaited directly in the body of a @batch function, once per call, "
    "in the call's own task (it was awaited outside one, or in a task of its own)"
)

if TYPE_CHECKING:

    async def collect(item: T) -> list[T]:
        """Add ``item`` to the current batch and wait for the batch.

        Await it exactly once in the body of a ``@batch`` function. Code before it runs in
        every caller; only the leader resumes after it, with the batch's items, and returns
        one result per item (a ``Sequence`` in the same order, or a ``Mapping`` keyed by
        item). Followers never resume: their result comes from the leader's bulk call.

        Args:
            item: this caller's item.

        Returns:
            (In the leader only) the unique live items of the batch, in call order.

        Raises:
            RuntimeError: when awaited outside a ``@batch`` body, twice in one call, or in
                another task than the call's own (the event loop refuses the yielded box).
        """
        ...

else:

    def collect(item: Any) -> Box:
        """Add ``item`` to the current batch and wait for the batch.

        Await it exactly once in the body of a ``@batch`` function. Code before it runs in
        every caller; only the leader resumes after it, with the batch's items, and returns
        one result per item (a ``Sequence`` in the same order, or a ``Mapping`` keyed by
        item). Followers never resume: their result comes from the leader's bulk call.

        Args:
            item: this caller's item.

        Returns:
            (In the leader only) the unique live items of the batch, in call order.

        Raises:
            RuntimeError: when awaited outside a ``@batch`` body, twice in one call, or in
                another task than the call's own.
        """
        return Box((COLLECT, item), 1)


if TYPE_CHECKING:
    _Repeat = itertools.repeat[tuple[_Marker, Any]]
else:
    _Repeat = itertools.repeat  # not subscriptable at run time


class Box(_Repeat):
    """What ``await collect(item)`` awaits: it yields the pair ``(COLLECT, item)`` once.

    An ``itertools.repeat`` of that pair, once: awaiting the box and its first step are the
    C iterator's own, so a call of ``collect()`` runs no frame of ours past ``collect``
    itself. The wrapper that drives the body takes the pair. For the leader,
    :func:`resume` stores the batch's items in ``items`` and makes the box a
    :class:`_Filled`, whose next step returns them. A parked follower is closed with its
    body: the box has no ``close()``, so that costs nothing here. Outside a ``@batch`` body
    the task gets the pair instead and throws "bad yield" back: ``throw`` says what went
    wrong.
    """

    __slots__ = ("items",)

    items: list[Any]

    if TYPE_CHECKING:

        def __await__(self) -> Box: ...

    else:
        __await__ = itertools.repeat.__iter__  # the box is its own iterator: no frame of ours

    def send(self, value: object) -> Any:
        return self.__next__()

    def throw(
        self, error: BaseException | type[BaseException], value: object = None, *_: object
    ) -> Any:
        if isinstance(error, type):  # the old (type, value, traceback) form
            error = value if isinstance(value, BaseException) else error()
        if isinstance(error, RuntimeError) and "bad yield" in str(error):
            raise RuntimeError(MISPLACED) from None
        raise error


class _Filled(Box):
    """A leader's box once its batch is sent: the next step returns the items."""

    __slots__ = ()

    def __next__(self) -> Any:
        raise StopIteration(self.items)


@types.coroutine
def resume(coro: Coroutine[Any, Any, T], items: list[Any]) -> Generator[Any, Any, T]:
    """Resume a leader's body at its ``collect()`` with ``items``, and await the body.

    The body was started by hand (plain ``await`` refuses it); ``yield from`` takes it as it
    stands, and the task then drives it directly. The box is found along the body's awaits
    (``collect()`` may be awaited in a coroutine that the body awaits).
    """
    box: Any = getattr(coro, "cr_await", None)
    while type(box) is not Box:
        if box is None:  # an awaitable of another kind in between: throw the items down
            return (yield from _forward(coro, StopIteration(items)))
        box = getattr(box, "cr_await", None) or getattr(box, "gi_yieldfrom", None)
    box.items = items
    box.__class__ = _Filled
    body: Any = coro  # a coroutine: ``yield from`` delegates to it as to a generator
    return (yield from body)  # type: ignore[no-any-return]


def _forward(coro: Coroutine[Any, Any, T], error: BaseException) -> Generator[Any, Any, T]:
    """Throw ``error`` into ``coro``, then pass its awaits on to the task until it returns."""
    try:
        while True:
            value = coro.throw(error)
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # a cancellation (or a throw) goes to the body
                    error = exc
                    break
                value = coro.send(sent)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


@types.coroutine
def drive(
    coro: Coroutine[Any, Any, Any], value: Any, name: str
) -> Generator[Any, Any, tuple[_Marker, Any]]:
    """Forward a body's awaits to the task until it reaches ``collect()`` (slow path)."""
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancellation (or a throw) goes to the body
            try:
                value = coro.throw(exc)
            except StopIteration:
                raise RuntimeError(no_collect(name)) from None
        else:
            try:
                value = coro.send(sent)
            except StopIteration:
                raise RuntimeError(no_collect(name)) from None
        if type(value) is tuple and value and value[0] is COLLECT:
            return value


def no_collect(name: str) -> str:
    return f"@batch function {name} returned without awaiting collect(item)"
