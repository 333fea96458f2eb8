"""One lifecycle across the family: every long-lived component keeps the same contract.

``snapshot()`` returns a frozen dataclass; ``add_listener()`` takes a typed event and
returns a remover; ``aclose()`` refuses new calls with ``Closed``, lets a call in flight
finish and waits for it, and is idempotent; ``closed`` says so; ``async with`` closes on
exit, except for the guards whose ``async with`` guards a block (that meaning is kept).
That ``aclose()`` awaits (or, under a deadline, cancels) pending async listeners is
checked per package, in each fault table's async-listener points.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from headrace_coalesce import Loader, batch, collect
from headrace_core import Closed
from headrace_flow import Flow, flow
from headrace_guards import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Hedge,
    RateLimiter,
    Retry,
    Timeout,
    pipeline,
)
from headrace_leveled import Processor, Task
from headrace_throttle import Throttle

Gate = asyncio.Event
# Each component's user code finds its gate here (keyed by the component's id).
GATES: dict[int, dict[str, Any]] = {}
# A call through the component whose user code waits for ``gate``; returns "done".
Start = Callable[[Any, Gate, list[str]], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class Component:
    name: str
    make: Callable[[], Any]
    start: Start
    expected: Any = "done"
    blocks: bool = False  # its ``async with`` guards a block (and does not close)


async def _user(gate: Gate, entered: list[str]) -> str:
    entered.append("in")
    await gate.wait()
    return "done"


async def _guarded(g: Any, gate: Gate, entered: list[str]) -> Any:
    return await g.call(_user, gate, entered)


async def _throttled(t: Throttle, gate: Gate, entered: list[str]) -> Any:
    return await t.execute(lambda slot: _user(gate, entered))


def _loader() -> Loader[int, str]:
    gates: dict[str, Any] = {}

    async def load(keys: list[int]) -> list[str]:
        gates["entered"].append("in")
        await gates["gate"].wait()
        return ["done" for _ in keys]

    loader: Loader[int, str] = Loader(load, cache=False)
    GATES[id(loader)] = gates
    return loader


async def _loading(loader: Any, gate: Gate, entered: list[str]) -> Any:
    GATES[id(loader)].update(gate=gate, entered=entered)
    return await loader.load(1)


def _batched() -> Any:
    gates: dict[str, Any] = {}

    @batch
    async def fetch(key: int) -> list[str]:
        keys = await collect(key)
        gates["entered"].append("in")
        await gates["gate"].wait()
        return ["done" for _ in keys]

    GATES[id(fetch)] = gates
    return fetch


async def _fetching(fn: Any, gate: Gate, entered: list[str]) -> Any:
    GATES[id(fn)].update(gate=gate, entered=entered)
    return await fn(1)


def _flow() -> Flow[Any, Any]:
    gates: dict[str, Any] = {}

    async def stage(item: int) -> int:
        gates["entered"].append("in")
        await gates["gate"].wait()
        return item

    f: Flow[Any, Any] = flow(stage)
    GATES[id(f)] = gates
    return f


async def _flowing(f: Any, gate: Gate, entered: list[str]) -> Any:
    GATES[id(f)].update(gate=gate, entered=entered)
    stats = await f.run([1, 2, 3])
    # Closed while running: the run drains; nothing it took in is lost.
    return stats.completed == stats.accepted >= 1


def _processor() -> Processor[Any, str]:
    async def phase(ctx: dict[str, Any]) -> None:
        ctx["entered"].append("in")
        await ctx["gate"].wait()

    return Processor.builder().add_task(Task("A", execute=phase), level=1).build()


async def _processing(p: Processor[Any, str], gate: Gate, entered: list[str]) -> Any:
    report = await p.process_tasks({"gate": gate, "entered": entered})
    return report.succeeded


COMPONENTS = [
    Component("Timeout", lambda: Timeout(60), _guarded, blocks=True),
    Component("Bulkhead", lambda: Bulkhead(2), _guarded, blocks=True),
    Component("CircuitBreaker", lambda: CircuitBreaker(), _guarded, blocks=True),
    Component("RateLimiter", lambda: RateLimiter(10), _guarded, blocks=True),
    Component("Retry", lambda: Retry(3), _guarded),
    Component("Fallback", lambda: Fallback(lambda exc: "fallback"), _guarded),
    Component("Hedge", lambda: Hedge(30.0), _guarded),
    Component("Pipeline", lambda: pipeline(Retry(2), CircuitBreaker(), Timeout(60)), _guarded),
    Component("Throttle", lambda: Throttle(max_concurrency=2), _throttled),
    Component("Loader", _loader, _loading),
    Component("@batch", _batched, _fetching),
    Component("Flow", _flow, _flowing, expected=True),
    Component("Processor", _processor, _processing, expected=True),
]
IDS = [c.name for c in COMPONENTS]


def _listener_event_type(component: Any) -> Any:
    """The event type ``add_listener``'s callback takes, from its annotation."""
    hints = typing.get_type_hints(type(component).add_listener)
    callback = hints["callback"]
    args = typing.get_args(callback)
    assert args, f"{type(component).__name__}.add_listener's callback is not typed"
    params = args[0]
    assert isinstance(params, list), callback
    assert len(params) == 1, callback
    return params[0]


@pytest.mark.parametrize("spec", COMPONENTS, ids=IDS)
def test_snapshot_is_frozen_and_listeners_are_typed(spec: Component) -> None:
    component = spec.make()
    snapshot = component.snapshot()
    assert dataclasses.is_dataclass(snapshot)
    field = dataclasses.fields(snapshot)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(snapshot, field, None)
    event = _listener_event_type(component)
    assert event is not Any
    remove = component.add_listener(lambda event: None)
    assert callable(remove)
    remove()
    assert component.closed is False
    assert inspect.iscoroutinefunction(component.aclose)


@pytest.mark.parametrize("spec", COMPONENTS, ids=IDS)
async def test_aclose_refuses_new_calls_and_waits_for_those_in_flight(spec: Component) -> None:
    component = spec.make()
    gate, entered = asyncio.Event(), list[str]()
    in_flight = asyncio.create_task(spec.start(component, gate, entered))
    while not entered:
        await asyncio.sleep(0)
    closing = asyncio.create_task(component.aclose())
    for _ in range(5):
        await asyncio.sleep(0)
    assert component.closed
    assert not closing.done(), "aclose() returned while a call was in flight"
    with pytest.raises(Closed):
        await spec.start(component, gate, entered)
    gate.set()
    assert await in_flight == spec.expected  # the call in flight finished normally
    await closing
    await component.aclose()  # idempotent
    assert component.closed
    with pytest.raises(Closed):
        await spec.start(component, gate, entered)
    component.snapshot()  # still readable


@pytest.mark.parametrize("spec", COMPONENTS, ids=IDS)
async def test_async_with(spec: Component) -> None:
    component = spec.make()
    if not hasattr(component, "__aenter__"):
        # Retry, Fallback, Hedge, Pipeline: ``async with`` cannot run a body again.
        assert spec.name in {"Retry", "Fallback", "Hedge", "Pipeline"}
        await component.aclose()
        assert component.closed
        return
    async with component as entered:
        assert entered is component
    if spec.blocks:
        assert not component.closed  # a guard's ``async with`` guards a block
        await component.aclose()
    assert component.closed


def test_every_long_lived_component_is_walked() -> None:
    assert set(IDS) == {
        "Timeout",
        "Bulkhead",
        "CircuitBreaker",
        "RateLimiter",
        "Retry",
        "Fallback",
        "Hedge",
        "Pipeline",
        "Throttle",
        "Loader",
        "@batch",
        "Flow",
        "Processor",
    }
