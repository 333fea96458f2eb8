"""``Flow.dump()``: the structure or the stats as text, JSON or a mermaid graph."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from headrace_flow._stages import ROUTER

if TYPE_CHECKING:
    from headrace_flow._flow import Flow


def _structure(f: Flow[Any, Any]) -> list[dict[str, Any]]:
    out = []
    for i, spec in enumerate(f._plan()):
        queue = spec["queue"]
        info: dict[str, Any] = {
            "index": i,
            "name": spec["name"],
            "kind": spec["kind"],
            "scaling": repr(spec["scaling"]),
            "queue": {
                "factory": getattr(queue, "__name__", repr(queue)),
                "maxsize": spec["queue_size"],
            },
            "ordered": bool(spec["ordered"]),
        }
        if spec["kind"] == ROUTER:
            info["arms"] = dict(spec["arms"])
            info["default"] = spec["default"]
            info["downstream"] = None
        else:
            info["downstream"] = spec["next"]
        out.append(info)
    return out


def _text(info: list[dict[str, Any]]) -> str:
    lines = [f"flow ({len(info)} stages):"]
    width = max((len(s["name"]) for s in info), default=4) + 2
    for s in info:
        if s["kind"] == ROUTER:
            arms = ", ".join(f"{label}->[{j}]" for label, j in s["arms"].items())
            if s["default"] is not None:
                arms += f", default->[{s['default']}]"
            dest = f"arms: {{{arms}}}"
        elif s["downstream"] is None:
            dest = "(sink)"
        else:
            dest = f"-> [{s['downstream']}]"
        q = s["queue"]
        extra = " ordered" if s["ordered"] else ""
        lines.append(
            f"  [{s['index']}] {s['name'].ljust(width)} {dest:24s} "
            f"{s['scaling']} {q['factory']}(maxsize={q['maxsize']}){extra}"
        )
    return "\n".join(lines)


def _mermaid(info: list[dict[str, Any]]) -> str:
    lines = ["flowchart LR"]
    for s in info:
        node = f"s{s['index']}"
        label = s["name"].replace('"', "'")
        lines.append(
            f'    {node}{{"{label}"}}' if s["kind"] == ROUTER else f'    {node}["{label}"]'
        )
    for s in info:
        node = f"s{s['index']}"
        if s["kind"] == ROUTER:
            for label, j in s["arms"].items():
                lines.append(f"    {node} -->|{label}| s{j}")
            if s["default"] is not None:
                lines.append(f"    {node} -->|default| s{s['default']}")
        elif s["downstream"] is not None:
            lines.append(f"    {node} --> s{s['downstream']}")
    return "\n".join(lines)


def _stats(f: Flow[Any, Any]) -> dict[str, Any]:
    stats = f.stats()
    return {
        "running": stats.running,
        "accepted": stats.accepted,
        "completed": stats.completed,
        "failed": stats.failed,
        "filtered": stats.filtered,
        "discarded": stats.discarded,
        "stages": [
            {
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
            for s in stats.stages.values()
        ],
    }


def _stats_text(data: dict[str, Any]) -> str:
    state = "running" if data["running"] else "idle"
    lines = [
        f"flow stats ({state}): accepted={data['accepted']} completed={data['completed']} "
        f"failed={data['failed']} filtered={data['filtered']} discarded={data['discarded']}"
    ]
    width = max((len(s["name"]) for s in data["stages"]), default=4) + 2
    for i, s in enumerate(data["stages"]):
        lines.append(
            f"  [{i}] {s['name'].ljust(width)} workers={s['workers']} (busy {s['busy']}, "
            f"idle {s['idle']}) queue={s['queue_length']} processed={s['processed']} "
            f"errors={s['errors']} filtered={s['filtered']} peak={s['peak_workers']}"
        )
    return "\n".join(lines)


def dump(f: Flow[Any, Any], mode: str, fmt: str) -> str:
    """Render ``f`` (see ``Flow.dump``).

    Raises:
        ValueError: for an unknown mode or format.
    """
    if mode == "structure":
        info = _structure(f)
        if fmt == "text":
            return _text(info)
        if fmt == "json":
            return json.dumps({"stages": info}, indent=2)
        if fmt == "mermaid":
            return _mermaid(info)
        raise ValueError(f"format={fmt!r}: expected 'text', 'json' or 'mermaid'")
    if mode == "stats":
        if fmt == "text":
            return _stats_text(_stats(f))
        if fmt == "json":
            return json.dumps(_stats(f), indent=2)
        raise ValueError(f"format={fmt!r}: expected 'text' or 'json' for mode='stats'")
    raise ValueError(f"mode={mode!r}: expected 'structure' or 'stats'")
