"""The release order of an ordered stage: results held until every earlier item is out."""

from __future__ import annotations

from headrace_flow._channel import Channel


class _Hole:
    __slots__ = ()

    def __repr__(self) -> str:
        return "HOLE"


HOLE = _Hole()
"""Held for an item that has no output (``DROP``, a failure, a fan-out that yielded none)."""


class Outputs:
    """Every output of one item of an ordered fan-out stage, released together."""

    __slots__ = ("values",)

    def __init__(self, values: list[object]) -> None:
        self.values = values


class Reorder:
    """Which items of an ordered stage are released, and which are held until they go.

    Items are numbered as they enter the stage's input (``0, 1, 2, ...``). A worker that
    finishes item ``n`` releases its result at once if every earlier item is out, and
    then whatever it unblocked; otherwise it holds the result here, by number: no heap,
    the next number to release and a dict of early arrivals serve. One worker releases
    at a time (``emitting``), so outputs leave in number order even while the release
    waits for room downstream.

    With a FIFO input, the stage's window bounds what it holds: the input hands out no
    item numbered ``released + limit`` or more (its gate; ``limit`` is the worker target,
    at least 1), so at most that many items are in the workers' hands or held, and the
    flow's backpressure bound holds. A worker with nothing to take waits on the input
    like any idle worker; :meth:`window` moves the gate as items are released (the
    worker loop does it inline on the hot path) and when the target changes.

    Attributes:
        input: the stage's (numbered) input.
        released: the number of the next item to release.
        held: finished items waiting for an earlier one, by number: a result, ``HOLE``,
            ``Outputs`` or ``Last``.
        emitting: a worker is releasing.
    """

    __slots__ = ("emitting", "held", "input", "released")

    def __init__(self, input: Channel) -> None:
        self.input = input
        self.released = 0
        self.held: dict[int, object] = {}
        self.emitting = False

    @property
    def taken(self) -> int:
        """The items that left the input: numbered, and no longer stored in it.

        (Taken by the workers; at a cut, also the ones the cut discarded.)
        """
        return self.input.seq - self.input.size

    def window(self, limit: int) -> None:
        """Let the input hand out items up to ``limit`` past the next release (FIFO only).

        Args:
            limit: the worker target, at least 1.
        """
        ch = self.input
        if ch.fifo:
            ch.gate = self.released + limit
            if ch.getters and ch.size:
                ch.hand_out()
