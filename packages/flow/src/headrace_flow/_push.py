"""``PushHandle``: feeding a run by hand."""

from __future__ import annotations

from typing import Generic, TypeVar, final

from headrace_flow._errors import FlowClosed
from headrace_flow._run import Run
from headrace_flow._state import Aborted

__all__ = ["PushHandle"]

In = TypeVar("In")


@final
class PushHandle(Generic[In]):
    """Feeds a flow run by hand (from ``async with flow.push() as handle``)."""

    __slots__ = ("_completed", "_run")

    def __init__(self, run: Run) -> None:
        self._run = run
        self._completed = False

    @property
    def completed(self) -> bool:
        """Whether ``complete()`` was called (or the block was left)."""
        return self._completed

    async def send(self, item: In) -> None:
        """Give ``item`` to the first stage, waiting while its queue is full.

        Raises:
            FlowClosed: after ``complete()``, after the block, or when the run ended
                (stopped or aborted by an error).
        """
        run = self._run
        if self._completed:
            raise FlowClosed("send() after complete()")
        if run.ended or run.draining:
            raise FlowClosed("the flow run has ended")
        first = run.stages[0]
        ch = first.input
        run.tally.accepted += 1
        try:
            if not ch.try_put(item):
                await ch.put(item)
        except BaseException:
            run.tally.accepted -= 1
            raise
        if first.scaler.dynamic:
            try:
                run.scale(first, tick=False, enqueue=True)
            except Aborted:  # the scaling strategy failed: the run ended with its error
                raise FlowClosed("the flow run has ended") from None

    async def complete(self) -> None:
        """Signal the end of the stream (idempotent); the flow finishes what it has."""
        if self._completed:
            return
        self._completed = True
        if not self._run.ended:
            self._run.close_source()
