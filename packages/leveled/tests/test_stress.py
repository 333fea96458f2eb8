"""Seeded Monte Carlo: random graphs, failures, timeouts and cancels; invariants on every run.

Checked on every run: a task's post runs iff it was entered (pre started, or pre-less and
reached), at most once; posts run in reverse dependency order, pres in dependency order;
every execute starts after every pre ended; the outcome is CancelledError when the caller
cancelled, else a ProcessorError holding exactly the exceptions the phases raised, else a
report.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from headrace_core.testing import VirtualClock
from headrace_leveled import Phase, Processor, ProcessorError, Task, TaskFunction


@dataclass
class Event:
    task: int
    phase: str
    start: float
    end: float = -1.0
    outcome: str = "running"


@dataclass
class Ctx:
    events: list[Event] = field(default_factory=list)
    raised: list[BaseException] = field(default_factory=list)


def phase_fn(rng: random.Random, task: int, phase: str, fail_rate: float) -> Any:
    delay = rng.choice([0, 0, 0.5, 1, 2, 5])
    fails = rng.random() < fail_rate

    async def run(ctx: Ctx) -> int:
        loop = asyncio.get_running_loop()
        event = Event(task, phase, loop.time())
        ctx.events.append(event)
        try:
            if delay:
                await asyncio.sleep(delay)
            if fails:
                exc = RuntimeError(f"{task}.{phase}")
                ctx.raised.append(exc)
                raise exc
        except asyncio.CancelledError:
            event.outcome = "cancelled"
            raise
        except BaseException:
            event.outcome = "failed"
            raise
        else:
            event.outcome = "ok"
            return task
        finally:
            event.end = loop.time()
        raise AssertionError("unreachable")

    if rng.random() < 0.03:
        return TaskFunction(run, timeout=rng.choice([0.3, 1.5, 10]))
    return run


def random_graph(
    rng: random.Random, n: int
) -> tuple[list[tuple[Task[Any, int], int | None, list[int]]], float]:
    fail_rate = rng.choice([0.0, 0.0, 0.01, 0.05])
    specs: list[tuple[Task[Any, int], int | None, list[int]]] = []
    for i in range(n):
        phases = [
            phase_fn(rng, i, name, fail_rate) if rng.random() < 0.7 else None
            for name in ("pre", "exe", "post")
        ]
        level = rng.randrange(6) if rng.random() < 0.6 else None
        deps = [d for d in rng.sample(range(i), min(i, rng.randrange(3))) if rng.random() < 0.8]
        # An explicit dependency on a higher level would make a cycle through the levels.
        if level is not None:
            lower = [d for d in deps if (lvl := specs[d][1]) is None or lvl < level]
            deps = lower
        else:
            deps = [d for d in deps if specs[d][1] is None]
        specs.append((Task(i, *phases), level, deps))
    return specs, fail_rate


def effective_deps(
    specs: list[tuple[Task[Any, int], int | None, list[int]]],
) -> dict[int, set[int]]:
    deps = {i: set(d) for i, (_, _, d) in enumerate(specs)}
    levels = sorted({lvl for _, lvl, _ in specs if lvl is not None})
    members = {lvl: [i for i, (_, l2, _) in enumerate(specs) if l2 == lvl] for lvl in levels}
    for low, high in itertools.pairwise(levels):
        for i in members[high]:
            deps[i].update(members[low])
    return deps


def check_run(
    specs: list[tuple[Task[Any, int], int | None, list[int]]],
    ctx: Ctx,
    outcome: object,
    cancelled: bool,
) -> None:
    deps = effective_deps(specs)
    by: dict[tuple[int, str], list[Event]] = {}
    for e in ctx.events:
        by.setdefault((e.task, e.phase), []).append(e)
    for key, events in by.items():
        assert len(events) == 1, f"{key} ran {len(events)} times"
        assert events[0].outcome != "running", f"{key} still running after the run"
    one = {k: v[0] for k, v in by.items()}

    for i, (task, _, _) in enumerate(specs):
        post = one.get((i, "post"))
        if task.pre_execute is not None and task.post_execute is not None:
            assert (post is not None) == ((i, "pre") in one), f"task {i}: entered <=> post"
        elif post is not None:
            for d in deps[i]:
                dt = specs[d][0]
                if dt.pre_execute is not None:
                    assert one[(d, "pre")].outcome == "ok", f"pre-less {i} entered before {d}"
        pre = one.get((i, "pre"))
        if pre is not None:
            for d in deps[i]:
                dpre = one.get((d, "pre"))
                if dpre is not None:
                    assert dpre.outcome == "ok"
                    assert dpre.end <= pre.start
        if post is not None:
            for d in deps[i]:
                dpost = one.get((d, "post"))
                if dpost is not None:
                    assert post.end <= dpost.start, f"post {i} must end before post {d}"
        # no phase of a task starts after its own post started
        if post is not None:
            for phase in ("pre", "exe"):
                earlier = one.get((i, phase))
                if earlier is not None:
                    assert earlier.end <= post.start
    pre_ends = [e.end for e in ctx.events if e.phase == "pre"]
    exe_starts = [e.start for e in ctx.events if e.phase == "exe"]
    if exe_starts and pre_ends:
        assert min(exe_starts) >= max(pre_ends)
    if cancelled:
        assert isinstance(outcome, asyncio.CancelledError)
        return
    timeouts = [e for e in ctx.events if e.outcome == "cancelled"]
    if isinstance(outcome, ProcessorError):
        leaves = list(outcome.exceptions)
        raised_ids = {id(x) for x in ctx.raised}
        for leaf in leaves:
            assert id(leaf) in raised_ids or isinstance(leaf, TimeoutError)
        primary = [f for f in outcome.failures if f.phase is not Phase.POST_EXECUTE]
        post_f = [f for f in outcome.failures if f.phase is Phase.POST_EXECUTE]
        assert outcome.failures == tuple(primary + post_f)
        assert [f.error for f in outcome.failures] == leaves
        # every post that raised is in the group
        post_raised = {id(x) for x in ctx.raised if str(x).endswith(".post")}
        assert post_raised <= {id(f.error) for f in post_f}
    else:
        assert not isinstance(outcome, BaseException), outcome
        ran_posts = [e for e in ctx.events if e.phase == "post"]
        assert all(e.outcome == "ok" for e in ran_posts)
        with_post = [i for i, (t, _, _) in enumerate(specs) if t.post_execute is not None]
        assert len(ran_posts) == len(with_post), "a clean run posts every task"
        assert not timeouts or all(e.phase != "pre" for e in timeouts)


@pytest.mark.parametrize("seed", range(6))
async def test_monte_carlo(seed: int) -> None:
    rng = random.Random(seed)
    total = 0
    with VirtualClock():
        loop = asyncio.get_running_loop()
        for _ in range(20):
            n = rng.randrange(20, 80)
            total += n
            specs, _ = random_graph(rng, n)
            builder = Processor.builder()
            for task, level, deps in specs:
                builder.add_task(task, level, depends_on=deps)
            p = builder.build(
                execute_order=rng.choice(["parallel", "dependencies"]),
                max_concurrency=rng.choice([None, None, 1, 3, 16]),
                cleanup_timeout=rng.choice([None, None, None, 3.0]),
            )
            ctx = Ctx()
            run = asyncio.create_task(p.process_tasks(ctx))
            cancels = rng.choice([0, 0, 0, 1, 2, 3])
            at = 0.0
            for _ in range(cancels):
                at += rng.choice([0, 0.25, 1, 3])
                loop.call_later(at, run.cancel)
            try:
                outcome: object = await run
            except BaseException as exc:
                outcome = exc
            # A cancel scheduled after the run ended changes nothing.
            await asyncio.sleep(at + 0.01)
            cancelled = isinstance(outcome, asyncio.CancelledError)
            assert cancelled or not isinstance(outcome, asyncio.CancelledError)
            check_run(specs, ctx, outcome, cancelled)
    assert total >= 20 * 20
