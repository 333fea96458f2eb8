"""Items that a source wants to hear about once they have left the pipeline.

A source whose items must be acknowledged (a Redis Streams consumer group, a broker's
delivery) is a :class:`TrackedSource`: it yields each item inside a :class:`Tracked`
holding a :class:`Ticket`. The ticket counts the units of work that descend from the
item and are still in the pipeline: a map stage hands the unit on, a fan-out adds one
per output, a batch carries the tickets of all its items (:class:`Tickets`). A unit ends
when it reaches the end of the pipeline (a sink, or the consumer of ``iterate()``), is
filtered, or is failed or dropped and the error handler let the run go on. When the last
unit ends the ticket calls the source back. A unit that a stop, a cancel or an error
ending the run discards never ends: its item is not acknowledged, and the source's
redelivery brings it back (at least once).

Stage functions never see a ``Tracked``: the worker hands them the item and wraps what
they return (:func:`carry`, :func:`spread`, :func:`unwrap`).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

from headrace_flow._markers import DROP, Last


class Lineage(Protocol):
    """What a unit carries: one ticket, or the tickets of a batch."""

    def add(self, units: int = 1) -> None:
        """Count ``units`` more units descending from the item(s)."""
        ...

    def done(self) -> None:
        """One unit has left the pipeline."""
        ...


class Ticket:
    """The units descending from one source item that are still in the pipeline.

    Args:
        key: what the source knows the item by (a stream entry's id).
        on_done: called with ``key`` once, when the last unit has left the pipeline.
    """

    __slots__ = ("key", "on_done", "units")

    def __init__(self, key: object, on_done: Callable[[object], None]) -> None:
        self.key = key
        self.on_done = on_done
        self.units = 1

    def add(self, units: int = 1) -> None:
        """Count ``units`` more units."""
        self.units += units

    def done(self) -> None:
        """One unit has left the pipeline; the last one calls the source back."""
        self.units -= 1
        if self.units == 0:
            self.on_done(self.key)

    def __repr__(self) -> str:
        return f"Ticket({self.key!r}, units={self.units})"


class Tickets:
    """The tickets of a batch's items: a batch is one unit holding a unit of each item."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Lineage]) -> None:
        self.parts = parts

    def add(self, units: int = 1) -> None:
        """Every item of the batch gains ``units`` units."""
        for part in self.parts:
            part.add(units)

    def done(self) -> None:
        """The batch's unit ended: so did one unit of each of its items."""
        for part in self.parts:
            part.done()


class Tracked:
    """An item in the pipeline with its lineage (never given to stage functions).

    Ordered like its item, so that a priority queue holding it sorts the items.
    """

    __slots__ = ("item", "ticket")

    def __init__(self, item: object, ticket: Lineage) -> None:
        self.item = item
        self.ticket = ticket

    def __lt__(self, other: object) -> bool:
        inner = other.item if isinstance(other, Tracked) else other
        return bool(self.item < inner)  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"Tracked({self.item!r})"


def batch_of(entries: list[object]) -> Tracked:
    """One unit for a batch: the list of the items, holding all their tickets."""
    items: list[object] = []
    tickets: list[Lineage] = []
    for entry in entries:
        assert isinstance(entry, Tracked)
        items.append(entry.item)
        tickets.append(entry.ticket)
    return Tracked(items, Tickets(tickets))


def finish(value: object) -> None:
    """``value`` has reached the end of the pipeline: its unit ends."""
    if type(value) is Tracked:
        value.ticket.done()


class TrackedSource(abc.ABC):
    """A source whose items are acknowledged once they have left the pipeline.

    It yields :class:`Tracked` items; the run calls :meth:`settle` once, after every
    task of the run has ended (whatever ended it), so that the source can send what
    its tickets told it and release what it holds.
    """

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Tracked]:
        """Yield the items, each with its ticket."""

    @abc.abstractmethod
    async def settle(self) -> None:
        """The run has ended: acknowledge what was completed, release the rest."""


# -- wrapping stage functions -------------------------------------------------------------
def carry(fn: Callable[[object], Awaitable[object]]) -> Callable[[object], Awaitable[object]]:
    """A map stage's function over tracked entries: the output carries the entry's ticket."""

    async def call(entry: Any) -> object:
        ticket = entry.ticket
        result = await fn(entry.item)
        if result is DROP:
            ticket.done()  # filtered: the unit ends here
            return DROP
        if result.__class__ is Last:
            return Last(Tracked(cast("Last[object]", result).value, ticket))
        return Tracked(result, ticket)

    return call


def unwrap(fn: Callable[[object], Awaitable[object]]) -> Callable[[object], Awaitable[object]]:
    """A classifier over tracked entries: it sees the item (the entry is routed as it is)."""

    async def call(entry: Any) -> object:
        return await fn(entry.item)

    return call


def spread(
    fn: Callable[[object], AsyncGenerator[object, None]],
) -> Callable[[object], AsyncGenerator[object, None]]:
    """A fan-out function over tracked entries: each output is one more unit of the ticket.

    While the function runs it holds a unit of its own, so that outputs finished early
    cannot end the ticket before the last output exists. The entry's own unit ends when
    the function returns (its outputs carry on); when it raises, the failure ends it.
    """

    async def outputs(entry: Any) -> AsyncGenerator[object, None]:
        ticket = entry.ticket
        ticket.add()  # the function's own hold
        returned = False
        try:
            inner = fn(entry.item)
            try:
                async for value in inner:
                    ticket.add()
                    yield Tracked(value, ticket)
            finally:
                await inner.aclose()
            returned = True
        finally:
            ticket.done()  # the hold
            if returned:
                ticket.done()  # the entry's own unit: its outputs carry on

    return outputs
