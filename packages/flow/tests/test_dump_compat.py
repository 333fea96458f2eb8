"""``dump()`` in flowrhythm's formats (what dashboards parse), and what ``FlowStats`` counts.

The expected structures are flowrhythm 0.2's output for the same pipelines, written out
by hand; headrace's own keys come after flowrhythm's and are checked separately.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_flow import (
    DropReason,
    FlowStats,
    Last,
    StageStats,
    batched,
    flow,
    router,
    stage,
)


async def parse(x: int) -> int:
    if x == 3:
        raise ValueError("bad")
    return x


async def classify(x: int) -> str:
    if x == 5:
        return "weird"  # no such arm, no default: a router miss
    return "even" if x % 2 == 0 else "odd"


async def even(x: int) -> int:
    return x


async def odd(x: int) -> int:
    return x


async def sink(x: int) -> int:
    return x


async def ignore(event: Any) -> None:
    pass


def pipeline() -> Any:
    """A transformer, a router with two arms merging into a next stage."""
    return flow(parse, router(classify, even=even, odd=odd), sink, on_error=ignore)


def _queue() -> dict[str, object]:
    return {"factory": "fifo_queue", "maxsize": 1}


_SCALING = "FixedScaling(workers=1)"

# flowrhythm 0.2: json.loads(chain.dump(format="json")) for the same pipeline
FLOWRHYTHM_STRUCTURE: list[dict[str, object]] = [
    {
        "index": 0,
        "name": "parse",
        "scaling": _SCALING,
        "queue": _queue(),
        "kind": "transformer",
        "downstream": 1,
    },
    {
        "index": 1,
        "name": "classify",
        "scaling": _SCALING,
        "queue": _queue(),
        "kind": "classifier",
        "arms": {"even": 2, "odd": 3},
        "default": None,
        "downstream": None,
    },
    {
        "index": 2,
        "name": "classify.even",
        "scaling": _SCALING,
        "queue": _queue(),
        "kind": "arm-end",
        "merge": 4,
        "downstream": 4,
    },
    {
        "index": 3,
        "name": "classify.odd",
        "scaling": _SCALING,
        "queue": _queue(),
        "kind": "arm-end",
        "merge": 4,
        "downstream": 4,
    },
    {
        "index": 4,
        "name": "sink",
        "scaling": _SCALING,
        "queue": _queue(),
        "kind": "transformer",
        "downstream": None,
    },
]


def _flowrhythm_part(entry: dict[str, Any], like: dict[str, object]) -> dict[str, object]:
    return {key: entry[key] for key in like}


def test_structure_json_has_flowrhythms_keys_and_kinds() -> None:
    stages = json.loads(pipeline().dump(format="json"))["stages"]
    assert len(stages) == len(FLOWRHYTHM_STRUCTURE)
    for got, want in zip(stages, FLOWRHYTHM_STRUCTURE, strict=True):
        assert list(got)[: len(want)] == list(want)  # flowrhythm's keys, in its order
        assert _flowrhythm_part(got, want) == want
    # headrace's own keys are extra, not renamed
    assert [s["form"] for s in stages] == ["map", "router", "map", "map", "map"]
    assert all(s["ordered"] is False for s in stages)


def test_structure_json_default_arm_and_router_at_the_end() -> None:
    async def a(x: int) -> int:
        return x

    async def b(x: int) -> int:
        return x

    async def e(x: int) -> int:
        return x

    async def c(x: int) -> str:
        return "x"

    # flowrhythm 0.2 for flow(a, router(c, x=a, default=flow(b, e))): (kind, merge, downstream)
    stages = json.loads(flow(a, router(c, x=a, default=flow(b, e))).dump(format="json"))["stages"]
    assert [(s["kind"], s.get("merge"), s["downstream"]) for s in stages] == [
        ("transformer", None, 1),
        ("classifier", None, None),
        ("arm-end", None, None),
        ("transformer", None, 4),
        ("arm-end", None, None),
    ]
    assert "merge" in stages[2]  # present (null) on an arm-end with nothing to merge into
    assert stages[1]["arms"] == {"x": 2}
    assert stages[1]["default"] == 3

    # a multi-stage arm: only its last stage is the arm-end
    stages = json.loads(flow(router(c, x=flow(a, b)), e).dump(format="json"))["stages"]
    assert [(s["kind"], s.get("merge"), s["downstream"]) for s in stages] == [
        ("classifier", None, None),
        ("transformer", None, 2),
        ("arm-end", 3, 3),
        ("transformer", None, None),
    ]


def test_structure_text_marks_the_router_and_the_arm_ends() -> None:
    lines = pipeline().dump().splitlines()
    assert lines[0] == "flow (5 stages):"
    assert "classify [router]" in lines[2]
    assert "arms: {even->[2], odd->[3]}" in lines[2]
    for line in lines[3:5]:
        assert "(arm-end)" in line
        assert "-> [4] (merge)" in line
    assert "(arm-end)" not in lines[1]
    assert "(merge)" not in lines[1]
    assert "(sink)" in lines[5]


def test_stats_before_any_run_say_so() -> None:
    f = pipeline()
    assert f.dump(mode="stats") == "flow stats: no run yet (call run(...) first)"
    data = json.loads(f.dump(mode="stats", format="json"))
    # flowrhythm 0.2: {"active": false, "stages": [], "events": {}}
    assert data["active"] is False
    assert data["stages"] == []
    assert data["events"] == {"transformer_errors": 0, "source_errors": 0, "drops": {}}
    assert data["started"] is False
    assert data["status"] == "no run yet"
    assert f.stats().started is False


# flowrhythm 0.2: json.loads(chain.dump(mode="stats", format="json")) after a run over range(10)
FLOWRHYTHM_STATS_STAGES: list[dict[str, object]] = [
    {
        "index": i,
        "name": name,
        "alive": 0,
        "busy": 0,
        "idle": 0,
        "queue_length": 0,
        "queue_drained": True,
        "processed": processed,
        "errors": errors,
    }
    for i, (name, processed, errors) in enumerate(
        [
            ("parse", 9, 1),
            ("classify", 9, 0),
            ("classify.even", 5, 0),
            ("classify.odd", 3, 0),
            ("sink", 8, 0),
        ]
    )
]
FLOWRHYTHM_STATS_EVENTS = {
    "transformer_errors": 1,
    "source_errors": 0,
    "drops": {"ROUTER_MISS": 1},
}


async def test_stats_after_a_run_with_a_router_miss_and_a_stage_error() -> None:
    f = pipeline()
    stats = await f.run(range(10))
    data = json.loads(f.dump(mode="stats", format="json"))
    assert list(data)[:3] == ["active", "stages", "events"]
    assert data["active"] is False
    assert data["events"] == FLOWRHYTHM_STATS_EVENTS
    for got, want in zip(data["stages"], FLOWRHYTHM_STATS_STAGES, strict=True):
        assert list(got)[: len(want)] == list(want)
        assert _flowrhythm_part(got, want) == want
    # headrace's own keys, extra
    assert data["started"] is True
    assert data["status"] == "completed"
    assert (data["accepted"], data["completed"], data["outputs_delivered"]) == (10, 8, 8)
    assert (data["failed"], data["filtered"], data["discarded"]) == (1, 1, 0)
    assert data["stages"][1]["filtered"] == 1
    assert data["stages"][0]["peak_workers"] == 1
    # the same numbers, typed
    assert stats.drops == {DropReason.ROUTER_MISS: 1}
    assert stats.transformer_errors == 1
    assert stats.source_errors == 0
    assert stats.started is True

    text = f.dump(mode="stats")
    assert text.startswith("flow stats (completed):\n")
    assert "0 alive (0 busy, 0 idle)" in text
    assert "[drained]" in text
    assert "\nevents:\n  transformer errors: 1\n  source errors:      0\n" in text
    assert "  drops:\n    ROUTER_MISS: 1" in text
    assert "accepted=10 (taken in) completed=8 (outputs delivered by the last stage)" in text


async def test_stats_count_upstream_terminated_and_source_errors() -> None:
    seen: list[Any] = []

    async def record(event: Any) -> None:
        seen.append(event)

    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async def until_five(x: int) -> Any:
        return Last(x * 10) if x == 5 else x

    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    f = flow(stage(slow, workers=4), until_five, on_error=record)
    with VirtualClock():
        stats = await f.run(endless)
    assert seen  # items in flight above the Last were dropped
    assert stats.drops == {DropReason.UPSTREAM_TERMINATED: len(seen)}
    events = json.loads(f.dump(mode="stats", format="json"))["events"]
    assert events["drops"] == {"UPSTREAM_TERMINATED": len(seen)}
    assert f"    UPSTREAM_TERMINATED: {len(seen)}" in f.dump(mode="stats")

    async def failing() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("source broke")

    g = flow(sink, on_error=ignore)
    stats = await g.run(failing)
    assert stats.source_errors == 1
    events = json.loads(g.dump(mode="stats", format="json"))["events"]
    assert events == {"transformer_errors": 0, "source_errors": 1, "drops": {}}
    assert "  source errors:      1" in g.dump(mode="stats")


async def test_a_batched_last_stage_reports_outputs_not_items() -> None:
    f = flow(sink, batched(10))
    stats = await f.run(range(500))
    assert stats.accepted == 500  # items taken in
    assert stats.outputs_delivered == 50  # lists handed out by the last stage
    assert stats.completed == stats.outputs_delivered
    assert "accepted=500 items in" in repr(stats)
    assert "completed=50 outputs delivered" in repr(stats)
    data = json.loads(f.dump(mode="stats", format="json"))
    assert (data["accepted"], data["completed"], data["outputs_delivered"]) == (500, 50, 50)


async def test_the_invariant_holds_for_map_filter_pipelines() -> None:
    stats = await pipeline().run(range(10))
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded
    assert stats.outputs_delivered == stats.completed


def test_flowstats_keeps_its_fields_and_constructor() -> None:
    stats = FlowStats({"a": StageStats("a")}, 5, 3, 1, 1, 0, False)
    assert (stats.accepted, stats.completed, stats.failed) == (5, 3, 1)
    assert (stats.filtered, stats.discarded, stats.running) == (1, 0, False)
    assert stats.in_flight == 0
    assert (stats.source_errors, dict(stats.drops), stats.started) == (0, {}, False)
    with pytest.raises(AttributeError):
        stats.accepted = 6  # type: ignore[misc]
