"""Properties of graph compilation: topological names, cycle paths, level barriers."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headrace_leveled import CycleError, Processor, Task


async def noop(ctx: Any) -> None:
    return None


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[set[int]], list[int | None]]:
    n = draw(st.integers(1, 30))
    deps = [draw(st.sets(st.integers(0, i - 1), max_size=4)) if i else set() for i in range(n)]
    levels = [draw(st.one_of(st.none(), st.integers(0, 4))) for _ in range(n)]
    # explicit deps of a levelled task may only point at lower levels or unlevelled tasks
    for i in range(n):
        li = levels[i]
        deps[i] = {d for d in deps[i] if (ld := levels[d]) is None or (li is not None and ld < li)}
        if li is None:
            deps[i] = {d for d in deps[i] if levels[d] is None}
    return n, deps, levels


def effective(deps: list[set[int]], levels: list[int | None]) -> list[set[int]]:
    out = [set(d) for d in deps]
    present = sorted({lv for lv in levels if lv is not None})
    for low, high in itertools.pairwise(present):
        for i, lv in enumerate(levels):
            if lv == high:
                out[i].update(j for j, lj in enumerate(levels) if lj == low)
    return out


@settings(max_examples=40, deadline=None)
@given(dags())
def test_task_names_are_a_topological_order(
    graph: tuple[int, list[set[int]], list[int | None]],
) -> None:
    n, deps, levels = graph
    builder = Processor.builder()
    for i in range(n):
        builder.add_task(Task(i, noop), levels[i], depends_on=sorted(deps[i]))
    names = builder.build().task_names
    assert sorted(names) == list(range(n))
    position = {name: k for k, name in enumerate(names)}
    for i, ds in enumerate(effective(deps, levels)):
        for d in ds:
            assert position[d] < position[i]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.data())
def test_cycle_path_follows_real_edges(n: int, data: st.DataObject) -> None:
    # a chain 0 <- 1 <- ... <- n-1 plus one back edge closes a cycle
    back_from = data.draw(st.integers(0, n - 2))
    deps: dict[int, list[int]] = {i: [i - 1] if i else [] for i in range(n)}
    deps[back_from].append(n - 1)
    builder = Processor.builder()
    for i in range(n):
        builder.add_task(Task(i, noop), depends_on=deps[i])
    try:
        builder.build()
    except CycleError as error:
        path = error.path
    else:
        raise AssertionError("expected a cycle")
    assert path[0] == path[-1]
    for a, b in itertools.pairwise(path):
        assert b in deps[a]  # each name depends on the next one


@settings(max_examples=20, deadline=None)
@given(dags())
def test_every_pre_runs_after_its_dependencies(
    graph: tuple[int, list[set[int]], list[int | None]],
) -> None:
    n, deps, levels = graph
    order: list[int] = []

    def pre(i: int) -> Any:
        async def run(ctx: Any) -> None:
            await asyncio.sleep(0)
            order.append(i)

        return run

    builder = Processor.builder()
    for i in range(n):
        builder.add_task(Task(i, pre(i)), levels[i], depends_on=sorted(deps[i]))
    asyncio.run(builder.build().process_tasks(None))
    position = {name: k for k, name in enumerate(order)}
    assert sorted(order) == list(range(n))
    for i, ds in enumerate(effective(deps, levels)):
        for d in ds:
            assert position[d] < position[i]
