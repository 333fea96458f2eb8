"""Builder validation (S11), graph errors, immutability, topological names, big graphs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_core import ConfigurationError
from headrace_core.testing import VirtualClock
from headrace_leveled import (
    CycleError,
    GraphError,
    Processor,
    ProcessorError,
    Task,
    TaskFunction,
)


async def noop(ctx: Any) -> None:
    return None


def t(name: Any) -> Task[Any, Any]:
    return Task(name, noop, noop, noop)


def test_missing_dependency_names_both_tasks() -> None:
    builder = Processor.builder().add_task(t("B"), depends_on=["X"])
    with pytest.raises(GraphError, match=r"'B' depends on 'X'") as info:
        builder.build()
    assert isinstance(info.value, ValueError)
    assert info.value.task == "B"
    assert info.value.missing == "X"
    builder.add_task(t("X"))
    assert builder.build().task_names == ("X", "B")  # fixed, then built


def test_cycle_prints_path() -> None:
    builder = (
        Processor.builder()
        .add_task(t("a"), depends_on=["c"])
        .add_task(t("b"), depends_on=["a"])
        .add_task(t("c"), depends_on=["b"])
        .add_task(t("free"))
    )
    with pytest.raises(CycleError, match="'a' -> 'c' -> 'b' -> 'a'") as info:
        builder.build()
    assert info.value.path == ("a", "c", "b", "a")
    assert isinstance(info.value, GraphError)


def test_cycle_with_int_names() -> None:
    builder = Processor.builder().add_task(t(1), depends_on=[2]).add_task(t(2), depends_on=[1])
    with pytest.raises(CycleError, match="1 -> 2 -> 1") as info:
        builder.build()
    assert info.value.path == (1, 2, 1)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(CycleError, match="'a' -> 'a'"):
        Processor.builder().add_task(t("a"), depends_on=["a"]).build()


def test_cycle_through_levels_shows_only_task_names() -> None:
    builder = Processor.builder()
    for i in range(3):
        builder.add_task(t(f"low{i}"), level=1)
    for i in range(3):
        builder.add_task(t(f"high{i}"), level=2)
    builder.add_task(t("x"), level=1, depends_on=["high0"])
    with pytest.raises(CycleError) as info:
        builder.build()
    path = info.value.path
    assert path[0] == path[-1]
    assert set(path) <= {"x", "high0"}
    assert len(path) == 3


def test_duplicate_name_rejected_and_builder_unchanged() -> None:
    builder = Processor.builder().add_task(t("a"), level=1)
    with pytest.raises(ConfigurationError, match="name='a'"):
        builder.add_task(t("a"), level=2)
    assert len(builder) == 1
    p = builder.add_task(t("b"), level=2).build()
    assert p.task_names == ("a", "b")


@pytest.mark.parametrize("level", ["x", 1.5, True, (1,)])
def test_level_must_be_int(level: Any) -> None:
    builder = Processor.builder()
    with pytest.raises(ConfigurationError, match="level"):
        builder.add_task(t("a"), level=level)
    assert len(builder) == 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"depends_on": "ab"}, "depends_on"),
        ({"depends_on": 3}, "depends_on"),
        ({"depends_on": [["unhashable"]]}, "depends_on"),
    ],
)
def test_depends_on_validated(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Processor.builder().add_task(t("a"), **kwargs)


def test_task_and_phases_validated() -> None:
    builder = Processor.builder()
    with pytest.raises(ConfigurationError, match="task="):
        builder.add_task("not a task")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pre_execute=42"):
        builder.add_task(Task("a", 42))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="post_execute"):
        builder.add_task(Task("a", post_execute="x"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name"):
        builder.add_task(Task(["unhashable"]))
    assert len(builder) == 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"execute_order": "random"}, "execute_order"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 1.5}, "max_concurrency"),
        ({"cleanup_timeout": 0}, "cleanup_timeout"),
        ({"cleanup_timeout": float("inf")}, "cleanup_timeout"),
        ({"on_cleanup_error": 3}, "on_cleanup_error"),
    ],
)
def test_build_options_validated(kwargs: dict[str, Any], argument: str) -> None:
    builder = Processor.builder().add_task(t("a"))
    with pytest.raises(ConfigurationError, match=argument):
        builder.build(**kwargs)
    assert builder.build().task_names == ("a",)


def test_processor_is_frozen() -> None:
    p = Processor.builder().add_task(t("a")).build()
    with pytest.raises(AttributeError):
        p.task_names = ()
    with pytest.raises(AttributeError):
        p.anything = 1
    with pytest.raises(AttributeError):
        del p.task_names
    with pytest.raises(TypeError):
        p.tasks["b"] = t("b")  # type: ignore[index]
    assert p.tasks["a"].name == "a"


def test_builder_aliases_and_options() -> None:
    assert Processor.graph_builder is Processor.builder
    assert Processor.elevator_builder is Processor.builder
    p = Processor.builder().add_task(t("a")).build(max_concurrency=3, cleanup_timeout=2)
    assert p.max_concurrency == 3
    assert p.cleanup_timeout == 2
    assert p.execute_order == "parallel"
    assert Processor.builder().build().max_concurrency is None


def test_task_names_topological() -> None:
    p = (
        Processor.builder()
        .add_task(t("c"), depends_on=["b"])
        .add_task(t("b"), depends_on=["a"])
        .add_task(t("a"))
        .add_task(t("l2"), level=2)
        .add_task(t("l1"), level=1)
        .build()
    )
    names = p.task_names
    assert names.index("a") < names.index("b") < names.index("c")
    assert names.index("l1") < names.index("l2")
    assert sorted(names) == ["a", "b", "c", "l1", "l2"]


async def test_5000_deep_chain_builds_and_runs() -> None:
    order: list[int] = []

    def pre(i: int) -> Any:
        async def run(ctx: Any) -> None:
            order.append(i)

        return run

    builder = Processor.builder()
    builder.add_task(Task(0, pre(0)))
    for i in range(1, 5000):
        builder.add_task(Task(i, pre(i)), depends_on=[i - 1])
    p = builder.build()
    assert p.task_names == tuple(range(5000))
    await p.process_tasks(None)
    assert order == list(range(5000))


def test_5000_deep_cycle_detected_without_recursion() -> None:
    builder = Processor.builder().add_task(t(0), depends_on=[4999])
    for i in range(1, 5000):
        builder.add_task(t(i), depends_on=[i - 1])
    with pytest.raises(CycleError) as info:
        builder.build()
    assert len(info.value.path) == 5001


async def test_wide_levels_use_linear_edges_and_keep_order() -> None:
    # 2 levels of 300: a barrier keeps edges O(n); level 2 still waits for all of level 1.
    starts: dict[tuple[int, int], float] = {}
    ends: dict[tuple[int, int], float] = {}

    def pre(key: tuple[int, int], delay: float) -> Any:
        async def run(ctx: Any) -> None:
            starts[key] = asyncio.get_running_loop().time()
            await asyncio.sleep(delay)
            ends[key] = asyncio.get_running_loop().time()

        return run

    builder = Processor.builder()
    for level in (1, 2):
        for i in range(300):
            builder.add_task(Task((level, i), pre((level, i), (i % 7) + 1)), level=level)
    p = builder.build()
    assert p._plan.n_nodes == 601
    with VirtualClock():
        await p.process_tasks(None)
    last_l1 = max(v for k, v in ends.items() if k[0] == 1)
    assert min(v for k, v in starts.items() if k[0] == 2) == last_l1


async def test_join_node_orders_without_phases() -> None:
    order: list[str] = []

    def step(name: str) -> Any:
        async def run(ctx: Any) -> None:
            order.append(name)

        return run

    p = (
        Processor.builder()
        .add_task(Task("a", step("a")))
        .add_task(Task("b", step("b")))
        .add_task(Task("join"), depends_on=["a", "b"])
        .add_task(Task("c", step("c")), depends_on=["join"])
        .build()
    )
    report = await p.process_tasks(None)
    assert order[-1] == "c"
    assert report.tasks["join"].phases == {}
    assert report.tasks["join"].state.value == "succeeded"


async def test_processor_reusable_after_failed_run() -> None:
    fail = [True]

    async def maybe(ctx: Any) -> None:
        if fail:
            fail.pop()
            raise ValueError("once")

    p = Processor.builder().add_task(Task("a", TaskFunction(maybe))).build()
    with pytest.raises(ProcessorError):
        await p.process_tasks(None)
    report = await p.process_tasks(None)
    assert report.succeeded
