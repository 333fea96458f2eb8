"""Markers a stage returns: ``DROP`` filters the item, ``Last(value)`` ends the stream."""

from __future__ import annotations

from typing import Final, Generic, TypeVar, final

from headrace_core.lowlevel import safe_repr

T = TypeVar("T")


@final
class Drop:
    """The type of :data:`DROP`: return it from a stage to filter the item out.

    There is one instance; compare with ``is``. Annotate a filtering stage as
    ``async def keep_even(x: int) -> int | Drop``.
    """

    __slots__ = ()
    _instance: Drop | None = None

    def __new__(cls) -> Drop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DROP"

    def __reduce__(self) -> str:
        return "DROP"

    def __bool__(self) -> bool:
        return False


DROP: Final[Drop] = Drop()
"""Return this from a stage to drop the item (counted as ``filtered``)."""


@final
class Last(Generic[T]):
    """Wrap a stage's result to make it the last item the pipeline produces.

    When a worker returns ``Last(value)``, every stage that is not downstream of its
    stage stops (the source is closed, queued and in-flight items there are discarded
    and counted), sibling workers of the stage finish their current item, and ``value``
    goes downstream as the final item: each stage below receives it after every other
    item, so it is the last item every sink receives, whatever the topology (router
    arms, sub-flows, stages with many workers).

    Args:
        value: the final item.

    Raises:
        TypeError: when ``value`` is ``DROP`` (or another ``Last``): no item to end with.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        if value is DROP or value.__class__ is Last:
            raise TypeError(
                f"Last({safe_repr(value)}) has no final item: Last wraps the value that ends the "
                "stream (return DROP to filter an item out)"
            )
        self.value = value

    def __repr__(self) -> str:
        return f"Last({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Last) and bool(other.value == self.value)

    def __hash__(self) -> int:
        return hash(("Last", self.value))
