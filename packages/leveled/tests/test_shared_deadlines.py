"""Phase timeouts through the run's shared watchers (one loop timer per timeout length).

A phase with only a timeout makes no ``asyncio.Timeout`` of its own: run inline, it shares
the pass's one (the stretch), which it leaves when its deadline came; run as a task, the
task is its scope and the watcher cancels it. A call with retries or guards enters an
``asyncio.Timeout`` per attempt. These tests pin what the sharing must not change: which
calls time out and when, the caller's cancel against armed deadlines, an
``asyncio.timeout`` around the run, abandonment, retries, and that a run leaves no timer
armed behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any

import pytest

from headrace_core._watch import Deadlines
from headrace_core.testing import VirtualClock
from headrace_leveled import (
    Phase,
    PhaseTimeout,
    Processor,
    ProcessorError,
    RunReport,
    Task,
    TaskFunction,
    TaskState,
)


class Log:
    """Records ``name.phase`` events and what each phase call saw."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.cancelled: list[str] = []

    def step(self, label: str, delay: float = 0.0) -> Any:
        async def run(ctx: Any) -> str:
            self.events.append(label)
            try:
                if delay:
                    await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.cancelled.append(label)
                raise
            return label

        return run

    def timed(self, label: str, delay: float, timeout: float) -> TaskFunction[Any]:
        return TaskFunction(self.step(label, delay), timeout=timeout)

    def task(
        self, name: str, pre: float = 0.0, exe: float = 0.0, post: float = 0.0, *, timeout: float
    ) -> Task[Any, str]:
        return Task(
            name,
            self.timed(f"{name}.pre", pre, timeout),
            self.timed(f"{name}.exe", exe, timeout),
            self.timed(f"{name}.post", post, timeout),
        )


def watcher_timers(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.TimerHandle]:
    """Collect, from now on, the loop timers the runs' watchers arm."""
    loop = asyncio.get_running_loop()
    real = loop.call_at
    armed: list[asyncio.TimerHandle] = []

    def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        handle = real(when, callback, *args, **kwargs)
        if getattr(callback, "__func__", None) is Deadlines.fire:
            armed.append(handle)
        return handle

    monkeypatch.setattr(loop, "call_at", call_at)
    return armed


def pending(armed: list[asyncio.TimerHandle]) -> list[asyncio.TimerHandle]:
    """The watchers' timers still waiting to run (neither cancelled nor due)."""
    now = asyncio.get_running_loop().time()
    return [handle for handle in armed if not handle.cancelled() and handle.when() > now]


def failures_of(error: ProcessorError) -> dict[tuple[str, Phase], BaseException]:
    return {(f.task, f.phase): f.error for f in error.failures}


@pytest.mark.parametrize("width", [1, 10])
async def test_every_timed_call_of_a_run_shares_one_timer(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log()
    builder = Processor.builder()
    for level in range(5):
        for i in range(width):
            builder.add_task(
                log.task(f"{level}.{i}", pre=1, exe=1, post=1, timeout=30), level=level
            )
    p = builder.build()
    armed = watcher_timers(monkeypatch)
    with VirtualClock():
        report = await p.process_tasks(None)
        assert len(armed) == 1  # 15 * width deadlines, one timer
        assert armed[0].cancelled()  # and the run left it cancelled
        report = await p.process_tasks(None)  # a second run: a watcher of its own
        assert len(armed) == 2
        assert armed[1].cancelled()
    assert all(t.state is TaskState.SUCCEEDED for t in report.tasks.values())
    assert log.cancelled == []


async def test_one_timeout_length_per_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(Task("A", log.timed("A.pre", 1, 5), log.timed("A.exe", 100, 3)), level=1)
        .add_task(Task("B", log.timed("B.pre", 1, 5), log.timed("B.exe", 1, 3)), level=1)
        .build(cleanup_timeout=7)
    )
    armed = watcher_timers(monkeypatch)
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() == start + 1 + 3  # A.exe expired at its own 3 s
        assert len(armed) == 2  # the 5 s and the 3 s deadlines; posts have none to run
        assert pending(armed) == []  # the 3 s one ran, the run cancelled the 5 s one
    (error,) = failures_of(info.value).values()
    assert isinstance(error, PhaseTimeout)
    assert (error.task, error.phase, error.timeout) == ("A", Phase.EXECUTE, 3)


async def test_the_late_one_of_many_times_out_alone() -> None:
    log = Log()
    builder = Processor.builder()
    delays = [1, 2, 3, 100, 4, 0, 4.5]
    for i, delay in enumerate(delays):
        builder.add_task(Task(f"T{i}", log.timed(f"T{i}.pre", delay, 5)), level=1)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() == start + 5
    failures = failures_of(info.value)
    assert list(failures) == [("T3", Phase.PRE_EXECUTE)]
    error = failures["T3", Phase.PRE_EXECUTE]
    assert isinstance(error, PhaseTimeout)
    assert not error.abandoned
    assert type(error.__cause__) is TimeoutError
    assert log.cancelled == ["T3.pre"]
    report = info.value.report
    for i in (0, 1, 2, 4, 5, 6):
        assert report.tasks[f"T{i}"].phases[Phase.PRE_EXECUTE].state is TaskState.SUCCEEDED


@pytest.mark.parametrize("width", [1, 3])
async def test_a_later_deadline_expires_at_its_own_time(width: int) -> None:
    # Level 1 finishes long before its deadlines; level 2's deadlines run from its own
    # start, not from the first deadline the watcher was armed for.
    log = Log()
    builder = Processor.builder()
    for i in range(width):
        builder.add_task(Task(f"A{i}", log.timed(f"A{i}.pre", 1, 10)), level=1)
        builder.add_task(Task(f"B{i}", log.timed(f"B{i}.pre", 100 if i == 0 else 0, 10)), level=2)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() == start + 11
    assert list(failures_of(info.value)) == [("B0", Phase.PRE_EXECUTE)]


@pytest.mark.parametrize("width", [1, 3])
async def test_caller_cancel_with_deadlines_armed_is_a_cancel_not_a_timeout(width: int) -> None:
    log = Log()
    seen: list[Any] = []
    builder = Processor.builder()
    for i in range(width):
        builder.add_task(log.task(f"A{i}", pre=0, exe=100, post=2, timeout=10), level=1)
    p = builder.build(on_cleanup_error=seen.append)
    with VirtualClock() as clock:
        start = clock.now()
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert run.cancelling() == 1
        assert clock.now() == start + 3  # cancelled at 1, then the 2 s posts
        await asyncio.sleep(30)  # past every deadline: nothing left to expire
    assert seen == []
    assert sorted(log.cancelled) == sorted(f"A{i}.exe" for i in range(width))
    assert sorted(e for e in log.events if e.endswith(".post")) == [
        f"A{i}.post" for i in range(width)
    ]


@pytest.mark.parametrize("width", [1, 3])
async def test_asyncio_timeout_around_the_run_with_deadlines_armed(width: int) -> None:
    log = Log()
    builder = Processor.builder()
    for i in range(width):
        builder.add_task(log.task(f"A{i}", exe=100, post=1, timeout=30), level=1)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(5):
                await p.process_tasks(None)
        assert type(info.value) is TimeoutError  # the caller's own deadline, not a phase's
        assert clock.now() == start + 6
        me = asyncio.current_task()
        assert me is not None
        assert me.cancelling() == 0


@pytest.mark.parametrize("width", [1, 3])
async def test_phase_deadline_inside_a_longer_asyncio_timeout(width: int) -> None:
    log = Log()
    builder = Processor.builder()
    for i in range(width):
        builder.add_task(log.task(f"A{i}", exe=100 if i == 0 else 1, post=1, timeout=5), level=1)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        async with asyncio.timeout(50) as outer:
            with pytest.raises(ProcessorError) as info:
                await p.process_tasks(None)
        assert not outer.expired()
        assert clock.now() == start + 6
        me = asyncio.current_task()
        assert me is not None
        assert me.cancelling() == 0
    error = failures_of(info.value)["A0", Phase.EXECUTE]
    assert isinstance(error, PhaseTimeout)


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("stagger", [False, True])
async def test_a_call_finishing_exactly_at_its_deadline_has_one_consistent_outcome(
    width: int, stagger: bool
) -> None:
    # The deadline and the call's own wake-up are due in the same loop iteration: asyncio
    # decides by callback order (as with asyncio.timeout), and either way the report,
    # the error and the cleanup agree.
    log = Log()
    builder = Processor.builder()
    level = 1
    if stagger:  # an earlier deadline armed the shared timer first
        builder.add_task(Task("early", log.timed("early.pre", 1, 5)), level=level)
        level += 1
    for i in range(width):
        builder.add_task(log.task(f"A{i}", exe=5, post=0, timeout=5), level=level)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        result: RunReport[Any, Any] | ProcessorError
        try:
            result = await p.process_tasks(None)
        except ProcessorError as error:
            result = error
        assert clock.now() == start + 5 + (1 if stagger else 0)
    report = result.report if isinstance(result, ProcessorError) else result
    failed = failures_of(result) if isinstance(result, ProcessorError) else {}
    for i in range(width):
        name = f"A{i}"
        phase = report.tasks[name].phases[Phase.EXECUTE]
        if (name, Phase.EXECUTE) in failed:
            assert isinstance(failed[name, Phase.EXECUTE], PhaseTimeout)
            assert phase.state is TaskState.FAILED
            assert f"{name}.exe" in log.cancelled
        elif phase.state is TaskState.SUCCEEDED:
            assert phase.result == f"{name}.exe"
        else:  # cancelled by the fail-fast of a sibling that timed out
            assert phase.state is TaskState.CANCELLED
            assert failed
        assert f"{name}.post" in log.events
    assert set(failed) <= {(f"A{i}", Phase.EXECUTE) for i in range(width)}


async def test_one_of_many_sharing_a_watcher_swallows_and_is_abandoned() -> None:
    closed: list[str] = []
    log = Log()

    async def stubborn(ctx: Any) -> None:
        try:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(3600)
        finally:
            closed.append("B")

    builder = Processor.builder()
    builder.add_task(Task("A", log.step("A.pre"), None, log.step("A.post")), level=1)
    builder.add_task(Task("B", log.step("B.pre"), None, stubborn), level=2)
    for i in range(4):
        builder.add_task(
            Task(f"C{i}", log.step(f"C{i}.pre"), None, log.step(f"C{i}.post", 3)), level=2
        )
    p = builder.build(cleanup_timeout=10)
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() == start + 10
    (failure,) = info.value.failures
    assert (failure.task, failure.phase) == ("B", Phase.POST_EXECUTE)
    assert isinstance(failure.error, PhaseTimeout)
    assert failure.error.abandoned
    assert closed == ["B"]
    assert log.cancelled == []  # the siblings' posts ended in time
    assert log.events[-1] == "A.post"


async def test_retried_attempts_each_get_a_fresh_deadline_from_the_shared_timer() -> None:
    attempts: list[float] = []

    async def slow_twice(ctx: Any) -> str:
        loop = asyncio.get_running_loop()
        attempts.append(loop.time())
        if len(attempts) <= 2:
            await asyncio.sleep(100)
        return "done"

    fn = TaskFunction(
        slow_twice, timeout=4, retries=2, initial_delay=1, backoff_factor=1, jitter=False
    )
    p = (
        Processor.builder()
        .add_task(Task("A", fn), level=1)
        .add_task(Task("B", TaskFunction(Log().step("B.pre", 20), timeout=30)), level=1)
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        report = await p.process_tasks(None)
        assert clock.now() == start + 20
    assert [t - start for t in attempts] == [0, 5, 10]  # 4 s timeout + 1 s backoff, twice
    phase = report.tasks["A"].phases[Phase.PRE_EXECUTE]
    assert (phase.state, phase.attempts, phase.result) == (TaskState.SUCCEEDED, 3, "done")


async def test_stepping_runs_share_the_watcher_and_close_it_after_cleanup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", pre=1, exe=1, post=1, timeout=30), level=1)
        .add_task(log.task("B", pre=1, exe=1, post=1, timeout=30), level=1)
        .build()
    )
    armed = watcher_timers(monkeypatch)
    with VirtualClock():
        async with p.open(None) as runner:
            assert await runner.run_next()
            assert len(armed) == 1
            assert not armed[0].cancelled()  # kept between phases
            while await runner.run_next():
                pass
        assert len(armed) == 1
        assert armed[0].cancelled()
    assert log.cancelled == []


@pytest.mark.parametrize("width", [1, 3])
async def test_a_timed_run_frees_its_context_without_the_cycle_collector(width: int) -> None:
    # The run's watchers refer back to the run; the run drops them when it ends, so a
    # timed run leaves no reference cycle holding the caller's context.
    class Context:
        pass

    builder = Processor.builder()
    for level in range(2):
        for i in range(width):
            builder.add_task(Log().task(f"{level}.{i}", timeout=30), level=level)
    p = builder.build(cleanup_timeout=20)
    ctx = Context()
    ref = weakref.ref(ctx)
    gc.disable()
    try:
        await p.process_tasks(ctx)
        del ctx
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.skipif(
    not hasattr(asyncio, "eager_task_factory"), reason="asyncio.eager_task_factory: 3.12+"
)
async def test_eager_tasks_share_the_watcher_too() -> None:
    loop = asyncio.get_running_loop()
    old = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    try:
        log = Log()
        builder = Processor.builder()
        for i, delay in enumerate([0, 1, 100]):
            builder.add_task(log.task(f"A{i}", exe=delay, post=1, timeout=5), level=1)
        builder.add_task(log.task("B", timeout=5), level=2)
        p = builder.build()
        with VirtualClock() as clock:
            start = clock.now()
            with pytest.raises(ProcessorError) as info:
                await p.process_tasks(None)
            assert clock.now() == start + 6
    finally:
        loop.set_task_factory(old)
    assert list(failures_of(info.value)) == [("A2", Phase.EXECUTE)]
    assert log.cancelled == ["A2.exe"]
    posts = ["A0.post", "A1.post", "A2.post", "B.post"]  # every task was entered
    assert sorted(e for e in log.events if e.endswith(".post")) == posts


@pytest.mark.parametrize("width", [1, 3])
async def test_a_call_that_swallows_its_deadline_and_returns_succeeds(width: int) -> None:
    # As with asyncio.timeout(): a body that swallows the cancel and returns has returned.
    # The next level's deadlines hold all the same (inline: under a new stretch).
    log = Log()

    async def late(ctx: Any) -> str:
        # swallowed at once (past a few loop turns, the call would be abandoned)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(100)
        return "late"

    builder = Processor.builder()
    for i in range(width):
        builder.add_task(Task(f"A{i}", TaskFunction(late, timeout=5)), level=1)
        builder.add_task(Task(f"B{i}", log.timed(f"B{i}.pre", 100 if i == 0 else 1, 5)), level=2)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() == start + 5 + 5
        me = asyncio.current_task()
        assert me is not None
        assert me.cancelling() == 0
    report = info.value.report
    for i in range(width):
        phase = report.tasks[f"A{i}"].phases[Phase.PRE_EXECUTE]
        assert (phase.state, phase.result) == (TaskState.SUCCEEDED, "late")
    (error,) = failures_of(info.value).values()
    assert isinstance(error, PhaseTimeout)
    assert (error.task, error.timeout) == ("B0", 5)
    assert log.cancelled == ["B0.pre"]


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("answer", [TimeoutError, ValueError])
async def test_a_call_answering_its_deadline_with_an_error(
    width: int, answer: type[Exception]
) -> None:
    # As with asyncio.timeout(): a TimeoutError raised past the deadline is the deadline's
    # (PhaseTimeout, chained from it); any other error is the call's own.
    raised = answer("the client gave up")

    async def answers(ctx: Any) -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise raised from None

    builder = Processor.builder()
    for i in range(width):
        builder.add_task(Task(f"A{i}", TaskFunction(answers, timeout=5)), level=1)
    p = builder.build()
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    errors = list(failures_of(info.value).values())
    assert len(errors) == width
    if answer is TimeoutError:
        assert all(type(e) is PhaseTimeout and e.__cause__ is raised for e in errors)
    else:
        assert all(e is raised for e in errors)


async def test_an_inline_call_ending_as_its_deadline_fires_leaves_no_cancel_behind() -> None:
    # The watcher's timer was armed for an earlier deadline; B's own wake-up timer, due at
    # B's deadline, was scheduled before the watcher re-armed for that deadline, so B
    # returns in the iteration after the watcher fired, before the stretch's cancel runs.
    # B has returned (as under asyncio.timeout()), and that cancel must not reach the
    # calls after it.
    log = Log()

    async def b(ctx: Any) -> str:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_at(loop.time() + 10, done.set_result, "b")
        result: str = await done
        return result

    p = (
        Processor.builder()
        .add_task(Task("A", log.timed("A.pre", 1, 10)), level=1)
        .add_task(Task("B", TaskFunction(b, timeout=10)), level=2)
        .add_task(Task("C", log.timed("C.pre", 1, 10), log.timed("C.exe", 1, 10)), level=3)
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        report = await p.process_tasks(None)
        assert clock.now() == start + 1 + 10 + 2
    assert report.tasks["B"].phases[Phase.PRE_EXECUTE].result == "b"
    assert all(t.state is TaskState.SUCCEEDED for t in report.tasks.values())
    assert log.cancelled == []


# -- differential: the shared deadlines against asyncio.timeout() per call ------------------
# A call that ignores its deadline for good is abandoned here and would hang under a bare
# asyncio.timeout(), so the behaviours below all end; "swallow" ends a few loop turns
# after the cancel (fewer than the run waits before it abandons a call).
KINDS = ["sleep", "sleep", "swallow", "answer", "answer_timeout", "fail", "own_cancel"]


def _phase_call(kind: str, seconds: float, turns: int) -> Any:
    async def call(ctx: Any) -> str:
        if kind == "fail":
            await asyncio.sleep(seconds / 4)
            raise KeyError(seconds)
        if kind == "own_cancel":  # a CancelledError nobody asked for
            await asyncio.sleep(seconds / 4)
            raise asyncio.CancelledError
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if kind == "swallow":
                for _ in range(turns):
                    await asyncio.sleep(0)
                return "swallowed"
            if kind == "answer":
                raise ValueError("answered") from None
            if kind == "answer_timeout":
                raise TimeoutError("answered") from None
            raise
        return "done"

    return call


def _reference(call: Any, name: str, phase: Phase, timeout: float) -> Any:
    """The same call under an ``asyncio.timeout()`` of its own, as a plain phase."""

    async def timed(ctx: Any) -> Any:
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await call(ctx)
        except TimeoutError as exc:
            if scope.expired():
                raise PhaseTimeout(task=name, phase=phase, timeout=timeout) from exc
            raise

    return timed


def _outline(report: RunReport[Any, Any]) -> dict[tuple[Any, Phase], tuple[Any, ...]]:
    return {
        (name, phase): (
            r.state,
            type(r.error).__name__,
            type(r.error.__cause__).__name__ if r.error is not None else None,
            r.result,
            r.attempts,
            round(r.started - report.started, 6),
            round(r.ended - report.started, 6),
        )
        for name, task in report.tasks.items()
        for phase, r in task.phases.items()
    }


@pytest.mark.parametrize("stepping", [False, True])
@pytest.mark.parametrize("seed", range(60))
async def test_shared_deadlines_decide_as_asyncio_timeout_per_call(
    seed: int, stepping: bool
) -> None:
    # Random runs: inline and task calls, some with a retry (a Timeout per attempt), and
    # sometimes the caller's cancel. Each phase is run once with TaskFunction(timeout=)
    # and once as a plain phase under its own asyncio.timeout(): every outcome, time and
    # cancel count must match.
    import random

    rng = random.Random(seed)
    timeout = rng.choice([2.0, 5.0])
    ours, theirs = Processor.builder(), Processor.builder()
    for level in range(rng.randint(1, 4)):
        for i in range(rng.choice([1, 1, 2, 3])):
            name = f"{level}.{i}"
            mine: list[Any] = []
            ref: list[Any] = []
            for phase in (Phase.PRE_EXECUTE, Phase.EXECUTE, Phase.POST_EXECUTE):
                kind = rng.choice(KINDS)
                call = _phase_call(kind, rng.uniform(0.0, 8.0), rng.randint(0, 4))
                retry: dict[str, Any] = {}
                if rng.random() < 0.2:
                    retry = {"retries": 1, "initial_delay": 0.5, "jitter": False}
                mine.append(TaskFunction(call, timeout=timeout, **retry))
                ref.append(TaskFunction(_reference(call, name, phase, timeout), **retry))
            ours.add_task(Task(name, *mine), level=level)
            theirs.add_task(Task(name, *ref), level=level)
    cancel_at = rng.choice([None, None, rng.uniform(0.0, 10.0)])
    outcomes = []
    for builder in (ours, theirs):
        processor = builder.build()
        reports: list[RunReport[Any, Any]] = []

        async def run(
            processor: Processor[Any, Any] = processor, reports: list[Any] = reports
        ) -> None:
            if not stepping:
                try:
                    reports.append(await processor.process_tasks(None))
                except ProcessorError as error:
                    reports.append(error.report)
                    raise
                return
            async with processor.open(None) as runner:
                try:
                    while await runner.run_next():
                        pass
                finally:
                    reports.append(runner.report)

        with VirtualClock() as clock:
            start = clock.now()
            task = asyncio.create_task(run())
            if cancel_at is not None:
                await asyncio.sleep(cancel_at)
                task.cancel()
            ended: str
            try:
                await task
                ended = "ok"
            except BaseException as error:  # ProcessorError, CancelledError...
                ended = type(error).__name__
            elapsed = round(clock.now() - start, 6)
        outline = _outline(reports[0]) if reports else {}
        outcomes.append((ended, elapsed, task.cancelling(), outline))
    assert outcomes[0] == outcomes[1]


# -- edges found by review ------------------------------------------------------------------
async def _ok(ctx: Any) -> str:
    await asyncio.sleep(1)
    return "ok"


async def test_a_task_call_and_a_retried_call_due_together_are_told_alike() -> None:
    # Both deadlines come at 2: the phase task is cancelled at the loop's next turn, as
    # the retried call's own asyncio.Timeout cancels it, so T's failure (fail-fast) and
    # R's deadline reach R in asyncio.timeout()'s order: R ends cancelled, not swallowed.
    async def slow(ctx: Any) -> str:
        await asyncio.sleep(100)
        return "slow"

    async def swallow(ctx: Any) -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(100)
        for _ in range(6):
            await asyncio.sleep(0)
        return "swallowed"

    p = (
        Processor.builder()
        .add_task(Task("T", TaskFunction(slow, timeout=2)), level=0)
        .add_task(Task("R", TaskFunction(swallow, timeout=2, retries=1, jitter=False)), level=0)
        .build()
    )
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    report = info.value.report
    assert report.tasks["R"].phases[Phase.PRE_EXECUTE].state is TaskState.CANCELLED
    assert list(failures_of(info.value)) == [("T", Phase.PRE_EXECUTE)]


@pytest.mark.parametrize("turns", range(4, 12))
async def test_a_task_returning_about_when_it_would_be_abandoned(turns: int) -> None:
    # It swallows the cancel and returns some loop turns later, about when the run gives
    # up on it: one that returned has returned (its value kept, even in the turn where
    # the run would have given up), one that had not is abandoned.
    fate: list[str] = []

    async def late(ctx: Any) -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(100)
        try:
            for _ in range(turns):
                await asyncio.sleep(0)
        except GeneratorExit:
            fate.append("closed")
            raise
        fate.append("returned")
        return "late"

    p = (
        Processor.builder()
        .add_task(Task("A", TaskFunction(late, timeout=5)), level=0)
        .add_task(Task("B", TaskFunction(_ok, timeout=5)), level=0)
        .build()
    )
    with VirtualClock():
        try:
            report = await p.process_tasks(None)
        except ProcessorError as error:
            report = error.report
    phase = report.tasks["A"].phases[Phase.PRE_EXECUTE]
    if turns <= 7:  # the 7th turn ends the call in the turn the run would give up on it
        assert fate == ["returned"]
        assert (phase.state, phase.result) == (TaskState.SUCCEEDED, "late")
    else:
        assert fate == ["closed"]
        assert phase.state is TaskState.FAILED
        assert isinstance(phase.error, PhaseTimeout)
        assert phase.error.abandoned


async def test_an_inline_deadline_after_a_phase_kept_a_cancel_of_its_own() -> None:
    # S cancels the run's task and swallows it (its count stays 1); T's deadline is still
    # T's PhaseTimeout, as asyncio.timeout() entered at T would decide, not a cancel.
    async def self_cancel(ctx: Any) -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        return "s"

    async def slow(ctx: Any) -> None:
        await asyncio.sleep(100)

    p = (
        Processor.builder()
        .add_task(Task("S", self_cancel), level=0)
        .add_task(Task("T", TaskFunction(slow, timeout=5)), level=1)
        .build()
    )
    with VirtualClock():
        caller = asyncio.create_task(p.process_tasks(None))
        with pytest.raises(ProcessorError) as info:
            await caller
        assert caller.cancelling() == 0
    (failure,) = info.value.failures
    assert (failure.task, type(failure.error)) == ("T", PhaseTimeout)


async def test_a_generator_exit_raised_past_an_inline_deadline_fails_that_call() -> None:
    async def exits(ctx: Any) -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise GeneratorExit("mine") from None

    async def post_fails(ctx: Any) -> None:
        await asyncio.sleep(1)
        raise ValueError("B.post")

    p = (
        Processor.builder()
        .add_task(Task("B", _ok, None, post_fails), level=0)
        .add_task(
            Task("A", TaskFunction(exits, timeout=5), None, TaskFunction(_ok, timeout=5)), level=1
        )
        .build()
    )
    with VirtualClock():
        runner = p.open(None)
        with pytest.raises(GeneratorExit):  # kept, like KeyboardInterrupt, for the caller
            await runner.run_next()
        assert runner.next_phase_id() is Phase.POST_EXECUTE  # and cleanup is next
        with pytest.raises(GeneratorExit):  # raised again once cleanup ran
            await runner.run_next()
        report = runner.report
    phases = {(n, ph): r.state for n, t in report.tasks.items() for ph, r in t.phases.items()}
    assert phases[("A", Phase.PRE_EXECUTE)] is TaskState.FAILED
    assert phases[("A", Phase.POST_EXECUTE)] is TaskState.SUCCEEDED
    assert phases[("B", Phase.POST_EXECUTE)] is TaskState.FAILED
