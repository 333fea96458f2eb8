"""Compiling stage forms into a graph of named nodes, and resolving it into a ``Plan``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_int
from headrace_flow._plan import (
    NO_SETTINGS,
    Graph,
    Kind,
    Node,
    Plan,
    Settings,
    StagePlan,
)
from headrace_flow._queues import QueueFactory, fifo_queue
from headrace_flow._scaling import FixedScaling, as_strategy
from headrace_flow._stages import Composite, Stage, as_stage

#: (the index of a part's first node, the indices of the nodes whose outputs leave it)
Span = tuple[int | None, list[int]]


class _Compiler:
    """Appends nodes in pipeline order; links are indices, set as parts are joined."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.subflows = 0
        self.routers = 0

    def add_seq(self, parts: Sequence[object], prefix: str | None) -> Span:
        first: int | None = None
        tails: list[int] = []
        for part in parts:
            head, new_tails = self.add_one(as_stage(part), prefix, None)
            if head is None:
                continue
            if first is None:
                first = head
            for tail in tails:
                self.nodes[tail] = replace(self.nodes[tail], next=head)
            tails = new_tails
        return first, tails

    def _prefixed(self, prefix: str | None, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def add_one(self, st: Stage[object, object], prefix: str | None, forced: str | None) -> Span:
        if st.kind is Kind.FLOW:
            return self._inline(st, prefix, forced)
        if st.kind is Kind.ROUTER:
            return self._router(st, prefix, forced)
        name = forced if forced is not None else self._prefixed(prefix, st.display_name)
        return self._append(st, name)

    def _append(self, st: Stage[object, object], name: str) -> Span:
        self.nodes.append(
            Node(
                name=name,
                kind=st.kind,
                target=st.target,
                own=st.options,
                calls=st.calls,
                batching=st.batching,
            )
        )
        index = len(self.nodes) - 1
        return index, [index]

    def _inline(self, st: Stage[object, object], prefix: str | None, forced: str | None) -> Span:
        sub = st.target
        assert isinstance(sub, Composite)  # (the kind says so)
        if forced is not None:
            own = forced
        elif st.name is not None:
            own = self._prefixed(prefix, st.name)
        else:
            own = self._prefixed(prefix, f"_subflow_{self.subflows}")
            self.subflows += 1
        offset = len(self.nodes)
        inner = sub._graph()
        for node in inner:
            self.nodes.append(
                replace(
                    node,
                    name=f"{own}.{node.name}",
                    next=None if node.next is None else node.next + offset,
                    arms={label: j + offset for label, j in node.arms.items()},
                    default=None if node.default is None else node.default + offset,
                )
            )
        if not inner:
            return None, []
        return offset, [offset + i for i, node in enumerate(inner) if node.is_tail]

    def _router(self, st: Stage[object, object], prefix: str | None, forced: str | None) -> Span:
        if forced is not None:
            name = forced
        elif st.name is not None:
            name = self._prefixed(prefix, st.name)
        else:
            base = getattr(st.target, "__name__", None)
            if not isinstance(base, str) or base == "<lambda>":
                base = f"_router_{self.routers}"
            self.routers += 1
            name = self._prefixed(prefix, base)
        index = len(self.nodes)
        self._append(st, self._unique(name))
        tails: list[int] = []
        arms: dict[str, int] = {}
        for label, arm in st.arms.items():
            head, arm_tails = self._arm(arm, f"{name}.{label}")
            if head is not None:
                arms[label] = head
                tails.extend(arm_tails)
        default: int | None = None
        if st.default is not None:
            default, arm_tails = self._arm(st.default, f"{name}.default")
            tails.extend(arm_tails)
        self.nodes[index] = replace(self.nodes[index], arms=arms, default=default)
        return index, tails

    def _arm(self, arm: object, name: str) -> Span:
        st = as_stage(arm)
        if st.kind is Kind.FLOW and st.name is None:
            return self._inline(st, None, name)
        return self.add_one(st, None, name)

    def _unique(self, name: str) -> str:
        taken = {node.name for node in self.nodes}
        if name not in taken:
            return name
        n = 2
        while f"{name}_{n}" in taken:
            n += 1
        return f"{name}_{n}"


def compile_parts(parts: Sequence[object]) -> Graph:
    """Compile stage forms into nodes with unique names (collisions get ``_2``, ``_3``)."""
    compiler = _Compiler()
    compiler.add_seq(parts, None)
    counts: dict[str, int] = {}
    taken: set[str] = set()
    nodes: list[Node] = []
    for node in compiler.nodes:
        base = node.name
        counts[base] = counts.get(base, 0) + 1
        name = base if counts[base] == 1 else f"{base}_{counts[base]}"
        while name in taken:
            counts[base] += 1
            name = f"{base}_{counts[base]}"
        taken.add(name)
        nodes.append(node if name == base else replace(node, name=name))
    return tuple(nodes)


def bake(graph: Graph, defaults: Settings, overrides: Mapping[str, Settings]) -> Graph:
    """Return ``graph`` as a sub-flow: each node's own flow's settings baked under its own.

    (A sub-flow's defaults and ``configure()`` settings sit between the stage's own
    settings and the outer flow's defaults.)
    """
    return tuple(
        replace(node, baked=overrides.get(node.name, NO_SETTINGS).over(defaults).over(node.baked))
        for node in graph
    )


def resolve(graph: Graph, defaults: Settings, overrides: Mapping[str, Settings]) -> Plan:
    """Resolve each node's settings: configure() > stage() > sub-flow > defaults > built-in."""
    stages: list[StagePlan] = []
    for i, node in enumerate(graph):
        config = overrides.get(node.name, NO_SETTINGS).over(
            node.own.over(node.baked.over(defaults))
        )
        batched = node.kind is Kind.BATCHED
        stages.append(
            StagePlan(
                index=i,
                name=node.name,
                kind=node.kind,
                target=node.target,
                calls=node.calls,
                # a batched stage has one worker, whatever the settings say
                scaling=FixedScaling(1) if batched or config.scaling is None else config.scaling,
                queue=fifo_queue if config.queue is None else config.queue,
                queue_size=1 if config.queue_size is None else config.queue_size,
                ordered=bool(config.ordered),
                next=node.next,
                arms=node.arms,
                default=node.default,
                batching=node.batching,
            )
        )
    return Plan(tuple(stages))


def settings(
    scaling: object, queue: QueueFactory | None, queue_size: int | None, ordered: bool | None
) -> Settings:
    """Validate ``configure()``-style settings (``None``: not set).

    Raises:
        ConfigurationError: naming the first bad one.
    """
    strategy = None if scaling is None else as_strategy(scaling)
    if queue is not None and not callable(queue):
        raise ConfigurationError.argument_error("queue", queue, "must be a queue factory")
    size = None if queue_size is None else check_int("queue_size", queue_size, ge=0)
    if ordered is not None and not isinstance(ordered, bool):
        raise ConfigurationError.argument_error("ordered", ordered, "must be a bool")
    return Settings(scaling=strategy, queue=queue, queue_size=size, ordered=ordered)
