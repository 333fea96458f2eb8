"""Frozen statistics of a stage and of a flow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import final

from headrace_flow._errors import DropReason

__all__ = ["FlowStats", "StageSnapshot", "StageStats"]


@final
@dataclass(frozen=True, slots=True)
class StageStats:
    """One stage's state and counters at one instant (times are loop times).

    Attributes:
        name: the stage's name (``stage_name`` is an alias).
        workers: live worker tasks (busy + idle).
        busy_workers: workers processing an item.
        idle_workers: workers waiting for an item (or starting).
        queue_length: items waiting in the stage's input queue (in-flight excluded).
        processed: successful calls (the sink stage included).
        errors: failed calls (after retries).
        filtered: ``DROP`` returns.
        peak_workers: the most workers the stage had at once.
        oldest_item_age: seconds the oldest waiting item has waited (0.0 when none).
        last_enqueue_at: when an item last entered the queue (``None``: never).
        last_dequeue_at: when a worker last took an item (``None``: never).
        last_scale_up_at: when the stage last gained a worker by scaling (``None``: never).
        last_scale_down_at: when the stage last lost a worker by scaling (``None``: never).
        last_error_at: when a call last failed (``None``: never).
        oldest_item_enqueued_at: the enqueue time of the oldest waiting item (``None``: none).
        at: when the snapshot was taken.
        input_closed: every producer of the stage closed its input: no new item will come
            (``dump(mode="stats")`` shows it as flowrhythm's ``queue_drained``).
    """

    name: str
    workers: int = 0
    busy_workers: int = 0
    idle_workers: int = 0
    queue_length: int = 0
    processed: int = 0
    errors: int = 0
    filtered: int = 0
    peak_workers: int = 0
    oldest_item_age: float = 0.0
    last_enqueue_at: float | None = None
    last_dequeue_at: float | None = None
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    last_error_at: float | None = None
    oldest_item_enqueued_at: float | None = None
    at: float = 0.0
    input_closed: bool = False

    @property
    def stage_name(self) -> str:
        """The stage's name (flowrhythm's field name)."""
        return self.name

    @property
    def total_workers(self) -> int:
        """``busy_workers + idle_workers``."""
        return self.busy_workers + self.idle_workers

    @property
    def utilization(self) -> float:
        """``busy_workers / total_workers`` now (0.0 with no workers)."""
        total = self.busy_workers + self.idle_workers
        return self.busy_workers / total if total else 0.0


@final
@dataclass(slots=True)
class StageSnapshot:
    """What a flowrhythm-style scaling strategy sees (``on_enqueue`` / ``on_dequeue``).

    Kept with flowrhythm's field names so strategies written for it work unchanged.
    """

    stage_name: str
    busy_workers: int
    idle_workers: int
    queue_length: int
    oldest_item_enqueued_at: float | None = None
    last_enqueue_at: float | None = None
    last_dequeue_at: float | None = None
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    last_error_at: float | None = None

    @property
    def total_workers(self) -> int:
        """``busy_workers + idle_workers``."""
        return self.busy_workers + self.idle_workers

    @property
    def utilization(self) -> float:
        """``busy_workers / total_workers`` (0.0 with no workers)."""
        total = self.busy_workers + self.idle_workers
        return self.busy_workers / total if total else 0.0


def _empty_stages() -> Mapping[str, StageStats]:
    return MappingProxyType({})


def _no_drops() -> Mapping[DropReason, int]:
    return MappingProxyType({})


@final
@dataclass(frozen=True, slots=True)
class FlowStats:
    """A flow's counters: live during a run, final after it.

    Two of them count different things: ``accepted`` counts the *items taken in* (from
    the source or ``send()``), ``completed`` counts the *outputs handed out* by the last
    stage (to ``iterate()`` or out of the sink), after any regrouping. A ``batched(10)``
    last stage that took 500 items hands out 50 lists: ``accepted == 500``,
    ``completed == outputs_delivered == 50``; a generator stage can hand out more outputs
    than it took. For map/filter pipelines (one output per item at most)
    ``accepted == completed + failed + filtered + discarded`` once the run has ended
    (also after ``stop()``).

    Attributes:
        stages: each stage's :class:`StageStats`, by name, in pipeline order.
        accepted: items taken in from the source (or ``send()``).
        completed: outputs delivered by the last stage (see :attr:`outputs_delivered`):
            one per list of a ``batched`` last stage, one per value a generator yields.
        failed: items whose stage call failed (routed to the error handler).
        filtered: items dropped with ``DROP`` (or a router miss).
        discarded: items pulled but never finished (``stop()``, an abort, ``Last``).
        running: whether a run is in progress.
        source_errors: exceptions the source raised (``SourceError`` events).
        drops: ``Dropped`` events by reason (``ROUTER_MISS``, ``UPSTREAM_TERMINATED``).
        started: whether the flow has run (``False``: no run yet, every counter is zero).
    """

    stages: Mapping[str, StageStats] = field(default_factory=_empty_stages)
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    filtered: int = 0
    discarded: int = 0
    running: bool = False
    source_errors: int = 0
    drops: Mapping[DropReason, int] = field(default_factory=_no_drops)
    started: bool = False

    @property
    def outputs_delivered(self) -> int:
        """Outputs the last stage delivered (``completed``), not items taken in (``accepted``).

        After a ``batched`` last stage this counts the lists, not the items in them.
        """
        return self.completed

    @property
    def transformer_errors(self) -> int:
        """Failed stage calls, all stages together (the sum of their ``errors``)."""
        return sum(s.errors for s in self.stages.values())

    @property
    def in_flight(self) -> int:
        """``accepted - completed - failed - filtered - discarded`` (map/filter pipelines)."""
        return self.accepted - self.completed - self.failed - self.filtered - self.discarded

    def __repr__(self) -> str:
        drops = {reason.name: n for reason, n in self.drops.items()}
        return (
            f"FlowStats(accepted={self.accepted} items in, "
            f"completed={self.completed} outputs delivered, failed={self.failed}, "
            f"filtered={self.filtered}, discarded={self.discarded}, running={self.running}, "
            f"source_errors={self.source_errors}, drops={drops}, started={self.started}, "
            f"stages={list(self.stages)})"
        )
