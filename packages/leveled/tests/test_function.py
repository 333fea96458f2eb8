"""TaskFunction: validation, retries and backoff (S8), timeouts, guards, task groups."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from headrace_core import ConfigurationError
from headrace_core.testing import VirtualClock
from headrace_leveled import (
    Phase,
    PhaseTimeout,
    Processor,
    ProcessorError,
    RetryableError,
    RetryableException,
    Task,
    TaskFunction,
    task_func,
    task_group_func,
    task_sync_func,
)


async def noop(ctx: Any) -> None:
    return None


# -- validation (S11) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": "1"}, "timeout"),
        ({"retries": 1.5}, "retries"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"initial_delay": -0.1}, "initial_delay"),
        ({"initial_delay": float("inf")}, "initial_delay"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"backoff_factor": 0}, "backoff_factor"),
        ({"jitter": 1}, "jitter"),
        ({"retry_on": (BaseException,)}, "retry_on"),
        ({"retry_on": (asyncio.CancelledError,)}, "retry_on"),
        ({"retry_on": (KeyboardInterrupt,)}, "retry_on"),
        ({"retry_on": ("ValueError",)}, "retry_on"),
        ({"retry_on": "ValueError"}, "retry_on"),
        ({"retryable_exceptions": (BaseException,)}, "retryable_exceptions"),
        ({"guards": [object()]}, "guards"),
        ({"guards": 3}, "guards"),
        ({"task_group": "yes"}, "task_group"),
    ],
)
def test_validation_names_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError, match=argument) as info:
        TaskFunction(noop, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.argument == argument


def test_function_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="function=42"):
        TaskFunction(42)  # type: ignore[arg-type]


def test_valid_options_and_sdax_aliases() -> None:
    tf = TaskFunction(
        noop, timeout=2, retries=3, initial_delay=0, backoff_factor=1, retry_on=[ValueError]
    )
    assert tf.timeout == 2.0
    assert tf.retries == 3
    assert tf.retry_on == (ValueError,)
    sd = TaskFunction(noop, retryable_exceptions=(KeyError,), has_task_group_argument=True)
    assert sd.retry_on == sd.retryable_exceptions == (KeyError,)
    assert sd.task_group is sd.has_task_group_argument is True
    assert TaskFunction(noop).retry_on == (TimeoutError, ConnectionError, RetryableError)
    with pytest.raises(ConfigurationError, match="retryable_exceptions"):
        TaskFunction(noop, retry_on=(KeyError,), retryable_exceptions=(KeyError,))


def test_frozen_and_replace() -> None:
    tf = TaskFunction(noop, timeout=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tf.timeout = 2  # type: ignore[misc]
    other = tf.replace(retries=2)
    assert other.retries == 2
    assert other.timeout == 1
    assert tf.retries == 0
    with pytest.raises(ConfigurationError, match="retries"):
        tf.replace(retries=-1)
    via_dataclasses = dataclasses.replace(tf, timeout=3)
    assert via_dataclasses.timeout == 3
    assert via_dataclasses == TaskFunction(noop, timeout=3)
    assert hash(tf) == hash(TaskFunction(noop, timeout=1))


def test_retryable_error_is_an_exception() -> None:
    assert issubclass(RetryableError, Exception)
    assert RetryableException is RetryableError


# -- retries (S8) ------------------------------------------------------------------------------
def flaky(failures: list[BaseException], calls: list[float]) -> Callable[[Any], Awaitable[str]]:
    async def run(ctx: Any) -> str:
        calls.append(asyncio.get_running_loop().time())
        if failures:
            raise failures.pop(0)
        return "ok"

    return run


@pytest.mark.parametrize("width", [1, 2])
async def test_retries_with_exact_backoff_without_jitter(width: int) -> None:
    calls: list[float] = []
    fn = TaskFunction(
        flaky([ConnectionError(), TimeoutError(), RetryableError()], calls),
        retries=3,
        initial_delay=1,
        backoff_factor=3,
        jitter=False,
    )
    builder = Processor.builder().add_task(Task("A", execute=fn))
    for i in range(width - 1):
        builder.add_task(Task(i, execute=noop))
    p = builder.build()
    with VirtualClock():
        report = await p.process_tasks(None)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps == [1, 3, 9]
    assert report.results["A"] == "ok"
    phase = report.tasks["A"].phases[Phase.EXECUTE]
    assert phase.attempts == 4
    assert phase.duration == 13


async def test_jitter_keeps_delay_within_half_to_full() -> None:
    random.seed(7)
    calls: list[float] = []
    fn = TaskFunction(
        flaky([ConnectionError()] * 4, calls), retries=4, initial_delay=2, backoff_factor=2
    )
    p = Processor.builder().add_task(Task("A", fn)).build()
    with VirtualClock():
        await p.process_tasks(None)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    for n, gap in enumerate(gaps):
        nominal = 2 * 2**n
        assert nominal * 0.5 <= gap <= nominal
    assert len({round(g / (2 * 2**n), 6) for n, g in enumerate(gaps)}) > 1  # jittered


async def test_retries_exhausted_raise_the_last_error_as_exception() -> None:
    errors: list[BaseException] = [RetryableError("1"), RetryableError("2"), RetryableError("3")]
    last = errors[-1]
    fn = TaskFunction(flaky(errors, []), retries=2, initial_delay=0)
    p = Processor.builder().add_task(Task("A", fn)).build()
    with VirtualClock(), pytest.raises(Exception, match="task 'A' pre_execute") as info:
        await p.process_tasks(None)  # caught by except Exception
    assert isinstance(info.value, ProcessorError)
    assert info.value.exceptions == (last,)
    assert info.value.report is not None
    assert info.value.report.tasks["A"].phases[Phase.PRE_EXECUTE].attempts == 3


async def test_non_retryable_error_is_not_retried() -> None:
    calls: list[float] = []
    fn = TaskFunction(flaky([KeyError("no")], calls), retries=5, initial_delay=0)
    p = Processor.builder().add_task(Task("A", fn)).build()
    with pytest.raises(ProcessorError):
        await p.process_tasks(None)
    assert len(calls) == 1


async def test_custom_retry_on() -> None:
    calls: list[float] = []
    fn = TaskFunction(
        flaky([KeyError(), KeyError()], calls), retries=2, initial_delay=0, retry_on=(LookupError,)
    )
    p = Processor.builder().add_task(Task("A", fn)).build()
    report = await p.process_tasks(None)
    assert len(calls) == 3
    assert report.tasks["A"].phases[Phase.PRE_EXECUTE].attempts == 3


async def test_cancellation_is_never_retried() -> None:
    calls: list[float] = []

    async def slow(ctx: Any) -> None:
        calls.append(0)
        await asyncio.sleep(100)

    fn = TaskFunction(slow, retries=5, initial_delay=0, retry_on=(Exception,))
    p = Processor.builder().add_task(Task("A", fn)).build()
    with VirtualClock():
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert calls == [0]


async def test_cancel_during_backoff_sleep_stops_retrying() -> None:
    calls: list[float] = []
    fn = TaskFunction(flaky([ConnectionError()] * 5, calls), retries=5, initial_delay=10)
    p = Processor.builder().add_task(Task("A", fn)).build()
    with VirtualClock():
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert len(calls) == 1


async def test_timeout_applies_per_attempt_and_is_retried() -> None:
    starts: list[float] = []

    async def sometimes_slow(ctx: Any) -> str:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) < 3:
            await asyncio.sleep(100)
        return "done"

    fn = TaskFunction(sometimes_slow, timeout=2, retries=2, initial_delay=1, jitter=False)
    p = Processor.builder().add_task(Task("A", execute=fn)).build()
    with VirtualClock():
        report = await p.process_tasks(None)
    assert [b - a for a, b in itertools.pairwise(starts)] == [3, 4]
    assert report.results == {"A": "done"}


async def test_timeout_exhausted_is_phase_timeout() -> None:
    async def hang(ctx: Any) -> None:
        await asyncio.sleep(100)

    fn = TaskFunction(hang, timeout=1, retries=1, initial_delay=0)
    p = (
        Processor.builder()
        .add_task(Task("A", execute=fn))
        .add_task(Task("B", execute=noop))
        .build()
    )
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert leaf.phase is Phase.EXECUTE


# -- guards ------------------------------------------------------------------------------------
class Recorder:
    """A guard-like object: records calls and passes through."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        self.log.append(f"{self.name}>")
        try:
            return await fn(*args, **kwargs)
        finally:
            self.log.append(f"<{self.name}")


class Refuse:
    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("guard says no")


async def test_guards_wrap_each_attempt_outermost_first_inside_retries() -> None:
    log: list[str] = []
    errors: list[BaseException] = [ConnectionError()]

    async def fn(ctx: Any) -> str:
        log.append("fn")
        if errors:
            raise errors.pop()
        return "ok"

    tf = TaskFunction(
        fn, guards=[Recorder("outer", log), Recorder("inner", log)], retries=1, initial_delay=0
    )
    report = await Processor.builder().add_task(Task("A", execute=tf)).build().process_tasks(None)
    assert log == ["outer>", "inner>", "fn", "<inner", "<outer"] * 2
    assert report.results == {"A": "ok"}


async def test_guard_rejection_is_the_phase_failure_and_retryable() -> None:
    tf = TaskFunction(noop, guards=[Refuse()], retries=2, initial_delay=0)
    p = Processor.builder().add_task(Task("A", tf)).build()
    with pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert isinstance(info.value.exceptions[0], ConnectionRefusedError)
    assert info.value.report is not None
    assert info.value.report.tasks["A"].phases[Phase.PRE_EXECUTE].attempts == 3


# -- task groups ---------------------------------------------------------------------------------
async def test_task_group_children_awaited_within_phase() -> None:
    done: list[str] = []

    async def child(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        done.append(name)

    async def parent(ctx: Any, tg: asyncio.TaskGroup) -> str:
        tg.create_task(child("a", 3))
        tg.create_task(child("b", 5))
        return "parent"

    async def post(ctx: Any) -> None:
        done.append("post")

    tf = TaskFunction(parent, task_group=True)
    p = Processor.builder().add_task(Task("A", execute=tf, post_execute=post)).build()
    with VirtualClock() as clock:
        start = clock.now()
        report = await p.process_tasks(None)
    assert done == ["a", "b", "post"]
    assert report.tasks["A"].phases[Phase.EXECUTE].duration == 5
    assert report.results["A"] == "parent"
    assert start + 5 == report.tasks["A"].phases[Phase.POST_EXECUTE].started


async def test_task_group_child_failure_is_a_flat_leaf() -> None:
    boom = ValueError("child")

    async def child() -> None:
        raise boom

    async def parent(ctx: Any, tg: asyncio.TaskGroup) -> None:
        tg.create_task(child())
        await asyncio.sleep(10)

    p = Processor.builder().add_task(Task("A", TaskFunction(parent, task_group=True))).build()
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert info.value.exceptions == (boom,)
    assert info.value.failures[0].task == "A"


async def test_task_group_timeout_cancels_children() -> None:
    cancelled: list[str] = []

    async def child() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append("child")
            raise

    async def parent(ctx: Any, tg: asyncio.TaskGroup) -> None:
        tg.create_task(child())

    tf = TaskFunction(parent, task_group=True, timeout=3)
    p = Processor.builder().add_task(Task("A", tf)).build()
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert isinstance(info.value.exceptions[0], PhaseTimeout)
    assert cancelled == ["child"]


async def test_seeded_rng_makes_jitter_reproducible() -> None:
    results: list[list[float]] = []
    for seed in (3, 3, 4):
        calls: list[float] = []
        fn = TaskFunction(flaky([ConnectionError()] * 3, calls), retries=3, initial_delay=1)
        p = Processor.builder().add_task(Task("A", fn)).build(rng=random.Random(seed))
        with VirtualClock():
            await p.process_tasks(None)
        results.append([round(b - a, 9) for a, b in itertools.pairwise(calls)])
    assert results[0] == results[1] != results[2]
    with pytest.raises(ConfigurationError, match="rng"):
        Processor.builder().build(rng=42)  # type: ignore[arg-type]


def _sync_noop(ctx: Any) -> None:
    return None


async def _group_noop(ctx: Any, tg: Any) -> None:
    return None


@pytest.mark.parametrize(
    "make",
    [
        lambda: task_func(noop, retryable_exceptions=("ValueError",)),  # type: ignore[arg-type]
        lambda: task_group_func(_group_noop, retryable_exceptions=("ValueError",)),  # type: ignore[arg-type]
        lambda: task_sync_func(_sync_noop, retryable_exceptions=("ValueError",)),  # type: ignore[arg-type]
    ],
)
def test_sdax_factories_name_retryable_exceptions(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError, match="retryable_exceptions") as info:
        make()
    assert info.value.argument == "retryable_exceptions"
