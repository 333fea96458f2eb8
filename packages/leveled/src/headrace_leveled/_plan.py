"""The compiled, immutable form of a task graph that every run of a processor shares."""

from __future__ import annotations

import inspect
import itertools
import random
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from headrace_core.backoff import Backoff, exponential
from headrace_core.lowlevel import safe_repr
from headrace_leveled._errors import CycleError, GraphError, PhaseTimeout, argument_error
from headrace_leveled._function import DEFAULT_RETRY_ON, TaskFunction
from headrace_leveled._task import Task
from headrace_leveled._types import Phase, TaskFailure

__all__ = ["PHASES", "CallSpec", "Entry", "Plan", "compile_plan"]

PHASES = (Phase.PRE_EXECUTE, Phase.EXECUTE, Phase.POST_EXECUTE)
_NO_BACKOFF = exponential(base=0.0, factor=1.0, max=0.0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``add_task`` call, validated."""

    task: Task[Any, Any]
    level: int | None
    depends_on: tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class CallSpec:
    """How one phase of one task is called when it needs more than ``await fn(ctx)``."""

    name: Any
    phase: Phase
    function: Callable[..., Any]
    timeout: float | None
    retries: int
    retry_on: tuple[type[Exception], ...]
    backoff: Backoff
    guards: tuple[Callable[..., Any], ...]
    task_group: bool
    timed_only: bool = False

    def timed_out(self) -> PhaseTimeout:
        """The error of a call that ran past ``timeout``."""
        assert self.timeout is not None
        return PhaseTimeout(task=self.name, phase=self.phase, timeout=self.timeout)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a run needs, computed once at ``build()``.

    Nodes ``0 .. n_tasks-1`` are the tasks in the order they were added; nodes from
    ``n_tasks`` on are internal level barriers (they keep level edges O(n)).
    """

    names: tuple[Any, ...]
    tasks: tuple[Task[Any, Any], ...]
    n_tasks: int
    n_nodes: int
    succ: tuple[tuple[int, ...], ...]
    pred: tuple[tuple[int, ...], ...]
    n_pred: tuple[int, ...]
    n_succ: tuple[int, ...]
    roots: tuple[int, ...]
    leaves: tuple[int, ...]
    fast: tuple[tuple[Callable[[Any], Any] | None, ...], ...]
    spec: tuple[tuple[CallSpec | None, ...], ...]
    execute_nodes: tuple[int, ...]
    order: tuple[Any, ...]
    execute_by_deps: bool
    max_concurrency: int
    cleanup_timeout: float | None
    on_cleanup_error: Callable[[TaskFailure[Any]], None] | None
    rng: random.Random | None = None
    # Per phase: whether a call has a timeout and nothing else (``CallSpec.timed_only``).
    timed: tuple[bool, ...] = (False, False, False)


def _compile_phase(
    name: Any, phase: Phase, value: object, default_timeout: float | None
) -> tuple[Callable[[Any], Any] | None, CallSpec | None]:
    if value is None:
        return None, None
    if isinstance(value, TaskFunction):
        function: Callable[..., Any] = value.function
        timeout = value.timeout if value.timeout is not None else default_timeout
        plain = not (value.retries or value.guards or value.task_group)
        coroutine = inspect.iscoroutinefunction(function)
        if plain and timeout is None and coroutine:
            return function, None
        return None, CallSpec(
            name,
            phase,
            function,
            timeout,
            value.retries,
            value.retry_on,
            value.backoff,
            tuple(guard.call for guard in value.guards),
            value.task_group,
            plain and coroutine,
        )
    assert callable(value)
    if default_timeout is None and inspect.iscoroutinefunction(value):
        return value, None
    coroutine = inspect.iscoroutinefunction(value)
    return None, CallSpec(
        name, phase, value, default_timeout, 0, DEFAULT_RETRY_ON, _NO_BACKOFF, (), False, coroutine
    )


def _find_cycle(
    names: Sequence[Any], n_tasks: int, preds: list[list[int]], left: set[int]
) -> CycleError:
    # Every node left after Kahn's pass has a predecessor that is also left: walk the
    # predecessor links until a node repeats (iteratively, so deep graphs are safe).
    start = min(left)
    seen: dict[int, int] = {}
    walk: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = next(p for p in preds[node] if p in left)
    cycle = [n for n in walk[seen[node] :] if n < n_tasks]
    first = cycle.index(min(cycle))
    cycle = cycle[first:] + cycle[:first]
    return CycleError([names[n] for n in [*cycle, cycle[0]]])


def compile_plan(
    entries: Sequence[Entry],
    *,
    execute_order: Literal["parallel", "dependencies"],
    max_concurrency: int | None,
    cleanup_timeout: float | None,
    on_cleanup_error: Callable[[TaskFailure[Any]], None] | None,
    rng: random.Random | None = None,
) -> Plan:
    """Validate the graph and compile it.

    Raises:
        GraphError: when a dependency names a task that was never added.
        CycleError: when the dependencies form a cycle (a self-dependency included).
    """
    names = tuple(e.task.name for e in entries)
    index = {name: i for i, name in enumerate(names)}
    n_tasks = len(names)
    if len(index) != n_tasks:
        # Names that were distinct when added compare equal now (a changing __eq__/__hash__).
        seen: dict[Any, Any] = {}
        for name in names:
            if name in seen:
                raise argument_error(
                    "name",
                    name,
                    f"task names {safe_repr(seen[name])} and {safe_repr(name)} compare equal",
                )
            seen[name] = name
    preds: list[list[int]] = [[] for _ in range(n_tasks)]
    for i, entry in enumerate(entries):
        for dep in entry.depends_on:
            j = index.get(dep)
            if j is None:
                raise GraphError(
                    f"task {safe_repr(entry.task.name)} depends on {safe_repr(dep)}, "
                    "which was never added",
                    task=entry.task.name,
                    missing=dep,
                    value=entry.depends_on,
                )
            if j == i:
                raise CycleError([entry.task.name, entry.task.name])
            preds[i].append(j)
    # Levels: each task of a level depends on every task of the nearest lower level.
    by_level: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        if entry.level is not None:
            by_level.setdefault(entry.level, []).append(i)
    levels = sorted(by_level)
    for low, high in itertools.pairwise(levels):
        below, above = by_level[low], by_level[high]
        if len(below) * len(above) <= len(below) + len(above):
            for i in above:
                preds[i].extend(below)
        else:
            barrier = len(preds)
            preds.append(list(below))
            for i in above:
                preds[i].append(barrier)
    n_nodes = len(preds)
    pred_sets = [tuple(dict.fromkeys(p)) for p in preds]
    succ_lists: list[list[int]] = [[] for _ in range(n_nodes)]
    for i, ps in enumerate(pred_sets):
        for j in ps:
            succ_lists[j].append(i)
    # Kahn's algorithm, ties broken by insertion order.
    remaining = [len(p) for p in pred_sets]
    queue = deque(i for i in range(n_nodes) if remaining[i] == 0)
    topo: list[int] = []
    while queue:
        node = queue.popleft()
        topo.append(node)
        for s in succ_lists[node]:
            remaining[s] -= 1
            if remaining[s] == 0:
                queue.append(s)
    if len(topo) != n_nodes:
        left = set(range(n_nodes)) - set(topo)
        raise _find_cycle(names, n_tasks, [list(p) for p in pred_sets], left)

    fast: list[tuple[Callable[[Any], Any] | None, ...]] = []
    spec: list[tuple[CallSpec | None, ...]] = []
    pad = (None,) * (n_nodes - n_tasks)
    for phase in PHASES:
        compiled = [
            _compile_phase(
                e.task.name,
                phase,
                getattr(e.task, phase.value),
                cleanup_timeout if phase is Phase.POST_EXECUTE else None,
            )
            for e in entries
        ]
        fast.append(tuple(c[0] for c in compiled) + pad)
        spec.append(tuple(c[1] for c in compiled) + pad)
    execute_nodes = tuple(i for i in range(n_tasks) if entries[i].task.execute is not None)
    return Plan(
        names=names,
        tasks=tuple(e.task for e in entries),
        n_tasks=n_tasks,
        n_nodes=n_nodes,
        succ=tuple(tuple(s) for s in succ_lists),
        pred=tuple(pred_sets),
        n_pred=tuple(len(p) for p in pred_sets),
        n_succ=tuple(len(s) for s in succ_lists),
        roots=tuple(i for i in range(n_nodes) if not pred_sets[i]),
        leaves=tuple(i for i in reversed(topo) if not succ_lists[i]),
        fast=tuple(fast),
        spec=tuple(spec),
        execute_nodes=execute_nodes,
        order=tuple(names[i] for i in topo if i < n_tasks),
        execute_by_deps=execute_order == "dependencies",
        max_concurrency=max_concurrency if max_concurrency is not None else 1 << 62,
        cleanup_timeout=cleanup_timeout,
        on_cleanup_error=on_cleanup_error,
        rng=rng,
        timed=tuple(any(c is not None and c.timed_only for c in calls) for calls in spec),
    )
