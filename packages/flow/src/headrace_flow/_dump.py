"""``Flow.dump()``: the plan's structure or the stats, as text, JSON or a mermaid graph."""

from __future__ import annotations

import json

from headrace_core.lowlevel import safe_repr
from headrace_flow._plan import Kind, Plan, StagePlan
from headrace_flow._stats import FlowStats, StageStats


def _factory_name(spec: StagePlan) -> str:
    name = getattr(spec.queue, "__name__", None)
    return name if isinstance(name, str) else repr(spec.queue)


def _in_arm(plan: Plan, index: int, router: StagePlan, label: str) -> bool:
    """Whether stage ``index`` belongs to ``router``'s arm ``label`` (arms are named under it)."""
    if index <= router.index:
        return False
    name = plan.stages[index].name
    prefix = f"{router.name}.{label}"
    return name == prefix or name.startswith(prefix + ".")


def _arm_ends(plan: Plan) -> dict[int, int | None]:
    """The stages whose outputs leave a router's arm, with the stage they merge into.

    ``None``: the router's arms are the end of the flow (no merge stage).
    """
    ends: dict[int, int | None] = {}
    for r in plan.stages:
        if r.kind is not Kind.ROUTER:
            continue
        routes = dict(r.arms)
        if r.default is not None:
            routes["default"] = r.default
        for label, head in routes.items():
            if not _in_arm(plan, head, r, label):
                continue  # named otherwise: not recognisable as this arm
            todo, seen = [head], set()
            while todo:
                j = todo.pop()
                if j in seen:
                    continue
                seen.add(j)
                s = plan.stages[j]
                inside = [c for c in s.children if _in_arm(plan, c, r, label)]
                todo.extend(inside)
                if s.kind is not Kind.ROUTER and not inside:
                    ends[j] = s.next
    return ends


def _kind(spec: StagePlan, ends: dict[int, int | None]) -> str:
    """The kind in flowrhythm's words: ``classifier`` (router), ``arm-end``, ``transformer``."""
    if spec.kind is Kind.ROUTER:
        return "classifier"
    if spec.index in ends:
        return "arm-end"
    return "transformer"


def _structure(spec: StagePlan, ends: dict[int, int | None]) -> dict[str, object]:
    # flowrhythm's keys first, in its order; then headrace's own ("form", "ordered")
    info: dict[str, object] = {
        "index": spec.index,
        "name": spec.name,
        "scaling": repr(spec.scaling),
        "queue": {"factory": _factory_name(spec), "maxsize": spec.queue_size},
        "kind": _kind(spec, ends),
    }
    if spec.kind is Kind.ROUTER:
        info["arms"] = dict(spec.arms)
        info["default"] = spec.default
        info["downstream"] = None
    elif spec.index in ends:
        info["merge"] = ends[spec.index]
        info["downstream"] = spec.next
    else:
        info["downstream"] = spec.next
    info["form"] = spec.kind.value
    info["ordered"] = spec.ordered
    return info


def _text(plan: Plan) -> str:
    ends = _arm_ends(plan)
    lines = [f"flow ({len(plan.stages)} stages):"]
    tags = {Kind.ROUTER: " [router]"}
    names = [
        s.name + (" (arm-end)" if s.index in ends else tags.get(s.kind, "")) for s in plan.stages
    ]
    width = max((len(n) for n in names), default=4) + 2
    for s, name in zip(plan.stages, names, strict=True):
        if s.kind is Kind.ROUTER:
            arms = ", ".join(f"{label}->[{j}]" for label, j in s.arms.items())
            if s.default is not None:
                arms += f", default->[{s.default}]"
            dest = f"arms: {{{arms}}}"
        elif s.next is None:
            dest = "(sink)"
        else:
            dest = f"-> [{s.next}]" + (" (merge)" if s.index in ends else "")
        extra = " ordered" if s.ordered else ""
        lines.append(
            f"  [{s.index}] {name.ljust(width)} {dest:30s} "
            f"{safe_repr(s.scaling)} {_factory_name(s)}(maxsize={s.queue_size}){extra}"
        )
    return "\n".join(lines)


def _mermaid(plan: Plan) -> str:
    lines = ["flowchart LR"]
    for s in plan.stages:
        label = s.name.replace('"', "'")
        if s.kind is Kind.ROUTER:
            lines.append(f'    s{s.index}{{"{label}"}}')
        else:
            lines.append(f'    s{s.index}["{label}"]')
    for s in plan.stages:
        node = f"s{s.index}"
        if s.kind is Kind.ROUTER:
            for label, j in s.arms.items():
                lines.append(f"    {node} -->|{label}| s{j}")
            if s.default is not None:
                lines.append(f"    {node} -->|default| s{s.default}")
        elif s.next is not None:
            lines.append(f"    {node} --> s{s.next}")
    return "\n".join(lines)


NO_RUN = "flow stats: no run yet (call run(...) first)"


def _stage_stats(index: int, s: StageStats) -> dict[str, object]:
    # flowrhythm's keys first, in its order; then headrace's own
    return {
        "index": index,
        "name": s.name,
        "alive": s.workers,
        "busy": s.busy_workers,
        "idle": s.idle_workers,
        "queue_length": s.queue_length,
        "queue_drained": s.input_closed,
        "processed": s.processed,
        "errors": s.errors,
        "workers": s.workers,
        "filtered": s.filtered,
        "peak_workers": s.peak_workers,
        "utilization": s.utilization,
        "oldest_item_age": s.oldest_item_age,
    }


def _events(stats: FlowStats) -> dict[str, object]:
    return {
        "transformer_errors": stats.transformer_errors,
        "source_errors": stats.source_errors,
        "drops": {reason.name: n for reason, n in stats.drops.items()},
    }


def _stats(stats: FlowStats) -> dict[str, object]:
    if not stats.started:
        stages: list[dict[str, object]] = []
    else:
        stages = [_stage_stats(i, s) for i, s in enumerate(stats.stages.values())]
    return {
        "active": stats.running,
        "stages": stages,
        "events": _events(stats),
        "started": stats.started,
        "status": ("active" if stats.running else "completed") if stats.started else "no run yet",
        "running": stats.running,
        "accepted": stats.accepted,
        "completed": stats.completed,
        "outputs_delivered": stats.outputs_delivered,
        "failed": stats.failed,
        "filtered": stats.filtered,
        "discarded": stats.discarded,
    }


def _stats_text(stats: FlowStats) -> str:
    if not stats.started:
        return NO_RUN
    state = "active" if stats.running else "completed"
    lines = [f"flow stats ({state}):"]
    width = max((len(s.name) for s in stats.stages.values()), default=4) + 2
    for i, s in enumerate(stats.stages.values()):
        workers = f"{s.workers} alive ({s.busy_workers} busy, {s.idle_workers} idle)"
        queue = f"queue={s.queue_length}" + (" [drained]" if s.input_closed else "")
        lines.append(
            f"  [{i}] {s.name.ljust(width)} {workers:30s} {queue:18s} "
            f"processed={s.processed:<8d} errors={s.errors} filtered={s.filtered} "
            f"peak={s.peak_workers}"
        )
    lines.append("")
    lines.append("events:")
    lines.append(f"  transformer errors: {stats.transformer_errors}")
    lines.append(f"  source errors:      {stats.source_errors}")
    if stats.drops:
        lines.append("  drops:")
        lines.extend(f"    {reason.name}: {n}" for reason, n in stats.drops.items())
    else:
        lines.append("  drops: 0")
    lines.append("")
    lines.append(
        f"items: accepted={stats.accepted} (taken in) completed={stats.completed} "
        f"(outputs delivered by the last stage) failed={stats.failed} "
        f"filtered={stats.filtered} discarded={stats.discarded}"
    )
    return "\n".join(lines)


def _structures(plan: Plan) -> list[dict[str, object]]:
    ends = _arm_ends(plan)
    return [_structure(s, ends) for s in plan.stages]


def dump(plan: Plan, stats: FlowStats, mode: str, fmt: str) -> str:
    """Render a flow's ``plan`` or its ``stats`` (see ``Flow.dump``).

    Raises:
        ValueError: for an unknown mode or format.
    """
    if mode == "structure":
        if fmt == "text":
            return _text(plan)
        if fmt == "json":
            return json.dumps({"stages": _structures(plan)}, indent=2)
        if fmt == "mermaid":
            return _mermaid(plan)
        raise ValueError(f"format={safe_repr(fmt)}: expected 'text', 'json' or 'mermaid'")
    if mode == "stats":
        if fmt == "text":
            return _stats_text(stats)
        if fmt == "json":
            return json.dumps(_stats(stats), indent=2)
        raise ValueError(f"format={safe_repr(fmt)}: expected 'text' or 'json' for mode='stats'")
    raise ValueError(f"mode={safe_repr(mode)}: expected 'structure' or 'stats'")
