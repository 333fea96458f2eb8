"""flowrhythm's behaviours its users rely on: its errors, its queue protocol, its stop.

Where flowrhythm raises TypeError for configuration, flow raises ConfigurationTypeError,
which is also a ConfigurationError, so either ``except`` works.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import pytest

from headrace_core import ConfigurationError, ConfigurationTypeError
from headrace_core.testing import VirtualClock
from headrace_flow import (
    AsyncQueueInterface,
    FixedScaling,
    FlowClosed,
    Last,
    QueueLike,
    TransformerError,
    UtilizationScaling,
    batched,
    fifo_queue,
    flow,
    lifo_queue,
    priority_queue,
    router,
    stage,
)


async def two(a: int, b: int) -> int:
    return a + b


async def none() -> int:
    return 1


async def one(x: int) -> int:
    return x


async def label(x: int) -> str:
    return "a"


@pytest.mark.parametrize(("target", "count"), [(two, 2), (none, 0)])
def test_wrong_arity_is_rejected_at_flow_as_both_errors(target: object, count: int) -> None:
    for build in (lambda: flow(target), lambda: stage(target)):
        with pytest.raises(TypeError, match=r"must take 0 args .* or 1 arg") as info:
            build()
        assert isinstance(info.value, ConfigurationError)
        assert f"got {count}" in str(info.value)


def test_wrong_arity_of_a_router_arm_is_rejected() -> None:
    with pytest.raises(ConfigurationTypeError, match="router arm 'a'"):
        router(label, a=two)


def test_an_async_generator_of_two_args_is_rejected() -> None:
    async def gen(a: int, b: int):  # type: ignore[no-untyped-def]
        yield a

    with pytest.raises(ConfigurationTypeError, match="got 2"):
        flow(gen)


def test_one_argument_with_defaults_and_varargs_are_accepted() -> None:
    async def defaults(x: int, y: int = 0) -> int:
        return x

    async def varargs(*items: int) -> int:
        return 0

    flow(one, defaults, varargs)  # no error


@pytest.mark.parametrize(
    "build",
    [
        lambda: stage(one, name=""),
        lambda: router(label, a=one, name=""),
        lambda: batched(2, name=""),
    ],
)
def test_an_empty_name_is_a_type_error_too(build: object) -> None:
    with pytest.raises(TypeError, match="non-empty str") as info:
        build()  # type: ignore[operator]
    assert isinstance(info.value, ConfigurationError)


def test_fixed_scaling_zero_points_to_scale_to_zero() -> None:
    with pytest.raises(ConfigurationError, match=r"workers=0: must be an int >= 1") as info:
        FixedScaling(workers=0)
    assert "UtilizationScaling(min_workers=0)" in str(info.value)
    assert UtilizationScaling(min_workers=0).min_workers == 0


async def test_last_from_a_router_classifier_is_the_items_failure() -> None:
    async def classify(x: int) -> Any:
        return Last(x) if x == 2 else "a"

    events: list[object] = []

    async def on_error(event: object) -> None:
        events.append(event)

    with VirtualClock():
        f = flow(router(classify, a=one), on_error=on_error)
        out = [x async for x in f.iterate(range(5))]
    assert out == [0, 1, 3, 4]  # the run goes on: Last from a classifier ends nothing
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, TransformerError)
    assert event.item == 2
    assert isinstance(event.exception, TypeError)
    assert "returned Last" in str(event.exception)


def test_the_queue_factories_match_flowrhythms_queue_protocol() -> None:
    for factory in (fifo_queue, lifo_queue, priority_queue):
        queue = factory(3)
        assert isinstance(queue, QueueLike)
        # asyncio's queues have shutdown() from 3.13 on, which flowrhythm requires
        assert isinstance(queue, AsyncQueueInterface) == (sys.version_info >= (3, 13))

    class Mine:
        async def put(self, item: object) -> None: ...
        async def get(self) -> object: ...
        def shutdown(self, immediate: bool = False) -> None: ...

    assert isinstance(Mine(), AsyncQueueInterface)
    assert not isinstance(object(), AsyncQueueInterface)


async def test_a_send_blocked_on_a_full_queue_fails_when_the_flow_stops() -> None:
    release = asyncio.Event()

    async def slow(x: int) -> int:
        await release.wait()
        return x

    f = flow(stage(slow, queue_size=1))
    with VirtualClock():
        failure: list[BaseException] = []

        async def feed() -> None:
            async with f.push() as handle:
                try:
                    for i in range(10):
                        await handle.send(i)  # blocks once the queue and the worker are full
                except BaseException as exc:
                    failure.append(exc)
                    raise

        task = asyncio.create_task(feed())
        await asyncio.sleep(1)
        assert not task.done()  # blocked in send()
        await f.stop()
        with contextlib.suppress(FlowClosed):
            await task
    assert len(failure) == 1
    assert isinstance(failure[0], FlowClosed)
    if sys.version_info >= (3, 13):
        assert isinstance(failure[0], asyncio.QueueShutDown)  # what flowrhythm raises
