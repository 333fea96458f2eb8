"""Fault injection at every point where headrace-leveled calls user code.

Each phase point runs its misbehaving callable in every phase of the middle task ``X`` of
a three-level graph (``A`` / ``X`` and its siblings / ``B``), with one task per level
(inline in the driver) and with a sibling (a task per call), through ``process_tasks``
and through ``open()`` stepping. Whatever the callable does, the run ends, the user's
error reaches the caller (a ``ProcessorError`` leaf, ``KeyboardInterrupt``/``SystemExit``
as is, a hang as the caller's ``TimeoutError`` or a ``PhaseTimeout``), every entered task's
post runs exactly once in reverse level order, nothing is left pending, and the same
processor then runs again correctly.

``on_cleanup_error`` is a hook like a listener: its exceptions (``CancelledError``
included) are logged and ignored, except ``KeyboardInterrupt``/``SystemExit``, which reach
the caller of the run once every post has run. leveled has no listeners and never calls
into the context object (it only passes it to the phases).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest

import headrace_leveled
from headrace_core import BackoffError, ConfigurationError, HeadraceError
from headrace_core.lowlevel import safe_repr
from headrace_leveled import (
    Phase,
    PhaseTimeout,
    Processor,
    ProcessorError,
    RunReport,
    Task,
    TaskFunction,
    task_func,
    task_group_func,
    task_sync_func,
)
from shared import faults
from shared.faults import (
    ASYNC_FAULTS,
    CALLABLE_WORDS,
    SYNC_FAULTS,
    Fault,
    FaultError,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    missing_points,
    run_injection,
)

CALLER_DEADLINE = 100.0  # x 8 hanging runs per driver: within the harness's 3600 s
CLEANUP_TIMEOUT = 30.0
WRONG = object()
FATAL = (KeyboardInterrupt, SystemExit)
LABEL = {"pre": "pre_execute", "exe": "execute", "post": "post_execute"}


class Scene:
    """One graph and its event log; ``armed`` turns the injected misbehaviour on."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.armed = True
        self.calls = 0

    def step(self, label: str, delay: float = 0.0) -> Callable[[Any], Awaitable[str]]:
        async def run(ctx: Any) -> str:
            self.events.append(label)
            if delay:
                await asyncio.sleep(delay)
            return label

        return run

    def task(self, name: str, pre: float = 0.0, exe: float = 0.0) -> Task[Any, str]:
        return Task(
            name,
            self.step(f"{name}.pre", pre),
            self.step(f"{name}.exe", exe),
            self.step(f"{name}.post"),
        )

    def posts(self) -> list[str]:
        return [e for e in self.events if e.endswith(".post")]


async def outcome(
    run: Callable[[], Awaitable[RunReport[Any, Any]]], deadline: float = CALLER_DEADLINE
) -> RunReport[Any, Any] | BaseException:
    """Run under the caller's deadline; return the report or what the caller got."""
    result: RunReport[Any, Any] | BaseException = await faults.outcome(run(), deadline)
    return result


def runners(p: Processor[Any, Any]) -> list[Callable[[], Awaitable[RunReport[Any, Any]]]]:
    async def stepping() -> RunReport[Any, Any]:
        async with p.open(None) as runner:
            while await runner.run_next():
                pass
        return runner.report

    return [lambda: p.process_tasks(None), stepping]


def failure_of(result: object, phase: str) -> BaseException:
    """The one failure of X in ``phase`` (other failures are not expected)."""
    assert isinstance(result, ProcessorError), repr(result)
    (failure,) = result.failures
    assert failure.task == "X"
    assert failure.phase is Phase(LABEL[phase])
    assert result.exceptions == (failure.error,)
    return failure.error


def assert_cleanup(scene: Scene, width: int, b_entered: bool) -> None:
    """Every entered task's post ran exactly once, in reverse level order."""
    posts = scene.posts()
    middle = sorted(["X.post"] + [f"S{i}.post" for i in range(1, width)])
    expected_len = len(middle) + 1 + int(b_entered)
    assert len(posts) == expected_len, scene.events
    if b_entered:
        assert posts[0] == "B.post", scene.events
    assert sorted(posts[int(b_entered) : -1]) == middle, scene.events
    assert posts[-1] == "A.post", scene.events


# -- the phase points ------------------------------------------------------------------------
# A maker returns X's phase for ``phase``: it logs ``X.<phase>`` and misbehaves while armed.
Maker = Callable[[Scene, Fault, str], Any]
# What the fault gives when the phase has a timeout of its own (no caller deadline needed).
TIMED = "timed"


async def check_phase_point(
    fault: Fault, make: Maker, *, wrong: str = "success", hang: str = "deadline"
) -> None:
    for phase, width in itertools.product(("pre", "exe", "post"), (1, 2)):
        for mode in range(2):
            scene = Scene()
            x = {p: scene.step(f"X.{p}") for p in ("pre", "exe", "post")}
            x[phase] = make(scene, fault, phase)
            builder = Processor.builder().add_task(scene.task("A"), level=1)
            builder.add_task(Task("X", x["pre"], x["exe"], x["post"]), level=2)
            for i in range(1, width):
                builder.add_task(scene.task(f"S{i}", pre=1, exe=1), level=2)
            builder.add_task(scene.task("B"), level=3)
            p = builder.build(cleanup_timeout=CLEANUP_TIMEOUT)
            run = runners(p)[mode]
            result = await outcome(run)
            b_entered = phase != "pre"
            error = expected_error(fault)
            if fault is Fault.RAISE:
                assert isinstance(failure_of(result, phase), FaultError)
            elif error in FATAL:
                assert isinstance(result, error), repr(result)
            elif fault is Fault.CANCEL:
                leaf = failure_of(result, phase)
                assert isinstance(leaf, HeadraceError), repr(leaf)
                assert "CancelledError without being cancelled" in str(leaf)
                assert isinstance(leaf.__cause__, asyncio.CancelledError)
            elif fault is Fault.WRONG and wrong == "success":
                assert isinstance(result, RunReport), repr(result)
                b_entered = True
            elif fault is Fault.WRONG:
                leaf = failure_of(result, phase)
                assert isinstance(leaf, TypeError), repr(leaf)
                assert wrong in str(leaf)
            elif fault is Fault.HANG and (phase == "post" or hang == TIMED):
                leaf = failure_of(result, phase)
                assert isinstance(leaf, PhaseTimeout), repr(leaf)
                assert not leaf.abandoned  # it ended when cancelled
            else:
                assert fault is Fault.HANG
                assert isinstance(result, TimeoutError), repr(result)  # the caller's deadline
                assert not isinstance(result, PhaseTimeout)
            assert_cleanup(scene, width, b_entered)
            # The same processor runs again correctly.
            scene.armed = False
            scene.events.clear()
            report = await run()
            assert report.succeeded
            assert len(scene.events) == 3 * (2 + width)


def async_phase(scene: Scene, fault: Fault, phase: str) -> Any:
    async def phase_fn(ctx: Any) -> Any:
        scene.events.append(f"X.{phase}")
        if scene.armed:
            return await ainject(fault, wrong=WRONG)
        return None

    return phase_fn


async def drive_async_phase(fault: Fault) -> None:
    await check_phase_point(fault, async_phase)


def task_function(scene: Scene, fault: Fault, phase: str) -> Any:
    async def phase_fn(ctx: Any) -> Any:
        scene.calls += 1
        if scene.armed:
            if scene.calls == 1:
                scene.events.append(f"X.{phase}")
            return await ainject(fault, wrong=WRONG)
        scene.events.append(f"X.{phase}")
        return None

    return task_func(
        phase_fn,
        timeout=10,
        retries=2,
        retryable_exceptions=(Exception,),
        jitter=False,
        initial_delay=1,
    )


async def drive_task_function(fault: Fault) -> None:
    # Timeouts and retries: an Exception is retried (3 calls), nothing else is; a hang
    # times out on every attempt (PhaseTimeout after 3 x 10 s + 1 + 2 s of backoff).
    calls: list[int] = []

    def make(scene: Scene, fault: Fault, phase: str) -> Any:
        calls.append(0)
        fn = task_function(scene, fault, phase)
        original = fn.function

        async def counted(ctx: Any) -> Any:
            if scene.armed:
                calls[-1] += 1
            return await original(ctx)

        return fn.replace(function=counted)

    await check_phase_point(fault, make, hang=TIMED)
    retried = fault in (Fault.RAISE, Fault.HANG)
    assert set(calls) == {3 if retried else 1}, calls


def sync_adapter(scene: Scene, fault: Fault, phase: str) -> Any:
    def phase_fn(ctx: Any) -> Any:
        scene.events.append(f"X.{phase}")
        return inject(fault, wrong=WRONG) if scene.armed else None

    return task_sync_func(phase_fn)


async def drive_sync_adapter(fault: Fault) -> None:
    await check_phase_point(fault, sync_adapter)


def plain_sync(scene: Scene, fault: Fault, phase: str) -> Any:
    def phase_fn(ctx: Any) -> Any:
        scene.events.append(f"X.{phase}")
        return inject(fault, wrong=WRONG) if scene.armed else None

    return phase_fn


async def drive_plain_sync(fault: Fault) -> None:
    await check_phase_point(fault, plain_sync)


def group_function(scene: Scene, fault: Fault, phase: str) -> Any:
    async def phase_fn(ctx: Any, tg: asyncio.TaskGroup) -> Any:
        scene.events.append(f"X.{phase}")
        tg.create_task(asyncio.sleep(0.5))
        if scene.armed:
            return await ainject(fault, wrong=WRONG)
        return None

    return task_group_func(phase_fn)


async def drive_group_function(fault: Fault) -> None:
    await check_phase_point(fault, group_function)


def group_child(scene: Scene, fault: Fault, phase: str) -> Any:
    async def child() -> Any:
        if scene.armed:
            return await ainject(fault, wrong=WRONG)
        return None

    async def phase_fn(ctx: Any, tg: asyncio.TaskGroup) -> Any:
        scene.events.append(f"X.{phase}")
        tg.create_task(child())
        await asyncio.sleep(1)

    return TaskFunction(phase_fn, task_group=True)


async def drive_group_child(fault: Fault) -> None:
    await check_phase_point(fault, group_child)


class MisbehavingGuard:
    """A guard whose ``call`` logs X's phase and misbehaves while armed.

    WRONG returns a non-awaitable (a guard's ``call`` must be async).
    """

    def __init__(self, scene: Scene, fault: Fault, label: str) -> None:
        self.scene = scene
        self.fault = fault
        self.label = label

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> Any:
        self.scene.events.append(self.label)
        if not self.scene.armed:
            return fn(*args)
        if self.fault is Fault.WRONG:
            return 42
        return ainject(self.fault)


def guarded(scene: Scene, fault: Fault, phase: str) -> Any:
    async def body(ctx: Any) -> None:
        return None

    return TaskFunction(body, guards=[MisbehavingGuard(scene, fault, f"X.{phase}")])


async def drive_guard(fault: Fault) -> None:
    await check_phase_point(fault, guarded, wrong="not an awaitable")


# -- on_cleanup_error ------------------------------------------------------------------------
async def drive_cleanup_hook(fault: Fault) -> None:
    for width, cancel in itertools.product((1, 2), (False, True)):
        await cleanup_hook_case(fault, width, cancel)


async def cleanup_hook_case(fault: Fault, width: int, cancel: bool) -> None:
    scene = Scene()
    seen: list[Any] = []
    error = OSError("close failed")

    async def broken_post(ctx: Any) -> None:
        scene.events.append("X.post")
        if scene.armed:
            raise error

    def hook(failure: Any) -> None:
        seen.append(failure)
        if scene.armed:
            inject(fault, wrong=WRONG)

    builder = Processor.builder().add_task(scene.task("A"), level=1)
    x = Task("X", scene.step("X.pre"), scene.step("X.exe", 5), broken_post)
    builder.add_task(x, level=2)
    for i in range(1, width):
        builder.add_task(scene.task(f"S{i}", exe=5), level=2)
    builder.add_task(scene.task("B"), level=3)
    p = builder.build(on_cleanup_error=hook)
    # cancel: the caller's deadline lands during execute, so CancelledError would win.
    result = await outcome(lambda: p.process_tasks(None), deadline=1 if cancel else CALLER_DEADLINE)
    expected = expected_error(fault)
    if expected in FATAL:
        assert isinstance(result, expected), repr(result)  # it wins over the cancel too
    elif cancel:
        assert isinstance(result, TimeoutError), repr(result)
    else:
        assert failure_of(result, "post") is error  # the hook's own error is ignored
    assert [f.error for f in seen] == [error]  # called once per post failure
    assert_cleanup(scene, width, b_entered=True)
    scene.armed = False
    scene.events.clear()
    assert (await p.process_tasks(None)).succeeded


# -- rng and backoff ---------------------------------------------------------------------------
async def drive_rng(fault: Fault) -> None:
    for width in (1, 2):
        await rng_case(fault, width)


async def rng_case(fault: Fault, width: int) -> None:
    armed = [True]

    class Misbehaving(random.Random):
        def uniform(self, a: float, b: float) -> float:
            if armed[0]:
                return inject(fault, wrong=float("nan"))  # type: ignore[no-any-return]
            return b

    attempts: list[int] = []
    cause = ConnectionError("down")

    async def flaky(ctx: Any) -> str:
        attempts.append(1)
        if armed[0] or len(attempts) % 2:
            raise cause
        return "ok"

    fn = TaskFunction(flaky, retries=1, initial_delay=1)
    builder = Processor.builder().add_task(Task("X", execute=fn))
    for i in range(1, width):
        builder.add_task(Scene().task(f"S{i}", exe=5))
    p = builder.build(rng=Misbehaving())
    result = await outcome(lambda: p.process_tasks(None))
    check_chained_failure(result, fault, "exe", cause)
    assert attempts == [1]
    armed[0] = False
    attempts.clear()
    assert (await p.process_tasks(None)).results["X"] == "ok"


def check_chained_failure(result: object, fault: Fault, phase: str, cause: BaseException) -> None:
    """A callback that the retry of ``cause`` asked for misbehaved."""
    error = expected_error(fault)
    if error in FATAL:
        assert isinstance(result, error), repr(result)
        return
    leaf = failure_of(result, phase)
    if fault is Fault.RAISE:
        assert isinstance(leaf, FaultError)
        assert leaf.__context__ is cause
    elif fault is Fault.CANCEL:
        assert isinstance(leaf, HeadraceError)
        assert isinstance(leaf.__cause__, asyncio.CancelledError)
    else:
        assert isinstance(leaf, BackoffError), repr(leaf)
        assert leaf.__cause__ is cause


async def drive_backoff(fault: Fault) -> None:
    for width in (1, 2):
        await backoff_case(fault, width)


async def backoff_case(fault: Fault, width: int) -> None:
    armed = [True]

    class Schedule:
        def delays(self, rng: random.Random | None = None) -> Iterator[Any]:
            if not armed[0]:
                return itertools.repeat(1.0)
            if fault is Fault.EARLY_END:
                return iter(())
            if fault is Fault.WRONG:
                return iter(["soon"])
            return inject(fault)  # type: ignore[no-any-return]

    cause = ConnectionError("down")
    attempts: list[int] = []

    async def flaky(ctx: Any) -> str:
        attempts.append(1)
        if armed[0] or len(attempts) % 2:
            raise cause
        return "ok"

    builder = Processor.builder().add_task(
        Task("X", execute=TaskFunction(flaky, retries=3, backoff=Schedule()))
    )
    for i in range(1, width):
        builder.add_task(Scene().task(f"S{i}", exe=5))
    p = builder.build()
    result = await outcome(lambda: p.process_tasks(None))
    if fault is Fault.EARLY_END:
        leaf = failure_of(result, "exe")
        assert isinstance(leaf, BackoffError)
        assert "ran out" in str(leaf)
        assert leaf.__cause__ is cause
    else:
        check_chained_failure(result, fault, "exe", cause)
    assert attempts == [1]
    armed[0] = False
    attempts.clear()
    assert (await p.process_tasks(None)).results["X"] == "ok"


async def drive_retry_on_check(fault: Fault) -> None:
    # retry_on's types are user code too: isinstance() calls their metaclass.
    armed = [True]

    class Meta(type):
        def __instancecheck__(cls, instance: object) -> bool:
            if armed[0]:
                return inject(fault, wrong="yes")  # type: ignore[no-any-return]
            return False

    class Odd(Exception, metaclass=Meta):
        pass

    for width in (1, 2):
        armed[0] = True
        await retry_on_case(fault, width, armed, Odd)


async def retry_on_case(fault: Fault, width: int, armed: list[bool], odd: type[Exception]) -> None:
    cause = ConnectionError("down")
    attempts: list[int] = []

    async def flaky(ctx: Any) -> None:
        attempts.append(1)
        raise cause

    fn = TaskFunction(flaky, retries=2, retry_on=(odd,), initial_delay=0)
    builder = Processor.builder().add_task(Task("X", execute=fn))
    for i in range(1, width):
        builder.add_task(Scene().task(f"S{i}", exe=5))
    p = builder.build()
    result = await outcome(lambda: p.process_tasks(None))
    error = expected_error(fault)
    if fault is Fault.WRONG:  # a truthy answer: retried until the retries run out
        assert failure_of(result, "exe") is cause
        assert attempts == [1, 1, 1]
    elif error in FATAL:
        assert isinstance(result, error), repr(result)
        assert attempts == [1]
    elif fault is Fault.RAISE:
        leaf = failure_of(result, "exe")
        assert isinstance(leaf, FaultError)
        assert leaf.__context__ is cause
    else:
        leaf = failure_of(result, "exe")
        assert isinstance(leaf, HeadraceError)
        assert isinstance(leaf.__cause__, asyncio.CancelledError)
    armed[0] = False
    attempts.clear()
    assert failure_of(await outcome(lambda: p.process_tasks(None)), "exe") is cause
    assert attempts == [1]


# -- the builder: depends_on and the names' __hash__ / __eq__ -----------------------------------
async def drive_depends_on(fault: Fault) -> None:
    def deps() -> Iterator[Any]:
        yield "A"
        if fault is Fault.EARLY_END:
            return
        if fault is Fault.WRONG:
            yield ["not", "hashable"]
        inject(fault)

    builder = Processor.builder().add_task(Task("A", execute=Scene().step("A")))
    if fault is Fault.EARLY_END:
        builder.add_task(Task("B", execute=Scene().step("B")), depends_on=deps())
        p = builder.build(execute_order="dependencies")
        assert (await p.process_tasks(None)).succeeded
        return
    error = expected_error(fault) or ConfigurationError
    with pytest.raises(error):
        builder.add_task(Task("B"), depends_on=deps())
    assert len(builder) == 1  # unchanged
    builder.add_task(Task("B", execute=Scene().step("B")), depends_on=["A"])
    assert (await builder.build().process_tasks(None)).succeeded


class Name:
    """A task name whose dunders misbehave while ``armed`` says so."""

    armed: ClassVar[set[str]] = set()

    def __init__(self, fault: Fault, label: str = "X") -> None:
        self.fault = fault
        self.label = label

    def __repr__(self) -> str:
        if "__repr__" in Name.armed:
            return inject(self.fault, wrong=42)  # type: ignore[no-any-return]
        return f"Name({self.label})"

    def __hash__(self) -> int:
        if "__hash__" in Name.armed:
            return inject(self.fault, wrong="x")  # type: ignore[no-any-return]
        return 7  # every Name collides, so dict lookups call __eq__

    def __eq__(self, other: object) -> bool:
        if "__eq__" in Name.armed:
            return inject(self.fault, wrong="yes")  # type: ignore[no-any-return]
        return isinstance(other, Name) and other.label == self.label


async def drive_name_hash_eq(fault: Fault, dunder: str) -> None:
    error = expected_error(fault)
    if error is None:
        error = TypeError if dunder == "__hash__" else ConfigurationError  # "yes" == equal
    first, second = Name(fault, "X"), Name(fault, "Y")
    builder = Processor.builder().add_task(Task(first, execute=Scene().step("X")))
    Name.armed = {dunder}
    try:
        with pytest.raises(error):
            builder.add_task(Task(second, execute=Scene().step("Y")), depends_on=[first])
    finally:
        Name.armed = set()
    assert len(builder) == 1  # unchanged
    builder.add_task(Task(second, execute=Scene().step("Y")), depends_on=[first])
    if dunder == "__eq__":
        Name.armed = {dunder}
        try:
            with pytest.raises(error):
                builder.build()  # indexing the names compares them
        finally:
            Name.armed = set()
    p = builder.build(execute_order="dependencies")
    # A run never hashes or compares the names; the report's mapping does, when read.
    Name.armed = {dunder}
    try:
        report = await p.process_tasks(None)
        if fault is Fault.WRONG and dunder == "__eq__":
            assert len(report.tasks) == 1  # the names say they are equal: one key
        else:
            with pytest.raises(error):
                report.tasks  # noqa: B018
    finally:
        Name.armed = set()
    assert (await p.process_tasks(None)).results == {first: "X", second: "Y"}


async def drive_name_hash(fault: Fault) -> None:
    await drive_name_hash_eq(fault, "__hash__")


async def drive_name_eq(fault: Fault) -> None:
    await drive_name_hash_eq(fault, "__eq__")


async def drive_name_repr(fault: Fault) -> None:
    # PhaseTimeout's message, the notes, the error's message and the hook all repr the name.
    for width in (1, 2):
        await name_repr_case(fault, width)


async def name_repr_case(fault: Fault, width: int) -> None:
    scene = Scene()
    name = Name(fault)
    post_error = OSError("post")
    seen: list[Any] = []

    async def hang(ctx: Any) -> None:
        scene.events.append("X.pre")
        await asyncio.Event().wait()

    async def post(ctx: Any) -> None:
        scene.events.append("X.post")
        raise post_error

    builder = Processor.builder().add_task(scene.task("A"), level=1)
    builder.add_task(Task(name, TaskFunction(hang, timeout=1), None, post), level=2)
    for i in range(1, width):
        builder.add_task(scene.task(f"S{i}", pre=5), level=2)
    p = builder.build(on_cleanup_error=seen.append)
    Name.armed = {"__repr__"}
    try:
        result = await outcome(lambda: p.process_tasks(None))
        error = expected_error(fault)
        if error in FATAL:
            assert isinstance(result, error), repr(result)
        else:
            assert isinstance(result, ProcessorError), repr(result)
            timeout, closing = result.exceptions
            assert isinstance(timeout, PhaseTimeout)
            fallback = safe_repr(name)
            assert str(timeout) == f"task {fallback} pre_execute timed out after 1s"
            assert timeout.__notes__ == [f"in task {fallback} pre_execute"]
            assert closing is post_error
            assert post_error.__notes__ == [f"in task {fallback} post_execute"]
            assert "2 task phases failed" in str(result)
            assert [f.error for f in seen] == [post_error]
    finally:
        Name.armed = set()
    posts = scene.posts()
    assert posts[-1] == "A.post"
    assert sorted(posts[:-1]) == sorted(["X.post"] + [f"S{i}.post" for i in range(1, width)])
    assert isinstance(await outcome(lambda: p.process_tasks(None)), ProcessorError)


# -- the errors phases raise: add_note ------------------------------------------------------
async def drive_add_note(fault: Fault) -> None:
    for phase, width in itertools.product(("pre", "exe", "post"), (1, 2)):
        await add_note_case(fault, phase, width)


async def add_note_case(fault: Fault, phase: str, width: int) -> None:
    scene = Scene()

    class Odd(Exception):
        def add_note(self, note: str) -> None:
            if scene.armed:
                inject(fault, wrong=WRONG)
            else:
                super().add_note(note)

    def make(scene: Scene, fault: Fault, phase: str) -> Any:
        async def phase_fn(ctx: Any) -> None:
            scene.events.append(f"X.{phase}")
            raise Odd("odd")

        return phase_fn

    x = {p: scene.step(f"X.{p}") for p in ("pre", "exe", "post")}
    x[phase] = make(scene, fault, phase)
    builder = Processor.builder().add_task(scene.task("A"), level=1)
    builder.add_task(Task("X", x["pre"], x["exe"], x["post"]), level=2)
    for i in range(1, width):
        builder.add_task(scene.task(f"S{i}", pre=1, exe=1), level=2)
    builder.add_task(scene.task("B"), level=3)
    p = builder.build()
    result = await outcome(lambda: p.process_tasks(None))
    error = expected_error(fault)
    if error in FATAL:
        assert isinstance(result, error), repr(result)
    else:
        assert isinstance(failure_of(result, phase), Odd)  # never lost or replaced
    if phase == "pre":
        assert "X.exe" not in scene.events  # fail-fast: execute skipped
    assert_cleanup(scene, width, b_entered=phase != "pre")
    scene.armed = False
    scene.events.clear()
    assert isinstance(failure_of(await outcome(lambda: p.process_tasks(None)), phase), Odd)


# -- Processor listeners -----------------------------------------------------------------


def _one_task(scene: Scene) -> Processor[Any, str]:
    return Processor.builder().add_task(scene.task("A"), level=1).build()


async def drive_processor_sync_listener(fault: Fault) -> None:
    scene = Scene()
    p = _one_task(scene)
    for kind in ("started", "succeeded"):
        for run in runners(p):
            fired: list[str] = []

            def listener(event: Any, kind: str = kind, fired: list[str] = fired) -> Any:
                if event.kind == kind and not fired:
                    fired.append(kind)
                    return inject(fault, wrong=WRONG)
                return None

            remove = p.add_listener(listener)
            result = await outcome(run)
            remove()
            error = expected_error(fault)
            if error in FATAL:
                assert isinstance(result, error), repr(result)  # reaches the caller
            else:
                assert isinstance(result, RunReport), repr(result)  # logged, swallowed
            assert fired == [kind]
            assert p.snapshot().running == 0  # never counted as running for ever
    assert isinstance(await p.process_tasks(None), RunReport)
    await p.aclose()
    assert p.snapshot().running == 0


async def drive_processor_async_listener(fault: Fault) -> None:
    scene = Scene()
    p = _one_task(scene)
    armed = [True]

    async def listener(event: Any) -> Any:
        if armed[0] and event.kind == "succeeded":
            armed[0] = False
            return await ainject(fault, wrong=WRONG)
        return None

    p.add_listener(listener)
    assert isinstance(await outcome(lambda: p.process_tasks(None)), RunReport)
    if fault is Fault.HANG:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await p.aclose()  # the caller's deadline cancels the hung listener
    await p.aclose()
    assert p._runs.listeners.pending == 0
    assert p.snapshot().running == 0


POINTS = [
    Point(
        "Task.pre_execute",
        ASYNC_FAULTS,
        drive_async_phase,
        also=(
            "Task.execute",
            "Task.post_execute",
            "AsyncTask.pre_execute",
            "AsyncTask.execute",
            "AsyncTask.post_execute",
            "task.pre_execute",
            "task.execute",
            "task.post_execute",
        ),
    ),
    Point(
        "TaskFunction.function",
        ASYNC_FAULTS,
        drive_task_function,
        also=("task_func.function",),
    ),
    Point("task_sync_func.function", SYNC_FAULTS, drive_sync_adapter),
    Point("Task.pre_execute(sync callable)", SYNC_FAULTS, drive_plain_sync),
    Point(
        "task_group_func.function",
        ASYNC_FAULTS,
        drive_group_function,
        also=("task_group_task.function",),
    ),
    Point("SdaxTaskGroup.create_task.coro", ASYNC_FAULTS, drive_group_child),
    Point(
        "PhaseGuard.call.fn",
        ASYNC_FAULTS,
        drive_guard,
        also=(
            "TaskFunction.guards",
            "task_func.guards",
            "task_group_func.guards",
            "task_group_task.guards",
        ),
    ),
    Point(
        "Builder.build.on_cleanup_error",
        SYNC_FAULTS,
        drive_cleanup_hook,
        also=(
            "AsyncDagLevelAdapterBuilder.build.on_cleanup_error",
            "AsyncDagTaskProcessorBuilder.build.on_cleanup_error",
            "AsyncTaskProcessorBuilder.build.on_cleanup_error",
        ),
    ),
    Point(
        "Builder.build.rng",
        SYNC_FAULTS,
        drive_rng,
        also=(
            "AsyncDagLevelAdapterBuilder.build.rng",
            "AsyncDagTaskProcessorBuilder.build.rng",
            "AsyncTaskProcessorBuilder.build.rng",
        ),
    ),
    Point("TaskFunction.backoff", (*SYNC_FAULTS, Fault.EARLY_END), drive_backoff),
    Point("TaskFunction.retry_on.__instancecheck__", SYNC_FAULTS, drive_retry_on_check),
    Point(
        "Builder.add_task.depends_on",
        (*SYNC_FAULTS, Fault.EARLY_END),
        drive_depends_on,
        also=(
            "AsyncDagLevelAdapterBuilder.add_task.depends_on",
            "AsyncDagTaskProcessorBuilder.add_task.depends_on",
            "AsyncTaskProcessorBuilder.add_task.depends_on",
        ),
    ),
    Point("name.__repr__", SYNC_FAULTS, drive_name_repr),
    Point("name.__hash__", SYNC_FAULTS, drive_name_hash),
    Point("name.__eq__", SYNC_FAULTS, drive_name_eq),
    Point("exception.add_note", SYNC_FAULTS, drive_add_note),
    Point(
        "Processor.add_listener.callback",
        SYNC_FAULTS,
        drive_processor_sync_listener,
        also=(
            "AsyncTaskProcessor.add_listener.callback",
            "AsyncDagTaskProcessor.add_listener.callback",
        ),
    ),
    Point("Processor.add_listener.callback[async]", ASYNC_FAULTS, drive_processor_async_listener),
]


def test_every_callable_parameter_is_in_the_table() -> None:
    # "Guard" finds guards= (Sequence[PhaseGuard]), which the default words miss.
    assert missing_points(headrace_leveled, POINTS, words=(*CALLABLE_WORDS, "Guard")) == []


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float) -> None:
    run_injection(point.drive, fault, start=start)
