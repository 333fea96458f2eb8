"""sdax code runs after changing the import: the 0.3.2 README and the 0.7 helpers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

import headrace_leveled
from headrace_core.testing import VirtualClock
from headrace_leveled import (
    AsyncDagTaskProcessor,
    AsyncTask,
    AsyncTaskProcessor,
    Processor,
    ProcessorError,
    RetryableException,
    SdaxExecutionError,
    Task,
    TaskFunction,
    join,
    task,
    task_func,
    task_group_func,
    task_group_task,
    task_sync_func,
)


# The seed README's quick start, with only the import changed.
@dataclass
class TaskContext:
    user_id: int | None = None
    feature_flags: dict[str, bool] | None = None
    db_connection = None


async def check_auth(ctx: TaskContext) -> None:
    print("Level 1: Checking authentication...")
    await asyncio.sleep(0.1)
    ctx.user_id = 123
    print("Auth successful.")


async def load_feature_flags(ctx: TaskContext) -> None:
    print("Level 1: Loading feature flags...")
    await asyncio.sleep(0.2)
    ctx.feature_flags = {"new_api": True}
    print("Flags loaded.")


async def fetch_user_data(ctx: TaskContext) -> None:
    print("Level 2: Fetching user data...")
    if not ctx.user_id:
        raise ValueError("Auth failed, cannot fetch user data.")
    await asyncio.sleep(0.1)
    print("User data fetched.")


async def close_db_connection(ctx: TaskContext) -> None:
    print("Tearing down db connection...")
    await asyncio.sleep(0.05)
    print("Connection closed.")


async def quick_start_main() -> None:
    ctx = TaskContext()
    processor = (
        AsyncTaskProcessor.builder()
        .add_task(
            level=1,
            task=AsyncTask(
                name="Authentication",
                pre_execute=TaskFunction(function=check_auth),
                post_execute=TaskFunction(function=close_db_connection),
            ),
        )
        .add_task(
            level=1,
            task=AsyncTask(
                name="FeatureFlags", pre_execute=TaskFunction(function=load_feature_flags)
            ),
        )
        .add_task(
            level=2,
            task=AsyncTask(name="UserData", execute=TaskFunction(function=fetch_user_data)),
        )
        .build()
    )
    try:
        await processor.process_tasks(ctx)
        print("\nWorkflow completed successfully!")
    except* Exception as e:
        print(f"\nWorkflow failed: {e.exceptions[0]}")


async def test_seed_readme_quick_start(capsys: pytest.CaptureFixture[str]) -> None:
    with VirtualClock():
        await quick_start_main()
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["Level 1: Checking authentication...", "Level 1: Loading feature flags..."]
    assert out.index("User data fetched.") < out.index("Tearing down db connection...")
    assert out[-1] == "Workflow completed successfully!"


async def test_seed_readme_failure_path_except_star(capsys: pytest.CaptureFixture[str]) -> None:
    async def broken_auth(ctx: TaskContext) -> None:
        raise ValueError("Auth failed, cannot fetch user data.")

    processor = (
        AsyncTaskProcessor.builder()
        .add_task(level=1, task=AsyncTask(name="A", pre_execute=TaskFunction(function=broken_auth)))
        .build()
    )
    try:
        await processor.process_tasks(TaskContext())
    except* ValueError as eg:
        for exc in eg.exceptions:
            print(f"Validation error: {exc}")
    assert (
        capsys.readouterr().out.strip() == "Validation error: Auth failed, cannot fetch user data."
    )


def test_aliases_are_the_same_objects() -> None:
    assert AsyncTaskProcessor is Processor is AsyncDagTaskProcessor
    assert AsyncTask is Task
    assert SdaxExecutionError is ProcessorError
    assert RetryableException is headrace_leveled.RetryableError
    assert headrace_leveled.PhaseId is headrace_leveled.Phase
    assert task_group_task is task_group_func
    assert AsyncTaskProcessor.graph_builder is Processor.builder


async def test_sdax07_graph_builder_and_helpers() -> None:
    order: list[str] = []

    async def a(ctx: dict[str, Any]) -> None:
        order.append("a")

    async def b(ctx: dict[str, Any]) -> None:
        order.append("b")

    def sync_c(ctx: dict[str, Any]) -> int:
        order.append("c")
        return 3

    async def parent(ctx: dict[str, Any], tg: Any) -> int:
        child = tg.create_task(asyncio.sleep(0, result=5), name="child")
        return int(await child)

    processor = (
        AsyncTaskProcessor.graph_builder()
        .add_task(AsyncTask("TaskA", execute=task_func(a)), depends_on=())
        .add_task(AsyncTask("TaskB", execute=task_func(b, timeout=5.0, retries=2)), depends_on=())
        .add_task(join("WaitForBoth"), depends_on=("TaskA", "TaskB"))
        .add_task(task("TaskC", execute=task_sync_func(sync_c)), depends_on=("WaitForBoth",))
        .add_task(task(("tuple", 1), execute=task_group_func(parent)), depends_on=("TaskC",))
        .build(execute_order="dependencies")
    )
    report = await processor.process_tasks({})
    assert order == ["a", "b", "c"]
    assert report.results["TaskC"] == 3
    assert report.results[("tuple", 1)] == 5


async def test_sdax07_elevator_builder_and_dag_builder() -> None:
    seen: list[str] = []

    async def mark(ctx: Any) -> None:
        seen.append("x")

    p1 = AsyncTaskProcessor.elevator_builder().add_task(AsyncTask("x", mark), 0).build()
    p2 = AsyncDagTaskProcessor.builder().add_task(AsyncTask("x", mark), depends_on=()).build()
    await p1.process_tasks(None)
    await p2.process_tasks(None)
    assert seen == ["x", "x"]


def test_task_helper_requires_a_phase() -> None:
    with pytest.raises(ValueError, match="join"):
        task("empty")


async def test_sdax_error_helpers() -> None:
    async def boom(ctx: Any) -> None:
        raise KeyError("k")

    p = AsyncTaskProcessor.builder().add_task(AsyncTask("a", task_func(boom)), level=0).build()
    with pytest.raises(SdaxExecutionError) as info:
        await p.process_tasks(None)
    leaves = info.value.leaf_exceptions()
    assert len(leaves) == 1
    assert isinstance(leaves[0], KeyError)
    assert headrace_leveled.flatten_exceptions(info.value) == leaves


async def test_custom_retryable_subclass_still_an_exception() -> None:
    class Flaky(RetryableException):
        pass

    calls: list[int] = []

    async def flaky(ctx: Any) -> None:
        calls.append(1)
        raise Flaky("again")

    p = (
        Processor.builder()
        .add_task(AsyncTask("a", task_func(flaky, retries=2, initial_delay=0)))
        .build()
    )
    caught: list[Exception] = []
    try:
        await p.process_tasks(None)
    except Exception as exc:  # sdax 0.7.2 would escape this as a BaseExceptionGroup
        caught.append(exc)
    assert len(caught) == 1
    assert isinstance(caught[0], ProcessorError)
    assert len(calls) == 3
