"""``Flow.dump()``: the plan's structure or the stats, as text, JSON or a mermaid graph."""

from __future__ import annotations

import json

from headrace_flow._plan import Kind, Plan, StagePlan
from headrace_flow._stats import FlowStats, StageStats


def _factory_name(spec: StagePlan) -> str:
    name = getattr(spec.queue, "__name__", None)
    return name if isinstance(name, str) else repr(spec.queue)


def _structure(spec: StagePlan) -> dict[str, object]:
    info: dict[str, object] = {
        "index": spec.index,
        "name": spec.name,
        "kind": spec.kind.value,
        "scaling": repr(spec.scaling),
        "queue": {"factory": _factory_name(spec), "maxsize": spec.queue_size},
        "ordered": spec.ordered,
    }
    if spec.kind is Kind.ROUTER:
        info["arms"] = dict(spec.arms)
        info["default"] = spec.default
        info["downstream"] = None
    else:
        info["downstream"] = spec.next
    return info


def _text(plan: Plan) -> str:
    lines = [f"flow ({len(plan.stages)} stages):"]
    width = max((len(s.name) for s in plan.stages), default=4) + 2
    for s in plan.stages:
        if s.kind is Kind.ROUTER:
            arms = ", ".join(f"{label}->[{j}]" for label, j in s.arms.items())
            if s.default is not None:
                arms += f", default->[{s.default}]"
            dest = f"arms: {{{arms}}}"
        elif s.next is None:
            dest = "(sink)"
        else:
            dest = f"-> [{s.next}]"
        extra = " ordered" if s.ordered else ""
        lines.append(
            f"  [{s.index}] {s.name.ljust(width)} {dest:24s} "
            f"{s.scaling!r} {_factory_name(s)}(maxsize={s.queue_size}){extra}"
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


def _stage_stats(s: StageStats) -> dict[str, object]:
    return {
        "name": s.name,
        "workers": s.workers,
        "busy": s.busy_workers,
        "idle": s.idle_workers,
        "queue_length": s.queue_length,
        "processed": s.processed,
        "errors": s.errors,
        "filtered": s.filtered,
        "peak_workers": s.peak_workers,
        "utilization": s.utilization,
        "oldest_item_age": s.oldest_item_age,
    }


def _stats(stats: FlowStats) -> dict[str, object]:
    return {
        "running": stats.running,
        "accepted": stats.accepted,
        "completed": stats.completed,
        "failed": stats.failed,
        "filtered": stats.filtered,
        "discarded": stats.discarded,
        "stages": [_stage_stats(s) for s in stats.stages.values()],
    }


def _stats_text(stats: FlowStats) -> str:
    state = "running" if stats.running else "idle"
    lines = [
        f"flow stats ({state}): accepted={stats.accepted} completed={stats.completed} "
        f"failed={stats.failed} filtered={stats.filtered} discarded={stats.discarded}"
    ]
    width = max((len(s.name) for s in stats.stages.values()), default=4) + 2
    for i, s in enumerate(stats.stages.values()):
        lines.append(
            f"  [{i}] {s.name.ljust(width)} workers={s.workers} (busy {s.busy_workers}, "
            f"idle {s.idle_workers}) queue={s.queue_length} processed={s.processed} "
            f"errors={s.errors} filtered={s.filtered} peak={s.peak_workers}"
        )
    return "\n".join(lines)


def dump(plan: Plan, stats: FlowStats, mode: str, fmt: str) -> str:
    """Render a flow's ``plan`` or its ``stats`` (see ``Flow.dump``).

    Raises:
        ValueError: for an unknown mode or format.
    """
    if mode == "structure":
        if fmt == "text":
            return _text(plan)
        if fmt == "json":
            return json.dumps({"stages": [_structure(s) for s in plan.stages]}, indent=2)
        if fmt == "mermaid":
            return _mermaid(plan)
        raise ValueError(f"format={fmt!r}: expected 'text', 'json' or 'mermaid'")
    if mode == "stats":
        if fmt == "text":
            return _stats_text(stats)
        if fmt == "json":
            return json.dumps(_stats(stats), indent=2)
        raise ValueError(f"format={fmt!r}: expected 'text' or 'json' for mode='stats'")
    raise ValueError(f"mode={mode!r}: expected 'structure' or 'stats'")
