"""Turning positional stage forms into a flat graph of named nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_int
from headrace_flow._queues import QueueFactory, fifo_queue
from headrace_flow._scaling import FixedScaling, as_strategy
from headrace_flow._stages import FLOW, ROUTER, Stage, as_stage

if TYPE_CHECKING:
    from headrace_flow._flow import Flow


@dataclass
class Node:
    """One stage of a compiled flow (router arms are nodes too)."""

    name: str
    stage: Stage[Any, Any]
    next: int | None = None
    arms: dict[str, int] = field(default_factory=dict)
    default: int | None = None
    baked: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.stage.kind

    @property
    def is_tail(self) -> bool:
        return self.next is None and self.kind != ROUTER


class _Compiler:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.subflows = 0
        self.routers = 0

    def add_seq(self, parts: list[Any], prefix: str | None) -> tuple[int | None, list[int]]:
        first: int | None = None
        tails: list[int] = []
        for part in parts:
            head, new_tails = self.add_one(part, prefix, None)
            if head is None:
                continue
            if first is None:
                first = head
            for tail in tails:
                self.nodes[tail].next = head
            tails = new_tails
        return first, tails

    def _prefixed(self, prefix: str | None, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def add_one(
        self, part: Any, prefix: str | None, forced_name: str | None
    ) -> tuple[int | None, list[int]]:
        st = as_stage(part)
        if st.kind == FLOW:
            return self._inline(st, prefix, forced_name)
        if st.kind == ROUTER:
            return self._router(st, prefix, forced_name)
        name = forced_name if forced_name is not None else self._prefixed(prefix, st.display_name)
        self.nodes.append(Node(name, st))
        index = len(self.nodes) - 1
        return index, [index]

    def _inline(
        self, st: Stage[Any, Any], prefix: str | None, forced_name: str | None
    ) -> tuple[int | None, list[int]]:
        sub: Flow[Any, Any] = st.target
        if forced_name is not None:
            own = forced_name
        elif st.name is not None:
            own = self._prefixed(prefix, st.name)
        else:
            own = self._prefixed(prefix, f"_subflow_{self.subflows}")
            self.subflows += 1
        offset = len(self.nodes)
        inner = sub._compiled()
        for node in inner:
            baked = dict(node.baked)
            baked.update(sub._baked_for(node.name))
            self.nodes.append(
                Node(
                    f"{own}.{node.name}",
                    node.stage,
                    None if node.next is None else node.next + offset,
                    {label: j + offset for label, j in node.arms.items()},
                    None if node.default is None else node.default + offset,
                    baked,
                )
            )
        if not inner:
            return None, []
        tails = [offset + i for i, node in enumerate(inner) if node.is_tail]
        return offset, tails

    def _router(
        self, st: Stage[Any, Any], prefix: str | None, forced_name: str | None
    ) -> tuple[int | None, list[int]]:
        if forced_name is not None:
            name = forced_name
        elif st.name is not None:
            name = self._prefixed(prefix, st.name)
        else:
            base = getattr(st.target, "__name__", None)
            if not isinstance(base, str) or base == "<lambda>":
                base = f"_router_{self.routers}"
            self.routers += 1
            name = self._prefixed(prefix, base)
        name = self._unique(name)
        self.nodes.append(Node(name, st))
        index = len(self.nodes) - 1
        tails: list[int] = []
        arms = dict(st.arms or {})
        if st.default is not None:
            arms_default: Any = st.default
        else:
            arms_default = None
        for label, arm in arms.items():
            head, arm_tails = self._arm(arm, f"{name}.{label}")
            if head is not None:
                self.nodes[index].arms[label] = head
                tails.extend(arm_tails)
        if arms_default is not None:
            head, arm_tails = self._arm(arms_default, f"{name}.default")
            self.nodes[index].default = head
            tails.extend(arm_tails)
        return index, tails

    def _arm(self, arm: Any, name: str) -> tuple[int | None, list[int]]:
        st = as_stage(arm)
        if st.kind == FLOW and st.name is None:
            return self._inline(st, None, name)
        if st.kind in (FLOW, ROUTER):
            return self.add_one(st, None, name)
        return self.add_one(st, None, name)

    def _unique(self, name: str) -> str:
        taken = {node.name for node in self.nodes}
        if name not in taken:
            return name
        n = 2
        while f"{name}_{n}" in taken:
            n += 1
        return f"{name}_{n}"


def compile_parts(parts: list[Any]) -> list[Node]:
    """Compile stage forms into nodes with unique names (collisions get ``_2``, ``_3``)."""
    compiler = _Compiler()
    compiler.add_seq(parts, None)
    nodes = compiler.nodes
    counts: dict[str, int] = {}
    taken: set[str] = set()
    renames: dict[int, str] = {}
    for i, node in enumerate(nodes):
        base = node.name
        counts[base] = counts.get(base, 0) + 1
        name = base if counts[base] == 1 else f"{base}_{counts[base]}"
        while name in taken:
            counts[base] += 1
            name = f"{base}_{counts[base]}"
        taken.add(name)
        renames[i] = name
    for i, node in enumerate(nodes):
        node.name = renames[i]
    return nodes


def plan(
    nodes: list[Node], defaults: dict[str, Any], stage_config: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Resolve each node's settings: configure() > stage() > sub-flow > defaults > built-in."""
    out = []
    for node in nodes:
        st = node.stage
        options = st.options
        config: dict[str, Any] = {}
        for key in ("scaling", "queue", "queue_size", "ordered"):
            value = getattr(options, key)
            if value is not None:
                config[key] = value
        for key, value in node.baked.items():
            config.setdefault(key, value)
        for key, value in defaults.items():
            config.setdefault(key, value)
        config.update(stage_config.get(node.name, {}))
        out.append(
            {
                "name": node.name,
                "kind": st.kind,
                "target": st.target,
                "options": options,
                "scaling": config.get("scaling") or FixedScaling(1),
                "queue": config.get("queue") or fifo_queue,
                "queue_size": config.get("queue_size", 1),
                "ordered": config.get("ordered", False),
                "next": node.next,
                "arms": node.arms,
                "default": node.default,
                "size": st.size,
                "max_wait": st.max_wait,
            }
        )
    return out


def settings(
    scaling: Any, queue: QueueFactory | None, queue_size: int | None, ordered: bool | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if scaling is not None:
        out["scaling"] = as_strategy(scaling)
    if queue is not None:
        if not callable(queue):
            raise ConfigurationError.argument_error("queue", queue, "must be a queue factory")
        out["queue"] = queue
    if queue_size is not None:
        out["queue_size"] = check_int("queue_size", queue_size, ge=0)
    if ordered is not None:
        if not isinstance(ordered, bool):
            raise ConfigurationError.argument_error("ordered", ordered, "must be a bool")
        out["ordered"] = ordered
    return out
