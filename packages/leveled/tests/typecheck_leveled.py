"""Checked by mypy only: the public signatures keep their types."""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

from headrace_leveled import (
    AsyncTask,
    AsyncTaskProcessor,
    Builder,
    Phase,
    PhaseReport,
    PhaseRunner,
    Processor,
    ProcessorError,
    RunReport,
    Task,
    TaskFailure,
    TaskFunction,
    TaskReport,
    TaskState,
    join,
    task_func,
    task_group_func,
    task_sync_func,
)


class Ctx:
    user: int = 0


async def load(ctx: Ctx) -> int:
    return ctx.user


async def with_group(ctx: Ctx, tg: asyncio.TaskGroup) -> None:
    tg.create_task(asyncio.sleep(0))


def sync(ctx: Ctx) -> int:
    return 1


async def main() -> None:
    tf = TaskFunction(load, timeout=1.0, retries=2)
    assert_type(tf, TaskFunction[Ctx])
    assert_type(tf.timeout, float | None)
    assert_type(tf.retry_on, tuple[type[Exception], ...])
    assert_type(TaskFunction(with_group, task_group=True), TaskFunction[Ctx])
    assert_type(task_func(load), TaskFunction[Ctx])
    assert_type(task_group_func(with_group), TaskFunction[Ctx])
    assert_type(task_sync_func(sync), TaskFunction[Ctx])

    t: Task[Ctx, str] = Task("load", pre_execute=load, execute=tf)
    assert_type(t.name, str)
    assert_type(join("j"), Task[Any, str])
    assert AsyncTask is Task

    builder: Builder[Ctx, str] = Processor.builder()
    assert_type(builder.add_task(t, level=1), Builder[Ctx, str])
    assert_type(builder.add_task(Task("x"), depends_on=["load"]), Builder[Ctx, str])
    processor = builder.build(execute_order="dependencies", max_concurrency=4)
    assert_type(processor, Processor[Ctx, str])
    assert_type(processor.task_names, tuple[str, ...])
    assert AsyncTaskProcessor is Processor

    try:
        report = await processor.process_tasks(Ctx())
    except ProcessorError as error:
        assert_type(error.failures, tuple[TaskFailure[Any], ...])
        assert_type(error.report, RunReport[Any, Any])
        return
    assert_type(report, RunReport[Ctx, str])
    assert_type(report.tasks, dict[str, TaskReport[str]])
    assert_type(report.results, dict[str, Any])
    assert_type(report.duration, float)
    task_report = report.tasks["load"]
    assert_type(task_report.state, TaskState)
    assert_type(task_report.phases[Phase.EXECUTE], PhaseReport)
    assert_type(task_report.phases[Phase.EXECUTE].attempts, int)

    runner = processor.open(Ctx())
    assert_type(runner, PhaseRunner[Ctx, str])
    async with runner as r:
        assert_type(await r.run_next(), bool)
        assert_type(r.next_phase_id(), Phase | None)
