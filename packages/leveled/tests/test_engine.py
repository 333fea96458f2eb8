"""The run semantics, row by row of the spec's table (S1-S16), on virtual time."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Self

import pytest

from headrace_core import ConfigurationError, HeadraceError
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

Fn = Callable[[Any], Awaitable[Any]]


class Log:
    """Records ``name.phase`` events with their virtual start and end times."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.spans: dict[str, tuple[float, float]] = {}

    def step(
        self,
        label: str,
        delay: float = 0.0,
        *,
        fail: BaseException | None = None,
        result: Any = None,
    ) -> Fn:
        async def run(ctx: Any) -> Any:
            loop = asyncio.get_running_loop()
            start = loop.time()
            self.events.append(label)
            try:
                if delay:
                    await asyncio.sleep(delay)
                if fail is not None:
                    raise fail
                return result
            finally:
                self.spans[label] = (start, loop.time())

        return run

    def task(
        self,
        name: str,
        pre: float | None = 0.0,
        exe: float | None = 0.0,
        post: float | None = 0.0,
        *,
        fail_pre: BaseException | None = None,
        fail_exe: BaseException | None = None,
        fail_post: BaseException | None = None,
    ) -> Task[Any, str]:
        return Task(
            name,
            None if pre is None else self.step(f"{name}.pre", pre, fail=fail_pre),
            None if exe is None else self.step(f"{name}.exe", exe, fail=fail_exe, result=name),
            None if post is None else self.step(f"{name}.post", post, fail=fail_post),
        )


# -- S1: the elevator ---------------------------------------------------------------------
async def test_s1_order_levels_then_execute_then_reverse_posts() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", 1, 1, 2), level=1)
        .add_task(log.task("B", 1, None, 3), level=1)
        .add_task(log.task("C", 1, 1, 1), level=2)
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        report = await p.process_tasks(None)
    assert log.events == ["A.pre", "B.pre", "C.pre", "A.exe", "C.exe", "C.post", "A.post", "B.post"]
    # level 2 starts after the whole of level 1; execute after every pre; posts reverse.
    assert log.spans["C.pre"][0] == start + 1
    assert log.spans["A.exe"][0] == start + 2 == log.spans["C.exe"][0]
    assert log.spans["C.post"][0] == start + 3
    assert log.spans["A.post"][0] == start + 4 == log.spans["B.post"][0]
    assert report.duration == 7
    assert report.results == {"A": "A", "C": "C"}
    assert all(t.state is TaskState.SUCCEEDED for t in report.tasks.values())


async def test_s1_independent_posts_run_concurrently() -> None:
    log = Log()
    p = Processor.builder().add_task(log.task("A", post=5)).add_task(log.task("B", post=5)).build()
    with VirtualClock() as clock:
        start = clock.now()
        await p.process_tasks(None)
        assert clock.now() - start == 5


# -- S2/S3: entered => post, fail fast -------------------------------------------------------
async def test_s2_s3_post_for_entered_only_and_fail_fast() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", 1, fail_pre=KeyError("a")), level=1)
        .add_task(log.task("B", 10), level=1)
        .add_task(log.task("Bx", None, None), level=1)
        .add_task(log.task("C"), level=2)
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() - start == 1  # B was cancelled at once, not awaited for 10 s
    assert sorted(e for e in log.events if e.endswith(".post")) == ["A.post", "B.post", "Bx.post"]
    assert not any(e.startswith("C.") for e in log.events)
    assert not any(e.endswith(".exe") for e in log.events)
    tasks = info.value.report.tasks
    assert tasks["A"].state is TaskState.FAILED
    assert tasks["B"].state is TaskState.CANCELLED  # cancelled sibling: not a failure
    assert tasks["Bx"].state is TaskState.SUCCEEDED
    assert tasks["C"].state is TaskState.SKIPPED
    assert not tasks["C"].entered
    assert [f.task for f in info.value.failures] == ["A"]


async def test_s2_pre_less_task_not_reached_gets_no_post() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", 1, fail_pre=ValueError("x")))
        .add_task(log.task("J", None, None), depends_on=["A"])
        .add_task(log.task("OK", 0.5))
        .add_task(log.task("K", None, None), depends_on=["OK"])
        .build()
    )
    with VirtualClock(), pytest.raises(ProcessorError):
        await p.process_tasks(None)
    assert "J.post" not in log.events  # its dependency failed: never reached
    assert "K.post" in log.events  # reached before the failure stopped scheduling


async def test_s3_execute_failure_cancels_other_executes() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", exe=1, fail_exe=RuntimeError("boom")))
        .add_task(log.task("B", exe=50))
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() - start == 1
    report = info.value.report
    assert report.tasks["B"].phases[Phase.EXECUTE].state is TaskState.CANCELLED
    assert report.tasks["B"].state is TaskState.CANCELLED
    assert {"A.post", "B.post"} <= set(log.events)


# -- S4: outer cancellation --------------------------------------------------------------------
async def test_s4_cancel_reraises_cancelled_error_after_cleanup() -> None:
    log = Log()
    p = Processor.builder().add_task(log.task("A", 100, post=2), level=1).build()
    with VirtualClock() as clock:
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert clock.now() - log.spans["A.pre"][0] == 3  # 1 s of pre, then the 2 s post
    assert log.events == ["A.pre", "A.post"]


@pytest.mark.parametrize("width", [1, 3])
async def test_s4_cancelling_count_untouched_and_timeout_gives_timeout_error(width: int) -> None:
    log = Log()
    builder = Processor.builder()
    for i in range(width):
        builder.add_task(log.task(f"T{i}", 100, post=1), level=1)
    p = builder.build()
    with VirtualClock():
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(5):
                await p.process_tasks(None)
        assert type(info.value) is TimeoutError
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
    assert sum(e.endswith(".post") for e in log.events) == width


async def test_s4_caller_cancelling_count_kept_when_caller_catches() -> None:
    seen: list[int] = []
    p = Processor.builder().add_task(Task("A", Log().step("A.pre", 100))).build()

    async def caller() -> None:
        try:
            await p.process_tasks(None)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            assert me is not None
            seen.append(me.cancelling())
            raise

    with VirtualClock():
        task = asyncio.create_task(caller())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == [1]


# -- S5: cleanup is shielded ------------------------------------------------------------------
@pytest.mark.parametrize("extra_cancels", [1, 2])
async def test_s5_repeated_cancel_does_not_interrupt_or_skip_posts(extra_cancels: int) -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", 0, post=5), level=1)
        .add_task(log.task("B", 100, post=5), level=2)
        .build()
    )
    with VirtualClock() as clock:
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()  # first cancel: B.pre is cancelled, B.post starts
        await asyncio.sleep(1)
        for _ in range(extra_cancels):
            run.cancel()  # second and third cancel land during B.post
            await asyncio.sleep(1)
        with pytest.raises(asyncio.CancelledError):
            await run
        start = log.spans["A.pre"][0]
        assert log.spans["B.post"] == (start + 1, start + 6)  # not interrupted
        assert log.spans["A.post"] == (start + 6, start + 11)  # still run, after B.post
        assert clock.now() == start + 11
    assert log.events == ["A.pre", "B.pre", "B.post", "A.post"]


async def test_s5_cleanup_timeout_abandons_hung_post_and_runs_the_rest() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", post=1), level=1)
        .add_task(log.task("B", post=3600), level=2)
        .build(cleanup_timeout=10)
    )
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError) as info:
            await p.process_tasks(None)
        assert clock.now() - start == 11
    (failure,) = info.value.failures
    assert failure.task == "B"
    assert failure.phase is Phase.POST_EXECUTE
    assert isinstance(failure.error, PhaseTimeout)
    assert str(failure.error) == "task 'B' post_execute timed out after 10s"
    assert "A.post" in log.events


async def test_s5_post_own_timeout_wins_over_cleanup_timeout() -> None:
    async def slow(ctx: Any) -> None:
        await asyncio.sleep(100)

    p = (
        Processor.builder()
        .add_task(Task("A", post_execute=TaskFunction(slow, timeout=2)))
        .build(cleanup_timeout=50)
    )
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError):
            await p.process_tasks(None)
        assert clock.now() - start == 2


async def test_s5_hung_post_sees_cancelled_error() -> None:
    seen: list[str] = []

    async def hung(ctx: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    p = Processor.builder().add_task(Task("A", post_execute=hung)).build(cleanup_timeout=1)
    with VirtualClock(), pytest.raises(ProcessorError):
        await p.process_tasks(None)
    assert seen == ["cancelled"]


# -- S6/S7: error shape -------------------------------------------------------------------------
async def test_s6_s7_flat_attributed_leaves_primary_before_post() -> None:
    key, runtime, oserror = KeyError("k"), RuntimeError("r"), OSError("o")
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", 1, fail_pre=key, post=1, fail_post=oserror), level=1)
        .add_task(log.task("B", 1, fail_pre=runtime), level=1)
        .add_task(log.task("C", 0, post=1), level=1)
        .build()
    )
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    err = info.value
    assert list(err.exceptions) == [key, runtime, oserror]  # the original objects, flat
    assert [(f.task, f.phase) for f in err.failures] == [
        ("A", Phase.PRE_EXECUTE),
        ("B", Phase.PRE_EXECUTE),
        ("A", Phase.POST_EXECUTE),
    ]
    assert key.__notes__ == ["in task 'A' pre_execute"]
    assert oserror.__notes__ == ["in task 'A' post_execute"]
    assert "C.post" in log.events  # S7: a post failure never stops other posts
    assert isinstance(err, ExceptionGroup)


async def test_s6_except_star_works() -> None:
    log = Log()
    p = Processor.builder().add_task(log.task("A", fail_pre=KeyError("x"))).build()
    caught: list[BaseException] = []
    with VirtualClock():
        try:
            await p.process_tasks(None)
        except* KeyError as group:
            caught.extend(group.exceptions)
    assert len(caught) == 1
    assert isinstance(caught[0], KeyError)


async def test_s6_timeout_leaf_names_task_and_phase() -> None:
    async def slow(ctx: Any) -> None:
        await asyncio.sleep(10)

    p = Processor.builder().add_task(Task("A", TaskFunction(slow, timeout=2))).build()
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    (leaf,) = info.value.exceptions
    assert isinstance(leaf, PhaseTimeout)
    assert isinstance(leaf, TimeoutError)
    assert str(leaf) == "task 'A' pre_execute timed out after 2s"
    assert leaf.task == "A"
    assert leaf.phase is Phase.PRE_EXECUTE
    assert leaf.timeout == 2


async def test_function_timeout_error_propagates_as_same_object() -> None:
    own = TimeoutError("mine")

    async def raises(ctx: Any) -> None:
        raise own

    p = Processor.builder().add_task(Task("A", TaskFunction(raises, timeout=5))).build()
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert info.value.exceptions == (own,)


# -- S9: post errors while cancelling ------------------------------------------------------------
async def test_s9_post_failures_during_cancel_reach_hook_and_cancel_wins() -> None:
    seen: list[Any] = []
    boom = RuntimeError("post")
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", 100, post=1, fail_post=boom))
        .build(on_cleanup_error=seen.append)
    )
    with VirtualClock():
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert [(f.task, f.phase, f.error) for f in seen] == [("A", Phase.POST_EXECUTE, boom)]


async def test_s9_default_logs_post_failure_hidden_by_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = Log()
    p = Processor.builder().add_task(log.task("A", 100, fail_post=RuntimeError("lost?"))).build()
    with VirtualClock():
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert any("lost?" in r.getMessage() or "lost?" in str(r.exc_info) for r in caplog.records)


async def test_s9_hook_exception_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    def bad_hook(failure: Any) -> None:
        raise ValueError("hook broke")

    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", fail_post=OSError("p")), level=1)
        .add_task(log.task("B"), level=0)
        .build(on_cleanup_error=bad_hook)
    )
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert [type(e) for e in info.value.exceptions] == [OSError]
    assert "B.post" in log.events
    assert any("on_cleanup_error" in r.getMessage() for r in caplog.records)


def test_an_async_cleanup_hook_is_refused_at_build() -> None:
    async def hook_fn(failure: Any) -> None:
        return None

    hook: Any = hook_fn  # typed as the callable the hook must not be
    with pytest.raises(ConfigurationError, match=r"on_cleanup_error=.*must be a plain function"):
        Processor.builder().add_task(Log().task("A"), level=0).build(on_cleanup_error=hook)


async def test_a_cleanup_hook_that_returns_an_awaitable_is_reported_not_left_unawaited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def later(failure: Any) -> None:
        return None

    def hook(failure: Any) -> Any:
        return later(failure)  # a sync callable that hands back a coroutine

    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", fail_post=OSError("p")), level=0)
        .build(on_cleanup_error=hook)
    )
    with VirtualClock(), pytest.raises(ProcessorError):
        await p.process_tasks(None)
    # (the suite turns a never-awaited coroutine's RuntimeWarning into an error)
    assert any("returned an awaitable" in r.getMessage() for r in caplog.records)


async def test_hook_called_for_post_failures_of_a_normal_run_too() -> None:
    seen: list[Any] = []
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", fail_post=OSError("p")))
        .build(on_cleanup_error=seen.append)
    )
    with VirtualClock(), pytest.raises(ProcessorError):
        await p.process_tasks(None)
    assert len(seen) == 1


# -- S10: graph mode ------------------------------------------------------------------------------
async def test_s10_task_starts_when_its_own_deps_finish() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("slow", 10))
        .add_task(log.task("fast", 1))
        .add_task(log.task("after_fast", 1), depends_on=["fast"])
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        await p.process_tasks(None)
    assert log.spans["after_fast.pre"][0] == start + 1  # no level barrier


@pytest.mark.parametrize("order", ["parallel", "dependencies"])
async def test_s10_execute_order(order: Any) -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("A", exe=5))
        .add_task(log.task("B", exe=1), depends_on=["A"])
        .build(execute_order=order)
    )
    with VirtualClock():
        await p.process_tasks(None)
    if order == "parallel":
        assert log.spans["B.exe"][0] == log.spans["A.exe"][0]  # sdax-compatible
    else:
        assert log.spans["B.exe"][0] == log.spans["A.exe"][1]


async def test_mixed_levels_and_dependencies() -> None:
    log = Log()
    p = (
        Processor.builder()
        .add_task(log.task("db", 2), level=0)
        .add_task(log.task("auth", 1), level=1)
        .add_task(log.task("side", 1), depends_on=["auth"])
        .add_task(log.task("fetch", 1), level=2, depends_on=["side"])
        .build()
    )
    with VirtualClock() as clock:
        start = clock.now()
        await p.process_tasks(None)
    assert log.spans["auth.pre"][0] == start + 2
    assert log.spans["side.pre"][0] == start + 3
    assert log.spans["fetch.pre"][0] == start + 4
    posts = [e for e in log.events if e.endswith(".post")]
    assert posts == ["fetch.post", "side.post", "auth.post", "db.post"]


# -- S12: concurrent runs
async def test_s12_concurrent_runs_are_isolated() -> None:
    async def pre(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(ctx["delay"])
        ctx["trace"].append("pre")

    async def exe(ctx: dict[str, Any]) -> int:
        ctx["trace"].append("exe")
        if ctx["fail"]:
            raise ValueError(ctx["id"])
        return int(ctx["id"])

    async def post(ctx: dict[str, Any]) -> None:
        ctx["trace"].append("post")

    p = Processor.builder().add_task(Task("T", pre, exe, post)).build()
    ctxs = [{"id": i, "delay": (i * 7) % 5, "fail": i % 3 == 0, "trace": []} for i in range(200)]
    with VirtualClock():
        outcomes = await asyncio.gather(*(p.process_tasks(c) for c in ctxs), return_exceptions=True)
    for ctx, outcome in zip(ctxs, outcomes, strict=True):
        assert ctx["trace"] == ["pre", "exe", "post"]
        if ctx["fail"]:
            assert isinstance(outcome, ProcessorError)
            assert outcome.exceptions[0].args == (ctx["id"],)
        else:
            assert not isinstance(outcome, BaseException)
            assert outcome.results == {"T": ctx["id"]}


# -- S15: context variables
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.parametrize("width", [1, 4])
async def test_s15_phases_see_caller_context_and_nothing_leaks(width: int) -> None:
    seen: list[str] = []

    async def phase(ctx: Any) -> None:
        seen.append(VAR.get())
        VAR.set("inside")

    builder = Processor.builder()
    for i in range(width):
        builder.add_task(Task(i, phase, phase, phase), level=0)
    p = builder.build()
    VAR.set("caller")
    await p.process_tasks(None)
    assert VAR.get() == "caller"
    assert len(seen) == 3 * width
    # every phase sees the caller's value, or (unspecified) one set by an earlier phase
    assert seen[0] == "caller"
    assert set(seen) <= {"caller", "inside"}


# -- S16: siblings are cancelled, never orphaned
async def test_s16_independent_sibling_cancelled_on_failure() -> None:
    finished: list[str] = []

    async def slow(ctx: Any) -> None:
        await asyncio.sleep(100)
        finished.append("slow")

    async def bad(ctx: Any) -> None:
        await asyncio.sleep(1)
        raise ValueError("bad")

    p = Processor.builder().add_task(Task("slow", slow)).add_task(Task("bad", bad)).build()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(ProcessorError):
            await p.process_tasks(None)
        assert clock.now() - start == 1
        await asyncio.sleep(200)
    assert finished == []


# -- max_concurrency
@pytest.mark.parametrize("cap", [1, 2, 3])
async def test_max_concurrency_caps_phase_calls(cap: int) -> None:
    running = 0
    peak = 0

    async def work(ctx: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1)
        running -= 1

    builder = Processor.builder()
    for i in range(7):
        builder.add_task(Task(i, work, work, work), level=0)
    p = builder.build(max_concurrency=cap)
    with VirtualClock() as clock:
        start = clock.now()
        await p.process_tasks(None)
        elapsed = clock.now() - start
    assert peak == cap
    assert elapsed == 3 * -(-7 // cap)


# -- odd phases
async def test_sync_exception_from_phase_call_is_a_failure() -> None:
    def not_async(ctx: Any) -> Any:
        raise LookupError("sync")

    p = Processor.builder().add_task(Task("A", not_async)).add_task(Task("B", not_async)).build()
    with pytest.raises(ProcessorError) as info:
        await p.process_tasks(None)
    assert isinstance(info.value.exceptions[0], LookupError)


async def test_phase_returning_plain_value_is_accepted() -> None:
    sync: Any = lambda ctx: 42  # noqa: E731 - a callable returning a plain value
    p = Processor.builder().add_task(Task("A", execute=sync)).build()
    report = await p.process_tasks(None)
    assert report.results == {"A": 42}


@pytest.mark.parametrize("width", [1, 2])
async def test_phase_raising_cancelled_error_uncancelled_is_its_failure(width: int) -> None:
    # Nobody cancelled the run: the CancelledError is the phase's failure, chained by a
    # HeadraceError leaf (an ExceptionGroup holds only Exceptions); cleanup runs as usual.
    log = Log()
    raised = asyncio.CancelledError("from the phase")

    async def self_cancel(ctx: Any) -> None:
        raise raised

    builder = Processor.builder().add_task(Task("A", self_cancel, post_execute=log.step("A.post")))
    for i in range(1, width):
        builder.add_task(log.task(f"B{i}", 5))
    with VirtualClock(), pytest.raises(ProcessorError) as info:
        await builder.build().process_tasks(None)
    (failure,) = info.value.failures
    assert failure.task == "A"
    assert failure.phase is Phase.PRE_EXECUTE
    assert isinstance(failure.error, HeadraceError)
    assert failure.error.__cause__ is raised
    assert "without being cancelled" in str(failure.error)
    assert "A.post" in log.events
    assert {e for e in log.events if e.endswith(".post")} == {"A.post"} | {
        f"B{i}.post" for i in range(1, width)
    }


@pytest.mark.parametrize("width", [1, 2])
async def test_phase_cancelling_its_own_task_cancels_the_run_after_cleanup(width: int) -> None:
    log = Log()

    async def self_cancel(ctx: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    builder = Processor.builder().add_task(Task("A", self_cancel, post_execute=log.step("A.post")))
    for i in range(1, width):
        builder.add_task(log.task(f"B{i}", 5))
    with VirtualClock(), pytest.raises(asyncio.CancelledError):
        await builder.build().process_tasks(None)
    assert "A.post" in log.events


async def test_keyboard_interrupt_in_inline_phase_reraised_after_cleanup() -> None:
    log = Log()

    async def interrupt(ctx: Any) -> None:
        raise KeyboardInterrupt

    p = Processor.builder().add_task(Task("A", interrupt, post_execute=log.step("A.post"))).build()
    with pytest.raises(KeyboardInterrupt):
        await p.process_tasks(None)
    assert log.events == ["A.post"]


async def test_empty_processor_runs() -> None:
    with VirtualClock():
        report = await Processor.builder().build().process_tasks(None)
    assert report.tasks == {}
    assert report.results == {}
    assert report.duration == 0


# -- tasks created: one per run for one-task levels, one per call otherwise (S13/S14) -----------
class CountTasks:
    def __init__(self) -> None:
        self.count = 0
        self.loop = asyncio.get_running_loop()
        self.old = self.loop.get_task_factory()

    def __enter__(self) -> Self:
        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            self.count += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        self.loop.set_task_factory(factory)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.set_task_factory(self.old)


@pytest.mark.parametrize("order", ["parallel", "dependencies"])
@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_one_task_levels_run_inline_in_one_task(timeout: float | None, order: Any) -> None:
    async def zero(ctx: Any) -> None:
        return None

    fn: Any = zero if timeout is None else TaskFunction(zero, timeout=timeout)
    builder = Processor.builder()
    for level in range(200):
        builder.add_task(Task(level, fn, fn, fn), level=level)
    p = builder.build(execute_order=order)
    with CountTasks() as counter:
        report = await p.process_tasks(None)
    # The per-run driver runs every pre and post inline; parallel executes are concurrent.
    assert counter.count == (1 if order == "dependencies" else 201)
    assert len(report.tasks) == 200


async def test_wide_levels_create_one_task_per_call() -> None:
    async def zero(ctx: Any) -> None:
        return None

    builder = Processor.builder()
    for level in range(3):
        for i in range(4):
            builder.add_task(Task((level, i), zero, zero, zero), level=level)
    p = builder.build()
    with CountTasks() as counter:
        await p.process_tasks(None)
    assert counter.count == 1 + 3 * 12


@pytest.mark.parametrize("width", [2, 5])
async def test_s5_repeated_cancel_with_wide_levels(width: int) -> None:
    log = Log()
    builder = Processor.builder()
    for i in range(width):
        builder.add_task(log.task(f"A{i}", 0, post=5), level=1)
        builder.add_task(log.task(f"B{i}", 100, post=5), level=2)
    p = builder.build()
    with VirtualClock() as clock:
        start = clock.now()
        run = asyncio.create_task(p.process_tasks(None))
        await asyncio.sleep(1)
        for _ in range(3):
            run.cancel()
            await asyncio.sleep(1)
        with pytest.raises(asyncio.CancelledError):
            await run
        assert clock.now() == start + 11
    for i in range(width):
        assert log.spans[f"B{i}.post"] == (start + 1, start + 6)
        assert log.spans[f"A{i}.post"] == (start + 6, start + 11)


async def test_eager_task_factory_keeps_the_semantics() -> None:
    factories: list[Any] = [None]
    eager = getattr(asyncio, "eager_task_factory", None)
    if eager is not None:  # Python 3.12+: also run every call eagerly
        factories.append(eager)
    loop = asyncio.get_running_loop()
    old = loop.get_task_factory()
    for factory in factories:
        loop.set_task_factory(factory)
        try:
            log = Log()
            p = (
                Processor.builder()
                .add_task(log.task("A", 0, 0, 0), level=1)
                .add_task(log.task("B", 0, None, 0), level=1)
                .add_task(log.task("C", 0, 0, 0, fail_exe=KeyError("c")), level=2)
                .build()
            )
            with pytest.raises(ProcessorError) as info:
                await p.process_tasks(None)
            assert log.events[:3] == ["A.pre", "B.pre", "C.pre"]
            assert sorted(log.events[-3:]) == ["A.post", "B.post", "C.post"]
            assert log.events.index("C.post") < log.events.index("A.post")
            assert [f.task for f in info.value.failures] == ["C"]
        finally:
            loop.set_task_factory(old)
