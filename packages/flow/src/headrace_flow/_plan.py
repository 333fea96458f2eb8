"""The plan of a flow: frozen descriptions of its stages, compiled once, read by the engine.

A flow's stage forms compile to a graph of nodes (``Node``: named and linked, their
settings still in layers: the stage's own, a sub-flow's); resolving the layers against the
flow's defaults and ``configure()`` calls gives the ``Plan``: one ``StagePlan`` per stage,
all settings final. A run is built from a plan; ``dump()`` describes one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from headrace_core.backoff import Backoff, exponential
from headrace_flow._queues import QueueFactory
from headrace_flow._scaling import ScalingStrategy

#: A stage target as the user gave it: an async item function, an async generator
#: function, a context manager factory, a classifier (the boundary where user code enters).
Target: TypeAlias = Any


@enum.unique
class Kind(enum.StrEnum):
    """What a stage's target is, and so how its workers run it."""

    MAP = "map"
    """``async def f(x) -> y`` (``return DROP`` filters)."""

    GEN = "gen"
    """``async def f(x): yield ...``: fan-out, zero or more outputs per item."""

    CM = "cm"
    """``() -> async context manager`` giving the item function, entered per worker."""

    BATCHED = "batched"
    """``batched(size, max_wait=)``: items grouped into lists, one worker."""

    ROUTER = "router"
    """``router(classifier, **arms)``: each item goes to the arm its label names."""

    FLOW = "flow"
    """A sub-flow: its stages are inlined (only before compiling)."""


def _no_links() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings that ``stage()``, ``configure()`` and the defaults set.

    ``None`` means "not set at this level": :meth:`over` lets a higher level's settings
    win over a lower one's.
    """

    scaling: ScalingStrategy | None = None
    queue: QueueFactory | None = None
    queue_size: int | None = None
    ordered: bool | None = None

    def over(self, lower: Settings) -> Settings:
        """Return these settings, with ``lower``'s wherever these are not set."""
        return Settings(
            scaling=lower.scaling if self.scaling is None else self.scaling,
            queue=lower.queue if self.queue is None else self.queue,
            queue_size=lower.queue_size if self.queue_size is None else self.queue_size,
            ordered=lower.ordered if self.ordered is None else self.ordered,
        )


NO_SETTINGS = Settings()


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How each item call of a stage is made: its deadline and its retries."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    initial_delay: float = 0.0
    backoff_factor: float = 2.0
    max_delay: float = float("inf")
    jitter: float = 0.0
    backoff: Backoff | None = None

    def schedule(self) -> Backoff:
        """The retry delays' schedule (core backoff)."""
        if self.backoff is not None:
            return self.backoff
        return exponential(
            base=self.initial_delay,
            factor=self.backoff_factor,
            max=max(self.max_delay, self.initial_delay),
            jitter=self.jitter,
        )


PLAIN_CALLS = CallOptions()


@dataclass(frozen=True, slots=True)
class Batching:
    """The settings of a ``batched()`` stage."""

    size: int
    max_wait: float | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """One stage of a compiled graph: named and linked, its settings still layered.

    Attributes:
        name: the unique name.
        kind: what the target is (never ``FLOW``: sub-flows are inlined).
        target: the user's callable (``None`` for ``batched``).
        own: the settings the stage was given with ``stage()``.
        calls: its per-item deadline and retries.
        batching: for ``batched`` stages.
        next: the index of the stage its outputs go to (``None``: out of the flow).
        arms: for a router, label -> the index of the arm's first stage.
        default: for a router, the index of the default arm's first stage.
        baked: the settings of the sub-flows it came from (their defaults and
            ``configure()``), under ``own``.
    """

    name: str
    kind: Kind
    target: Target
    own: Settings = NO_SETTINGS
    calls: CallOptions = PLAIN_CALLS
    batching: Batching | None = None
    next: int | None = None
    arms: Mapping[str, int] = field(default_factory=_no_links)
    default: int | None = None
    baked: Settings = NO_SETTINGS

    @property
    def is_tail(self) -> bool:
        """Whether its outputs leave the flow (or the sub-flow it is part of)."""
        return self.next is None and self.kind is not Kind.ROUTER


Graph: TypeAlias = tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage of a plan: its place in the graph and its final settings.

    Attributes:
        index: the position in the plan.
        name: the unique name.
        kind: what the target is.
        target: the user's callable (``None`` for ``batched``).
        calls: its per-item deadline and retries.
        scaling: the scaling strategy.
        queue: the input queue's factory.
        queue_size: the input queue's bound (``0`` = unbounded).
        ordered: whether outputs are released in input order.
        next: the index of the stage its outputs go to (``None``: out of the flow).
        arms: for a router, label -> the index of the arm's first stage.
        default: for a router, the index of the default arm's first stage.
        batching: for ``batched`` stages.
    """

    index: int
    name: str
    kind: Kind
    target: Target
    calls: CallOptions
    scaling: ScalingStrategy
    queue: QueueFactory
    queue_size: int
    ordered: bool
    next: int | None = None
    arms: Mapping[str, int] = field(default_factory=_no_links)
    default: int | None = None
    batching: Batching | None = None

    @property
    def children(self) -> tuple[int, ...]:
        """The stages this one hands items to (a router's arms, or the next one)."""
        if self.kind is Kind.ROUTER:
            routes = tuple(self.arms.values())
            return routes if self.default is None else (*routes, self.default)
        return () if self.next is None else (self.next,)

    @property
    def numbered(self) -> bool:
        """Whether its input numbers items (an ordered stage that calls a function)."""
        return self.ordered and self.kind in _ORDERABLE


_ORDERABLE = frozenset({Kind.MAP, Kind.GEN, Kind.CM})


@dataclass(frozen=True, slots=True)
class Plan:
    """Every stage of a flow, in pipeline order (index 0 takes the source's items)."""

    stages: tuple[StagePlan, ...] = ()

    @property
    def names(self) -> list[str]:
        """The stages' names in order."""
        return [s.name for s in self.stages]

    def producers(self) -> list[int]:
        """How many producers feed each stage (the source counts for stage 0)."""
        counts = [0] * len(self.stages)
        if counts:
            counts[0] = 1
        for s in self.stages:
            for child in s.children:
                counts[child] += 1
        return counts

    def tails(self) -> list[int]:
        """The stages whose outputs leave the flow."""
        return [s.index for s in self.stages if s.kind is not Kind.ROUTER and s.next is None]

    def below(self, index: int) -> frozenset[int]:
        """Every stage an item can reach after stage ``index`` (not itself, unless a loop)."""
        seen: set[int] = set()
        todo = [index]
        while todo:
            for child in self.stages[todo.pop()].children:
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return frozenset(seen)
