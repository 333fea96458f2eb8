"""Phases and hooks that misbehave: the run still ends, cleans up and reports the failure."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

from headrace_core import BackoffError, ConfigurationError
from headrace_core.lowlevel import safe_repr
from headrace_core.testing import VirtualClock
from headrace_leveled import (
    Phase,
    PhaseTimeout,
    Processor,
    ProcessorError,
    Task,
    TaskFunction,
    TaskState,
)
from shared.faults import Fault, run_injection


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def step(self, label: str, delay: float = 0.0) -> Any:
        async def run(ctx: Any) -> str:
            self.events.append(label)
            if delay:
                await asyncio.sleep(delay)
            return label

        return run

    def task(
        self, name: Any, pre: float = 0.0, exe: float = 0.0, post: float = 0.0
    ) -> Task[Any, Any]:
        return Task(
            name,
            self.step(f"{name}.pre", pre),
            self.step(f"{name}.exe", exe),
            self.step(f"{name}.post", post),
        )


class NoNotes(Exception):
    """An exception whose ``add_note`` fails."""

    def add_note(self, note: str) -> None:
        raise RuntimeError("add_note is broken")


class BadName:
    """A task name whose ``repr`` fails (hash and eq are the object's own)."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def raising(error: BaseException, delay: float = 0.0) -> Any:
    async def run(ctx: Any) -> None:
        if delay:
            await asyncio.sleep(delay)
        raise error

    return run


# -- annotation never loses the failure ---------------------------------------------------------
@pytest.mark.parametrize("width", [1, 2])
async def test_failure_whose_add_note_raises_still_fails_fast(width: int) -> None:
    log = Log()
    error = NoNotes("boom")
    builder = Processor.builder().add_task(
        Task("A", raising(error), log.step("A.exe"), log.step("A.post")), level=1
    )
    for i in range(1, width):
        builder.add_task(log.task(f"S{i}", pre=5), level=1)
    builder.add_task(log.task("B"), level=2)
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await builder.build().process_tasks(None)
    assert clock.now() == 0  # the sibling's 5 s pre was cancelled at once (fail-fast)
    assert info.value.exceptions == (error,)
    assert info.value.failures[0].task == "A"
    report = info.value.report
    assert report.tasks["A"].state is TaskState.FAILED
    assert report.tasks["B"].state is TaskState.SKIPPED
    assert not any(e.endswith(".exe") for e in log.events)  # execute skipped
    assert "B.pre" not in log.events
    assert "A.post" in log.events


@pytest.mark.parametrize("width", [1, 2])
async def test_failure_of_a_task_whose_name_repr_raises_is_reported(width: int) -> None:
    log = Log()
    name = BadName()
    error = KeyError("k")
    builder = Processor.builder().add_task(
        Task(name, raising(error), log.step("A.exe"), log.step("A.post")), level=1
    )
    for i in range(1, width):
        builder.add_task(log.task(f"S{i}", pre=5), level=1)
    builder.add_task(log.task("B"), level=2)
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await builder.build().process_tasks(None)
    assert info.value.exceptions == (error,)
    assert info.value.failures[0].task is name
    assert "BadName object (repr failed)" in str(info.value)
    assert error.__notes__ == [f"in task {safe_repr(name)} pre_execute"]
    assert not any(e.endswith(".exe") for e in log.events)
    assert "A.post" in log.events


async def test_phase_timeout_of_a_task_whose_name_repr_raises() -> None:
    async def slow(ctx: Any) -> None:
        await asyncio.sleep(10)

    name = BadName()
    p = Processor.builder().add_task(Task(name, TaskFunction(slow, timeout=1))).build()
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert str(leaf) == f"task {safe_repr(name)} pre_execute timed out after 1s"


def test_keyboard_interrupt_from_add_note_reaches_the_caller_after_cleanup() -> None:
    class Interrupting(Exception):
        def add_note(self, note: str) -> None:
            raise KeyboardInterrupt

    async def scenario(fault: Fault) -> None:
        log = Log()
        p = (
            Processor.builder()
            .add_task(Task("A", raising(Interrupting()), None, log.step("A.post")), level=1)
            .add_task(log.task("S", pre=5), level=1)
            .add_task(log.task("B"), level=2)
            .build()
        )
        with pytest.raises(KeyboardInterrupt):
            await p.process_tasks(None)
        assert sorted(log.events) == ["A.post", "S.post", "S.pre"]

    run_injection(scenario, Fault.KEYBOARD_INTERRUPT)


# -- a post that swallows its cancellation is abandoned past cleanup_timeout --------------------
async def swallow_forever(ctx: Any) -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


@pytest.mark.parametrize("width", [1, 2])
async def test_post_swallowing_its_cancellation_is_abandoned(width: int) -> None:
    log = Log()
    closed: list[str] = []

    async def stubborn(ctx: Any) -> None:
        try:
            await swallow_forever(ctx)
        finally:
            closed.append("closed")

    builder = Processor.builder().add_task(log.task("A"), level=1)
    builder.add_task(Task("B", log.step("B.pre"), None, stubborn), level=2)
    for i in range(1, width):
        builder.add_task(log.task(f"C{i}", post=3), level=2)
    p = builder.build(cleanup_timeout=10)
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert clock.now() == 10  # not a second longer: the run stopped waiting at the deadline
    (failure,) = info.value.failures
    assert (failure.task, failure.phase) == ("B", Phase.POST_EXECUTE)
    assert isinstance(failure.error, PhaseTimeout)
    assert failure.error.abandoned
    assert str(failure.error) == (
        "task 'B' post_execute timed out after 10s and ignored its cancellation; abandoned"
    )
    assert closed == ["closed"]  # its coroutine was closed: its finally block ran
    assert log.events[-1] == "A.post"  # the remaining post still ran, after B's
    assert info.value.report.tasks["B"].phases[Phase.POST_EXECUTE].error is failure.error
    # The processor runs again (and abandons again).
    with VirtualClock(), pytest.raises(ProcessorError):
        await p.process_tasks(None)
    assert closed == ["closed", "closed"]


async def test_post_swallowing_once_then_waiting_is_abandoned_not_awaited() -> None:
    async def once(ctx: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # "cleanup after cancel" that takes for ever

    p = (
        Processor.builder()
        .add_task(Task("A", post_execute=TaskFunction(once, timeout=2)))
        .build(cleanup_timeout=50)
    )
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert clock.now() == 2
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert leaf.abandoned


async def test_abandoned_post_with_retries_is_not_retried() -> None:
    calls: list[int] = []

    async def stubborn(ctx: Any) -> None:
        calls.append(1)
        await swallow_forever(ctx)

    fn = TaskFunction(stubborn, timeout=1, retries=3, retry_on=(Exception,), jitter=False)
    p = Processor.builder().add_task(Task("A", post_execute=fn)).build()
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert calls == [1]
    assert clock.now() == 1
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert leaf.abandoned


async def test_task_group_post_whose_child_swallows_is_abandoned() -> None:
    async def post(ctx: Any, tg: asyncio.TaskGroup) -> None:
        tg.create_task(swallow_forever(ctx))
        tg.create_task(swallow_forever(ctx))
        await swallow_forever(ctx)

    p = (
        Processor.builder()
        .add_task(Task("A", post_execute=TaskFunction(post, task_group=True)))
        .build(cleanup_timeout=4)
    )
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert clock.now() == 4
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert leaf.abandoned


async def test_post_whose_guard_hangs_is_bounded_by_cleanup_timeout() -> None:
    class Hanging:
        async def call(self, fn: Any, /, *args: Any) -> Any:
            await asyncio.Event().wait()

    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A"), level=1)
        .add_task(
            Task("B", post_execute=TaskFunction(log.step("B.post"), guards=[Hanging()])), level=2
        )
        .build(cleanup_timeout=3)
    )
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert clock.now() == 3
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert log.events[-1] == "A.post"


@pytest.mark.parametrize("width", [1, 2])
async def test_pre_swallowing_its_timeout_is_abandoned_and_fails_fast(width: int) -> None:
    log = Log()
    builder = Processor.builder().add_task(
        Task("A", TaskFunction(swallow_forever, timeout=5), log.step("A.exe"), log.step("A.post")),
        level=1,
    )
    for i in range(1, width):
        builder.add_task(log.task(f"S{i}", pre=100), level=1)
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await builder.build().process_tasks(None)
    assert clock.now() == 5
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert leaf.abandoned
    assert "A.exe" not in log.events
    assert "A.post" in log.events


# -- retries never retry KeyboardInterrupt, SystemExit or a cancellation ------------------------
def test_retry_on_base_exception_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="retry_on"):
        TaskFunction(raising(ValueError()), retry_on=(BaseException,))  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", [Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT])
@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("width", [1, 2])
def test_fatal_errors_are_never_retried(fault: Fault, group: bool, width: int) -> None:
    error_type = KeyboardInterrupt if fault is Fault.KEYBOARD_INTERRUPT else SystemExit

    async def scenario(fault: Fault) -> None:
        calls: list[int] = []
        log = Log()

        async def fatal(ctx: Any) -> None:
            calls.append(1)
            raise error_type

        async def in_group(ctx: Any, tg: asyncio.TaskGroup) -> None:
            tg.create_task(fatal(ctx))
            await asyncio.sleep(10)

        fn = TaskFunction(
            in_group if group else fatal,
            retries=3,
            retry_on=(Exception,),
            task_group=group,
            initial_delay=0,
        )
        builder = Processor.builder().add_task(Task("A", fn, None, log.step("A.post")))
        for i in range(1, width):
            builder.add_task(log.task(f"S{i}", pre=5))
        with pytest.raises(error_type):
            await builder.build().process_tasks(None)
        assert calls == [1]
        assert "A.post" in log.events

    run_injection(scenario, fault)


@pytest.mark.parametrize("width", [1, 2])
async def test_cancelled_error_raised_by_a_phase_is_never_retried(width: int) -> None:
    calls: list[int] = []

    async def cancels(ctx: Any) -> None:
        calls.append(1)
        raise asyncio.CancelledError

    fn = TaskFunction(cancels, retries=3, retry_on=(Exception,), initial_delay=0)
    builder = Processor.builder().add_task(Task("A", fn))
    for i in range(1, width):
        builder.add_task(Task(f"S{i}", raising(ValueError(), 5)))
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await builder.build().process_tasks(None)
    assert calls == [1]
    assert isinstance(info.value.exceptions[0].__cause__, asyncio.CancelledError)


# -- a custom backoff that runs out or yields garbage ---------------------------------------------
class Finite:
    def __init__(self, *delays: Any) -> None:
        self.values = delays

    def delays(self, rng: random.Random | None = None) -> Iterator[Any]:
        return iter(self.values)


@pytest.mark.parametrize(
    ("backoff", "message"),
    [
        (Finite(1.0), "ran out of delays"),
        (Finite(1.0, None), "yielded None"),
        (Finite(float("nan")), "yielded nan"),
        (Finite(-1), "yielded -1"),
    ],
)
@pytest.mark.parametrize("width", [1, 2])
async def test_backoff_that_runs_out_or_yields_garbage_raises_backoff_error(
    backoff: Finite, message: str, width: int
) -> None:
    error = ConnectionError("down")
    fn = TaskFunction(raising(error), retries=5, backoff=backoff)
    builder = Processor.builder().add_task(Task("A", fn))
    for i in range(1, width):
        builder.add_task(Task(f"S{i}", Log().step("S")))
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await builder.build().process_tasks(None)
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, BackoffError)
    assert message in str(leaf)
    assert leaf.__cause__ is error


async def test_custom_backoff_is_used_and_kept_by_replace() -> None:
    seen: list[float] = []

    class Fixed:
        def delays(self, rng: random.Random | None = None) -> Iterator[float]:
            return itertools.repeat(3.0)

    attempts = 0

    async def flaky(ctx: Any) -> str:
        nonlocal attempts
        attempts += 1
        seen.append(asyncio.get_running_loop().time())
        if attempts < 3:
            raise ConnectionError
        return "ok"

    schedule = Fixed()
    fn = TaskFunction(flaky, retries=2, backoff=schedule)
    assert fn.backoff is schedule
    assert fn.replace(retries=3).backoff is schedule
    p = Processor.builder().add_task(Task("A", execute=fn)).build()
    with VirtualClock():
        report = await p.process_tasks(None)
    assert report.results == {"A": "ok"}
    assert [b - a for a, b in itertools.pairwise(seen)] == [3.0, 3.0]


def test_backoff_must_be_a_schedule() -> None:
    with pytest.raises(ConfigurationError, match="backoff"):
        TaskFunction(raising(ValueError()), backoff=42)  # type: ignore[arg-type]


async def test_rng_yielding_nan_raises_backoff_error() -> None:
    class NaN(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return float("nan")

    error = ConnectionError("down")
    p = (
        Processor.builder()
        .add_task(Task("A", TaskFunction(raising(error), retries=2)))
        .build(rng=NaN())
    )
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, BackoffError)
    assert leaf.__cause__ is error


# -- one note per task and phase, however many runs raise the same object -----------------------
@pytest.mark.parametrize("width", [1, 2])
async def test_same_exception_object_gets_one_note_across_runs(width: int) -> None:
    error = LookupError("shared")
    builder = Processor.builder().add_task(Task("A", raising(error)))
    for i in range(1, width):
        builder.add_task(Task(f"S{i}", Log().step("S")))
    p = builder.build()
    for _ in range(3):
        with pytest.raises(ProcessorError):
            await p.process_tasks(None)
    assert error.__notes__ == ["in task 'A' pre_execute"]


# -- KeyboardInterrupt / SystemExit from a phase: cleanup, then the caller ----------------------
@pytest.mark.parametrize("fault", [Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT])
@pytest.mark.parametrize("phase", ["pre", "exe", "post"])
@pytest.mark.parametrize("width", [1, 3])
def test_fatal_error_in_a_phase_runs_cleanup_then_reaches_the_caller(
    fault: Fault, phase: str, width: int
) -> None:
    error_type = KeyboardInterrupt if fault is Fault.KEYBOARD_INTERRUPT else SystemExit

    async def scenario(fault: Fault) -> None:
        log = Log()

        async def fatal(ctx: Any) -> None:
            log.events.append(f"X.{phase}")
            await asyncio.sleep(1)
            raise error_type

        def fn(which: str) -> Any:
            return fatal if which == phase else log.step(f"X.{which}", 1)

        builder = Processor.builder()
        builder.add_task(log.task("A"), level=1)
        builder.add_task(Task("X", fn("pre"), fn("exe"), fn("post")), level=2)
        for i in range(1, width):
            builder.add_task(log.task(f"S{i}", pre=1, exe=5), level=2)
        builder.add_task(log.task("B"), level=3)
        p = builder.build()
        with pytest.raises(error_type):
            await p.process_tasks(None)
        posts = [e for e in log.events if e.endswith(".post")]
        # Every entered task's post ran once, in reverse level order.
        level2 = sorted(["X.post"] + [f"S{i}.post" for i in range(1, width)])
        if phase == "pre":
            # Level 3 never started, and execute was skipped.
            assert "B.pre" not in log.events
            assert not any(e.endswith(".exe") for e in log.events)
            assert sorted(posts[:-1]) == level2
        else:
            assert posts[0] == "B.post"
            assert sorted(posts[1:-1]) == level2
        assert posts[-1] == "A.post"
        # The processor runs again.
        with pytest.raises(error_type):
            await p.process_tasks(None)

    run_injection(scenario, fault)


class PassThrough:
    async def call(self, fn: Any, /, *args: Any) -> Any:
        return await fn(*args)


class Swallowing:
    """A guard that swallows every cancellation while it waits."""

    async def call(self, fn: Any, /, *args: Any) -> Any:
        await swallow_forever(None)


@pytest.mark.parametrize("guard", [PassThrough(), Swallowing()])
@pytest.mark.parametrize("width", [1, 2])
async def test_guarded_post_that_swallows_is_abandoned_cleanly(
    guard: Any, width: int, caplog: pytest.LogCaptureFixture
) -> None:
    log = Log()
    builder = Processor.builder().add_task(log.task("A"), level=1)
    builder.add_task(Task("B", post_execute=TaskFunction(swallow_forever, guards=[guard])), level=2)
    for i in range(1, width):
        builder.add_task(log.task(f"C{i}", post=1), level=2)
    p = builder.build(cleanup_timeout=5)
    with VirtualClock() as clock, pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert clock.now() == 5
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert leaf.abandoned
    assert log.events[-1] == "A.post"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    me = asyncio.current_task()
    assert me is not None
    assert me.cancelling() == 0


async def test_abandoned_post_of_a_cancelled_run_reaches_the_hook() -> None:
    seen: list[Any] = []
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", exe=100), level=1)
        .add_task(Task("B", log.step("B.pre"), None, swallow_forever), level=2)
        .build(cleanup_timeout=5, on_cleanup_error=seen.append)
    )
    with VirtualClock() as clock:
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        await asyncio.sleep(1)
        run.cancel()  # a second cancel during cleanup changes nothing
        with pytest.raises(asyncio.CancelledError):
            await run
        assert clock.now() == 6
    (failure,) = seen
    assert failure.task == "B"
    assert isinstance(failure.error, PhaseTimeout)
    assert failure.error.abandoned
    assert log.events[-1] == "A.post"
