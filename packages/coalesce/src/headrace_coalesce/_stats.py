"""Counters, the frozen snapshot and the events of a batcher or loader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, final

from headrace_core.lowlevel import EventLog
from headrace_core.stats import Counter, Listener, Listeners

__all__ = ["CoalesceEvent", "CoalesceStats", "logging_events"]

#: The package's event records on ``headrace.coalesce``.
events: Final = EventLog("headrace.coalesce")
_enabled = events.logger.isEnabledFor


def logging_events() -> bool:
    """Whether batch events are logged now (DEBUG on ``headrace.coalesce``): one call."""
    return _enabled(logging.DEBUG)


EventKind = Literal["dispatched", "completed", "failed", "handed_over", "dropped"]


@final
@dataclass(frozen=True)
class CoalesceStats:
    """A frozen snapshot of one ``@batch`` function or one ``Loader``.

    Attributes:
        calls: decorated calls (or ``load`` keys) made.
        batches: bulk calls run (a rerun after a leader hand-over counts).
        items: items passed to bulk calls (after de-duplication, cancelled items excluded).
        deduplicated: calls served by an identical item of another caller in the same batch.
        failed_batches: bulk calls that raised or returned a mis-shaped result.
        cancelled: calls that ended cancelled.
        in_flight: bulk calls running now (not callers).
        batch_sizes: number of items in a bulk call -> how many bulk calls had that size.
        cache_hits: ``load`` calls answered from the cache (a pending entry included).
    """

    calls: int
    batches: int
    items: int
    deduplicated: int
    failed_batches: int
    cancelled: int
    in_flight: int
    batch_sizes: Mapping[int, int]
    cache_hits: int = 0


@final
@dataclass(frozen=True, slots=True)
class CoalesceEvent:
    """One transition of a batch, given to listeners after the state has changed.

    Attributes:
        kind: ``"dispatched"`` (a bulk call starts), ``"completed"`` (its results were
            routed), ``"failed"`` (it raised or returned a mis-shaped result),
            ``"handed_over"`` (its leader was cancelled and the next live caller takes
            over) or ``"dropped"`` (every caller was cancelled before dispatch).
        at: the loop time of the transition.
        size: the number of items in the batch.
        name: the batched function's qualified name, or ``"Loader(<load_fn>)"``.
        error: the exception of a failed batch, else ``None``.
    """

    kind: EventKind
    at: float
    size: int
    name: str
    error: BaseException | None = None


class _Recorder:
    """The counters behind ``stats()``; hot paths bump them directly.

    A bulk call is counted twice: in ``sizes`` (size -> bulk calls of that size) when it
    starts, and in ``settled`` when it ends. ``batches``, ``items`` and ``in_flight`` are
    derived from the two when a snapshot is taken, so a bulk call costs two updates.
    """

    __slots__ = (
        "cache_hits",
        "calls",
        "cancelled",
        "deduplicated",
        "failed",
        "kind",
        "listeners",
        "listening",
        "name",
        "settled",
        "sizes",
    )

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind  # "@batch" or "Loader", in log records
        self.calls = Counter()
        self.deduplicated = Counter()
        self.failed = Counter()
        self.cancelled = Counter()
        self.cache_hits = Counter()
        self.sizes: dict[int, int] = {}  # bulk calls started, by size
        self.settled = 0  # bulk calls ended (however they ended)
        self.listeners: Listeners[CoalesceEvent] = Listeners("headrace.coalesce", name)
        self.listening = False  # a plain flag: the hot paths check it twice per batch

    def dispatched(self, size: int) -> None:
        """Count a bulk call that starts now (the caller emits the event)."""
        sizes = self.sizes
        sizes[size] = sizes.get(size, 0) + 1

    def undispatched(self, size: int) -> None:
        """Take back :meth:`dispatched` for a bulk call that was never made."""
        self.sizes[size] -= 1

    def emit(self, kind: EventKind, size: int, error: BaseException | None = None) -> None:
        """Fire an event; raises only a listener's ``KeyboardInterrupt``/``SystemExit``."""
        if _enabled(logging.DEBUG):
            events.debug(
                "batch %s: %d item(s)%s",
                kind,
                size,
                "" if error is None else f" ({type(error).__name__})",
                kind=self.kind,
                component=self.name,
                event=kind,
                size=size,
                error_type=None if error is None else type(error).__name__,
            )
        if not self.listeners:
            return
        try:
            at = asyncio.get_running_loop().time()
        except RuntimeError:  # pragma: no cover - events are emitted inside a loop
            at = 0.0
        self.listeners.emit(CoalesceEvent(kind, at, size, self.name, error))

    async def aclose(self) -> None:
        await self.listeners.aclose()

    def add_listener(self, callback: Listener[CoalesceEvent]) -> Callable[[], None]:
        remove = self.listeners.add(callback)
        self.listening = True

        def remove_listener() -> None:
            remove()
            self.listening = bool(self.listeners)

        return remove_listener

    def snapshot(self) -> CoalesceStats:
        sizes = sorted(self.sizes.items())
        batches = sum(n for _, n in sizes)
        return CoalesceStats(
            calls=self.calls.value,
            batches=batches,
            items=sum(size * n for size, n in sizes),
            deduplicated=self.deduplicated.value,
            failed_batches=self.failed.value,
            cancelled=self.cancelled.value,
            in_flight=batches - self.settled,
            batch_sizes={size: n for size, n in sizes if n},
            cache_hits=self.cache_hits.value,
        )
