"""The plan: frozen per-stage descriptions, compiled without ``Flow``, resolved in layers."""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import headrace_flow
from headrace_core.backoff import fixed
from headrace_flow import (
    FixedScaling,
    UtilizationScaling,
    batched,
    fifo_queue,
    flow,
    lifo_queue,
    priority_queue,
    router,
    stage,
)
from headrace_flow._compile import compile_parts, resolve
from headrace_flow._plan import NO_SETTINGS, CallOptions, Kind, Plan, Settings, StagePlan


async def parse(x: str) -> int:
    return int(x)


async def double(x: int) -> int:
    return 2 * x


async def spread(x: int) -> AsyncIterator[int]:
    yield x


async def total(xs: list[int]) -> int:
    return sum(xs)


async def classify(x: int) -> str:
    return "even" if x % 2 == 0 else "odd"


def test_the_kind_is_an_enum_that_reads_as_the_old_strings() -> None:
    assert stage(double).kind is Kind.MAP
    assert stage(spread).kind is Kind.GEN
    assert batched(2).kind is Kind.BATCHED
    assert router(classify, even=double).kind is Kind.ROUTER
    assert stage(flow(double)).kind is Kind.FLOW
    assert stage(double).kind == "map"  # a str enum: comparisons with the names still work
    (described,) = json.loads(flow(double).dump(format="json"))["stages"]
    assert (described["kind"], described["form"]) == ("transformer", "map")  # flowrhythm's kind


def test_a_plan_is_frozen_dataclasses() -> None:
    plan = flow(parse, double)._plan()
    assert isinstance(plan, Plan)
    assert all(isinstance(s, StagePlan) for s in plan.stages)
    assert dataclasses.is_dataclass(plan.stages[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.stages[0].queue_size = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.stages = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.stages[0].arms["x"] = 1  # type: ignore[index]  # a read-only mapping
    assert plan.names == ["parse", "double"]
    assert [s.index for s in plan.stages] == [0, 1]


def test_built_in_settings() -> None:
    spec = flow(double)._plan().stages[0]
    assert isinstance(spec.scaling, FixedScaling)
    assert spec.scaling.workers == 1
    assert spec.queue is fifo_queue
    assert spec.queue_size == 1
    assert spec.ordered is False
    assert spec.calls == CallOptions()
    assert spec.next is None
    assert spec.target is double


def test_settings_resolve_configure_over_stage_over_subflow_over_defaults() -> None:
    inner = flow(stage(double, name="a"), stage(double, name="b", queue_size=7), double)
    inner.configure_default(queue=lifo_queue)
    inner.configure("a", queue_size=5)
    outer = flow(
        stage(inner, name="sub"),
        stage(double, name="last", ordered=True),
        default_queue=priority_queue,
        default_queue_size=3,
    )
    outer.configure("sub.a", ordered=True)
    outer.configure("last", queue_size=0)
    specs = {s.name: s for s in outer._plan().stages}
    assert list(specs) == ["sub.a", "sub.b", "sub.double", "last"]
    # configure() on the outer flow wins, then the inner one's, then its defaults
    assert (specs["sub.a"].ordered, specs["sub.a"].queue_size) == (True, 5)
    assert specs["sub.a"].queue is lifo_queue
    # stage() wins over the sub-flow's settings
    assert specs["sub.b"].queue_size == 7
    # the outer defaults fill in what nobody set
    assert specs["sub.double"].queue_size == 3
    assert specs["sub.double"].queue is lifo_queue
    assert (specs["last"].ordered, specs["last"].queue_size) == (True, 0)
    assert specs["last"].queue is priority_queue


def test_links_producers_tails_and_what_lies_below() -> None:
    f = flow(parse, router(classify, even=double, odd=flow(double, double)), spread)
    plan = f._plan()
    assert plan.names == [
        "parse",
        "classify",
        "classify.even",
        "classify.odd.double",
        "classify.odd.double_2",
        "spread",
    ]
    parse_, route, even, odd1, odd2, tail = plan.stages
    assert parse_.next == 1
    assert route.kind is Kind.ROUTER
    assert dict(route.arms) == {"even": 2, "odd": 3}
    assert route.default is None
    assert route.children == (2, 3)
    assert (even.next, odd1.next, odd2.next, tail.next) == (5, 4, 5, None)
    assert plan.producers() == [1, 1, 1, 1, 1, 2]
    assert plan.tails() == [5]
    assert plan.below(1) == {2, 3, 4, 5}
    assert plan.below(5) == frozenset()


def test_only_ordered_stages_that_call_a_function_number_their_input() -> None:
    plan = flow(
        stage(double, ordered=True),
        stage(spread, ordered=True),
        stage(double),
        batched(2),
    )._plan()
    assert [s.numbered for s in plan.stages] == [True, True, False, False]


def test_a_batched_stage_has_one_worker_whatever_it_is_configured_with() -> None:
    f = flow(batched(2), total)
    f.configure("batched", scaling=FixedScaling(4))
    spec = f._plan().stages[0]
    assert isinstance(spec.scaling, FixedScaling)
    assert spec.scaling.workers == 1
    assert spec.batching is not None
    assert spec.batching.size == 2
    assert "FixedScaling(workers=1)" in f.dump()


def test_call_options_and_nested_stages() -> None:
    inner = stage(double, retries=2, retry_on=OSError, backoff=fixed(3.0), timeout=5)
    outer = stage(inner, workers=3, initial_delay=1)
    calls = outer.calls
    assert (calls.retries, calls.retry_on, calls.timeout) == (2, (OSError,), 5.0)
    # the outer call describes its own delays: they replace the inner schedule
    assert calls.backoff is None
    assert calls.initial_delay == 1.0
    assert calls.schedule().delays() is not None
    assert isinstance(outer.options.scaling, FixedScaling)
    spec = flow(outer)._plan().stages[0]
    assert spec.calls == calls


def test_settings_layer_with_over() -> None:
    upper = Settings(queue_size=2)
    lower = Settings(scaling=FixedScaling(3), queue_size=9, ordered=True)
    merged = upper.over(lower)
    assert merged.queue_size == 2
    assert merged.scaling is lower.scaling
    assert merged.ordered is True
    assert merged.queue is None
    assert NO_SETTINGS.over(lower) == lower


def test_resolve_and_compile_take_stage_forms_without_a_flow() -> None:
    graph = compile_parts([double, stage(double, name="again"), double])
    assert [node.name for node in graph] == ["double", "again", "double_2"]
    plan = resolve(graph, Settings(scaling=UtilizationScaling(max_workers=3)), {})
    assert all(isinstance(s.scaling, UtilizationScaling) for s in plan.stages)


def test_the_compiler_and_the_plan_do_not_import_flow() -> None:
    package = Path(headrace_flow.__file__).parent
    for module in ("_compile", "_plan", "_stages", "_dump"):
        tree = ast.parse((package / f"{module}.py").read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module is not None
        }
        assert "headrace_flow._flow" not in imported, module
        assert "headrace_flow._factory" not in imported, module


def test_dump_describes_the_plan() -> None:
    f = flow(parse, router(classify, even=double, default=double), stage(double, workers=2))
    plan = f._plan()
    structure = json.loads(f.dump(format="json"))["stages"]
    assert [s["name"] for s in structure] == plan.names
    assert structure[1]["arms"] == {"even": 2}
    assert structure[1]["default"] == 3
    assert structure[4]["scaling"] == repr(plan.stages[4].scaling)
    assert "arms: {even->[2], default->[3]}" in f.dump()
    assert "s1 -->|default| s3" in f.dump(format="mermaid")
