"""``collect()``: how a ``@batch`` body hands its item to the wrapper that drives it.

The wrapper starts the decorated body by hand (``coro.send(None)``) and runs it up to
``await collect(item)``, which yields a small box holding the item back to the wrapper
instead of suspending the task. The leader's body is resumed later with the batch's items
in the box (:class:`Resume`); a follower's suspended body is closed once its result is in.
A body that awaits something before ``collect()`` is driven by :func:`drive`, which passes
those awaits on to the task.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, TypeVar

__all__ = ["COLLECT", "Resume", "collect", "drive", "no_collect"]

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

    def collect(item: Any) -> _Collect:
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
        return _Collect([COLLECT, item])


class _Collect:
    """What ``await collect(item)`` awaits: it yields the box to the wrapper once.

    The wrapper that drives the body takes the box; for the leader it stores the items in
    ``box[1]`` before resuming, and the await returns them. A parked follower is closed
    with its body: this iterator has no ``close()``, so that costs nothing here. Outside a
    ``@batch`` body the task gets the box instead and throws "bad yield" back: ``throw``
    says what went wrong.
    """

    __slots__ = ("box", "yielded")

    def __init__(self, box: list[Any]) -> None:
        self.box = box
        self.yielded = False

    def __await__(self) -> _Collect:
        return self

    def __iter__(self) -> _Collect:
        return self

    def __next__(self) -> list[Any]:
        if self.yielded:
            raise StopIteration(self.box[1])
        self.yielded = True
        return self.box

    def send(self, value: object) -> list[Any]:
        return self.__next__()

    def throw(
        self, error: BaseException | type[BaseException], value: object = None, *_: object
    ) -> list[Any]:
        if isinstance(error, type):  # the old (type, value, traceback) form
            error = value if isinstance(value, BaseException) else error()
        if isinstance(error, RuntimeError) and "bad yield" in str(error):
            raise RuntimeError(MISPLACED) from None
        raise error


class Resume:
    """Await a coroutine that was started by hand (plain ``await`` refuses it)."""

    __slots__ = ("iterator",)

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.iterator = coro.__await__()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.iterator


@types.coroutine
def drive(coro: Coroutine[Any, Any, Any], value: Any, name: str) -> Generator[Any, Any, list[Any]]:
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
        if type(value) is list and value and value[0] is COLLECT:
            return value


def no_collect(name: str) -> str:
    return f"@batch function {name} returned without awaiting collect(item)"
