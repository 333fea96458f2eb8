"""The release order of an ordered stage: results held until every earlier item is out."""

from __future__ import annotations

import asyncio


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
    """Which items of an ordered stage were taken, which released, and what is held.

    Items are numbered as they enter the stage's input (``0, 1, 2, ...``). A worker that
    finishes item ``n`` releases its result at once if every earlier item is out, and
    then whatever it unblocked; otherwise it holds the result here. One worker releases
    at a time (``emitting``), so outputs leave in number order even while the release
    waits for room downstream.

    Attributes:
        taken: items workers have taken from the input.
        getting: workers waiting on the input for an item (each will take one).
        released: the number of the next item to release.
        held: finished items waiting for an earlier one, by number: a result, ``HOLE``,
            ``Outputs`` or ``Last``.
        emitting: a worker is releasing.
        waiters: workers waiting for the window to open: with a FIFO input, a worker
            takes no item while ``taken + getting - released`` reaches the worker target,
            so the stage holds at most that many items and the flow's backpressure bound
            holds.
    """

    __slots__ = ("emitting", "getting", "held", "released", "taken", "waiters")

    def __init__(self) -> None:
        self.taken = 0
        self.getting = 0
        self.released = 0
        self.held: dict[int, object] = {}
        self.emitting = False
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        """Wake every worker waiting for room."""
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
