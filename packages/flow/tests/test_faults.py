"""Fault injection at every point where headrace-flow calls user code.

For every (point, fault) pair the run ends in bounded virtual time; the user's error
reaches the caller (``run()`` raises it) or the error handler with its item; every item
pulled is accounted for (``accepted == completed + failed + filtered + discarded``); no
worker, source or listener task is left; and the same flow runs again correctly.

A ``CancelledError`` that user code raises by itself (the run is not being cancelled) is
that code's failure: an item's failure for stages and classifiers (routed to the
handler), and, where it ends the run, ``run()`` raises a ``HeadraceError`` chaining it.
``KeyboardInterrupt`` and ``SystemExit`` stop the run cleanly and ``run()`` raises them,
whichever task they were raised in (a sync listener's included). A listener's other
errors are logged and never propagated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import headrace_flow
from headrace_core import BackoffError, HeadraceError
from headrace_flow import (
    DropReason,
    Flow,
    FlowStats,
    Last,
    ScaleEvent,
    SourceError,
    StageStats,
    StageTimeout,
    TransformerError,
    UtilizationScaling,
    batched,
    flow,
    priority_queue,
    process_stage,
    router,
    stage,
    sync_stage,
    thread_stage,
)
from shared import flow_workers
from shared.faults import (
    ASYNC_FAULTS,
    CALLABLE_WORDS,
    ITERATOR_FAULTS,
    SYNC_FAULTS,
    Fault,
    Point,
    ainject,
    cases,
    expected_error,
    inject,
    missing_points,
    run_injection,
)

N = 6  # items per run
BAD = 2  # the item a callback misbehaves on
DEADLINE = 30.0  # the caller's deadline (virtual seconds) when a callback hangs
INTERRUPTS = (KeyboardInterrupt, SystemExit)


class Wrong:
    """A wrong value of the user's."""

    def __repr__(self) -> str:
        return "Wrong()"


WRONG = Wrong()


# -- checks shared by every driver ---------------------------------------------------------
def idle(f: Flow[Any, Any]) -> FlowStats:
    """The flow has ended: nothing runs, every pulled item is accounted for."""
    assert not f.running
    stats = f.stats()
    assert not stats.running
    for st in stats.stages.values():
        assert st.workers == 0, st
        assert st.busy_workers == 0, st
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded, (
        stats
    )
    return stats


async def again(f: Flow[Any, Any], out: list[Any] | None = None) -> None:
    """The same flow (its callback behaves now) runs again and finishes every item."""
    if out is not None:
        out.clear()
    stats = await f.run(range(N))
    idle(f)
    assert stats.completed == N, stats
    assert stats.failed == stats.discarded == 0, stats
    if out is not None:
        assert sorted(out) == list(range(N))


async def consume(f: Flow[Any, Any], source: Any, mode: str) -> None:
    """Run ``f`` over ``source`` with ``run()``, ``iterate()`` or ``push()``."""
    if mode == "run":
        await f.run(source)
    elif mode == "iterate":
        async with contextlib.aclosing(f.iterate(source)) as outputs:
            async for _ in outputs:
                pass
    else:
        async with f.push() as handle:
            for item in source:
                await handle.send(item)


async def outcome(
    f: Flow[Any, Any], source: Any, fault: Fault, *, aborts: bool, mode: str = "run"
) -> BaseException | None:
    """Run ``f`` over ``source`` and check what the caller sees.

    ``aborts``: whether an exception of the fault ends the run (no handler took it).
    Returns what ``run()`` raised, if anything; the flow is idle afterwards.
    """
    error = expected_error(fault)
    raised: BaseException | None = None
    try:
        if fault is Fault.HANG:
            async with asyncio.timeout(DEADLINE):
                await consume(f, source, mode)
        else:
            await consume(f, source, mode)
    except BaseException as exc:
        raised = exc
    if fault is Fault.HANG:
        assert isinstance(raised, TimeoutError), raised
    elif error in INTERRUPTS:
        assert isinstance(raised, error), raised
    elif error is not None and aborts:
        if fault is Fault.CANCEL:
            assert isinstance(raised, HeadraceError), raised
            assert not isinstance(raised, asyncio.CancelledError)
            assert isinstance(raised.__cause__, asyncio.CancelledError), raised.__cause__
        else:
            assert isinstance(raised, error), raised
    else:
        assert raised is None, raised
    idle(f)
    return raised


class Once:
    """Misbehaves once: on the first call that sees ``BAD`` (or any item, with ``at=None``)."""

    def __init__(self, fault: Fault, at: Any = BAD) -> None:
        self.fault = fault
        self.at = at
        self.fired = False

    def hit(self, item: Any = None) -> bool:
        if self.fired or (self.at is not None and item != self.at):
            return False
        self.fired = True
        return True


def handler_log() -> tuple[list[Any], Callable[[Any], Awaitable[None]]]:
    events: list[Any] = []

    async def handler(event: Any) -> None:
        events.append(event)

    return events, handler


def check_item_failure(events: list[Any], fault: Fault, item: Any, stage_name: str) -> None:
    """The handler got the user's error with its item (or nothing, for a wrong value)."""
    error = expected_error(fault)
    if error is None:
        assert [e for e in events if isinstance(e, TransformerError)] == []
        return
    failures = [e for e in events if isinstance(e, TransformerError)]
    assert len(failures) == 1, events
    assert failures[0].item == item
    assert failures[0].stage == stage_name
    assert isinstance(failures[0].exception, error)


# -- item callbacks: stage functions, sinks, arms ---------------------------------------------
async def drive_stage(fault: Fault) -> None:
    out: list[Any] = []

    def build(once: Once, **kw: Any) -> Flow[Any, Any]:
        async def work(x: Any) -> Any:
            if once.hit(x):
                return await ainject(once.fault, wrong=WRONG)
            return x

        async def sink(x: Any) -> None:
            out.append(x)

        return flow(stage(work, **kw), sink)

    # without a handler: the first error aborts the run, run() raises it; the same with
    # iterate() and push()
    for mode in ("run", "iterate", "push"):
        out.clear()
        f = build(Once(fault))
        raised = await outcome(f, range(N), fault, aborts=True, mode=mode)
        if fault is Fault.RAISE:
            assert raised is not None
            assert any(f"on item {BAD}" in n for n in raised.__notes__)
        if fault is Fault.WRONG:
            assert WRONG in out  # a wrong value is the user's value: passed on
        await again(f, out)

    # an ordered stage: the same outcome, the others still in order
    out.clear()
    events, handler = handler_log()
    f = build(Once(fault), workers=3, ordered=True)
    f.set_error_handler(handler)
    await outcome(f, range(N), fault, aborts=False)
    if fault in (Fault.RAISE, Fault.CANCEL):
        assert out == [x for x in range(N) if x != BAD]
    await again(f, out)
    assert out == list(range(N))

    # with a handler: the item's failure reaches it, the run goes on
    events, handler = handler_log()
    f = build(Once(fault), workers=2)
    f.set_error_handler(handler)
    await outcome(f, range(N), fault, aborts=False)
    if fault in (Fault.RAISE, Fault.CANCEL, Fault.WRONG):
        check_item_failure(events, fault, BAD, "work")
        stats = f.stats()
        expect_failed = 0 if fault is Fault.WRONG else 1
        assert stats.failed == expect_failed
        assert stats.completed == N - expect_failed
    await again(f, out)

    if fault is Fault.HANG:
        # a stage timeout turns the hang into the item's failure
        events, handler = handler_log()
        f = build(Once(fault), timeout=1)
        f.set_error_handler(handler)
        stats = await f.run(range(N))
        idle(f)
        assert stats.failed == 1
        assert isinstance(events[0].exception, StageTimeout)


@contextlib.asynccontextmanager
async def ticking() -> AsyncIterator[None]:
    """Keep virtual time moving in small steps while a thread of the user's runs."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.001)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drive_sync_stage(fault: Fault) -> None:
    once = Once(fault)

    def work(x: Any) -> Any:
        if once.hit(x):
            return inject(fault, wrong=WRONG)
        return x

    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    f = flow(sync_stage(work), sink)
    async with ticking():
        await outcome(f, range(N), fault, aborts=True)
        if fault is Fault.WRONG:
            assert WRONG in out
        await again(f, out)


async def drive_process_stage(fault: Fault) -> None:
    # The function runs in a worker process: it misbehaves on a marker item, and what it
    # raises there (an interrupt included) comes back as the item's outcome.
    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    f = flow(process_stage(flow_workers.misbehave, workers=2), sink)
    source = [("fault", fault.value) if x == BAD else x for x in range(N)]
    async with ticking():
        await outcome(f, source, fault, aborts=True)
        if fault is Fault.WRONG:
            assert "wrong" in out
        await again(f, out)


async def drive_thread_stage(fault: Fault) -> None:
    once = Once(fault)

    def work(x: Any) -> Any:
        if once.hit(x):
            return inject(fault, wrong=WRONG)
        return x

    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    f = flow(thread_stage(work, workers=2), sink)
    async with ticking():
        await outcome(f, range(N), fault, aborts=True)
        if fault is Fault.WRONG:
            assert WRONG in out
        await again(f, out)


async def drive_sink(fault: Fault) -> None:
    out: list[Any] = []
    once = Once(fault)

    async def sink(x: Any) -> None:
        if once.hit(x):
            await ainject(fault, wrong=WRONG)  # a sink's return value is ignored
        out.append(x)

    async def double(x: int) -> int:
        return x

    f = Flow()
    f.add_transformer(double)
    f.set_consumer(sink)
    await outcome(f, range(N), fault, aborts=True)
    await again(f, out)

    events, handler = handler_log()
    once.fired = False
    f.set_error_handler(handler)
    await outcome(f, range(N), fault, aborts=False)
    if fault in (Fault.RAISE, Fault.CANCEL):
        check_item_failure(events, fault, BAD, "sink")
    await again(f, out)


async def drive_fan_out(fault: Fault) -> None:
    once = Once(fault)

    async def spread(x: int) -> AsyncIterator[Any]:
        if once.hit(x):
            if fault is Fault.EARLY_END:
                return  # yields nothing: the item is filtered
            yield x
            yield await ainject(fault, wrong=WRONG)
            return
        yield x

    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    events, handler = handler_log()
    f = flow(spread, sink, on_error=handler)
    if fault is Fault.HANG:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await f.run(range(N))
    elif expected_error(fault) in INTERRUPTS:
        with pytest.raises(expected_error(fault)):  # type: ignore[arg-type]
            await f.run(range(N))
    else:
        stats = await f.run(range(N))
        if fault is Fault.EARLY_END:
            assert stats.filtered == 1
            assert sorted(out) == [x for x in range(N) if x != BAD]
        elif fault is Fault.WRONG:
            assert WRONG in out
            assert stats.completed == N + 1
        else:
            check_item_failure(events, fault, BAD, "spread")
            assert stats.failed == 1
    assert not f.running
    assert all(s.workers == 0 for s in f.stats().stages.values())
    await again(f, out)


async def drive_router_arm(fault: Fault) -> None:
    out: list[Any] = []
    once = Once(fault)

    async def classify(x: int) -> str:
        return "odd" if x % 2 else "even"

    async def even(x: int) -> Any:
        if once.hit(x):
            return await ainject(fault, wrong=WRONG)
        return x

    async def odd(x: int) -> int:
        await asyncio.sleep(0.5)
        return x

    async def sink(x: Any) -> None:
        out.append(x)

    f = flow(router(classify, even=even, odd=stage(odd, workers=2)), sink)
    await outcome(f, range(N), fault, aborts=True)
    await again(f, out)

    events, handler = handler_log()
    once.fired = False
    f.set_error_handler(handler)
    await outcome(f, range(N), fault, aborts=False)
    if fault in (Fault.RAISE, Fault.CANCEL):
        check_item_failure(events, fault, BAD, "classify.even")
    await again(f, out)


async def drive_classifier(fault: Fault) -> None:
    out: list[Any] = []
    wrongs: list[Any] = ["no such arm", None, 42, ["unhashable"], WRONG]
    once = Once(fault)
    current: list[Any] = [None]

    async def classify(x: int) -> Any:
        if once.hit(x):
            return await ainject(fault, wrong=current[0])
        return "a" if x % 2 else "b"

    async def a(x: int) -> int:
        return x

    async def b(x: int) -> int:
        return x

    async def sink(x: Any) -> None:
        out.append(x)

    if fault is Fault.WRONG:
        for wrong in wrongs:
            current[0] = wrong
            # without a default arm: the item is dropped (a Dropped event, filtered)
            once.fired = False
            events, handler = handler_log()
            f = flow(router(classify, a=a, b=b), sink, on_error=handler)
            stats = await f.run(range(N))
            idle(f)
            assert stats.filtered == 1
            assert [(e.item, e.reason) for e in events] == [(BAD, DropReason.ROUTER_MISS)]
            # with a default arm: the item goes there
            once.fired = False
            out.clear()
            f = flow(router(classify, a=a, b=b, default=a), sink)
            stats = await f.run(range(N))
            idle(f)
            assert stats.completed == N
            assert sorted(out) == list(range(N))
            await again(f, out)
        return

    f = flow(router(classify, a=a, b=b), sink)
    await outcome(f, range(N), fault, aborts=True)
    await again(f, out)

    events, handler = handler_log()
    once.fired = False
    f.set_error_handler(handler)
    await outcome(f, range(N), fault, aborts=False)
    if fault in (Fault.RAISE, Fault.CANCEL):
        check_item_failure(events, fault, BAD, "classify")
    await again(f, out)


async def drive_error_handler(fault: Fault) -> None:
    once = Once(fault, at=None)

    async def handler(event: Any) -> Any:
        if once.hit():
            return await ainject(fault, wrong=WRONG)
        return None

    async def work(x: int) -> int:
        if x == BAD:
            raise OSError("the item's own failure")
        return x

    f = flow(stage(work, workers=2), on_error=handler)
    # a handler that raises aborts the run: run() raises the handler's error
    await outcome(f, range(N), fault, aborts=True)
    if fault is Fault.WRONG:
        assert f.stats().failed == 1
        assert f.stats().completed == N - 1

    async def fine(x: int) -> int:
        return x

    f2 = flow(fine, on_error=handler)
    await again(f2)
    once.fired = False
    await outcome(f, range(N), fault, aborts=True)  # the same flow again, same outcome


async def drive_handler_context_manager(fault: Fault) -> None:
    once = Once(fault, at=None)

    class Handling:
        def __init__(self) -> None:
            self.exits = 0

        async def __aenter__(self) -> Any:
            async def handler(event: Any) -> None:
                pass

            if once.hit():
                return await ainject(fault, wrong=WRONG)  # WRONG: not a handler
            return handler

        async def __aexit__(self, *exc: object) -> None:
            self.exits += 1

    async def work(x: int) -> int:
        return x

    f = flow(work, on_error=Handling)
    if fault is Fault.WRONG:
        with pytest.raises(TypeError, match="error handler"):
            await f.run(range(N))
        idle(f)
    else:
        await outcome(f, range(N), fault, aborts=True)
    await again(f)


async def drive_handler_context_manager_exit(fault: Fault) -> None:
    once = Once(fault, at=None)

    class Handling:
        async def __aenter__(self) -> Any:
            async def handler(event: Any) -> None:
                pass

            return handler

        async def __aexit__(self, *exc: object) -> Any:
            if once.hit():
                return await ainject(fault, wrong=True)  # True would suppress: ignored
            return None

    async def work(x: int) -> int:
        if x == BAD:
            raise OSError("handled")
        return x

    f = flow(work, on_error=Handling)
    await outcome(f, range(N), fault, aborts=True)
    if fault is Fault.WRONG:
        assert f.stats().failed == 1
    once.fired = True
    stats = await f.run(range(N))
    assert stats.failed == 1
    assert stats.completed == N - 1


# -- per-worker context managers ------------------------------------------------------------
def worker_cm(fault: Fault, where: str, once: Once, counts: dict[str, int]) -> Callable[[], Any]:
    async def work(x: int) -> int:
        return x

    class PerWorker:
        async def __aenter__(self) -> Any:
            counts["entered"] += 1
            if where == "enter" and once.hit():
                return await ainject(fault, wrong=WRONG)  # not a function: a stage error
            return work

        async def __aexit__(self, *exc: object) -> Any:
            counts["exited"] += 1
            if where == "exit" and once.hit():
                return await ainject(fault, wrong=True)  # True is ignored: nothing to suppress
            return None

    def factory() -> PerWorker:
        if where == "factory" and once.hit():
            return inject(fault, wrong=WRONG)  # type: ignore[no-any-return]
        return PerWorker()

    return factory


async def drive_worker_cm(fault: Fault, where: str) -> None:
    counts = {"entered": 0, "exited": 0}
    once = Once(fault, at=None)
    f = flow(stage(worker_cm(fault, where, once, counts), workers=2))
    if fault is Fault.WRONG and where != "exit":
        # a factory that gives no context manager, or one that gives no function: a
        # clear stage error, run() raises it
        with pytest.raises(TypeError, match="flow stage 'factory'"):
            await f.run(range(N))
        idle(f)
    else:
        await outcome(f, range(N), fault, aborts=True)
    # every context manager that was entered was exited (a failed enter is not entered)
    lost = 1 if where == "enter" and fault is not Fault.WRONG else 0
    assert counts["exited"] == counts["entered"] - lost, counts
    counts["entered"] = counts["exited"] = 0
    await again(f)
    assert counts == {"entered": 2, "exited": 2}


async def drive_cm_factory(fault: Fault) -> None:
    await drive_worker_cm(fault, "factory")


async def drive_cm_enter(fault: Fault) -> None:
    await drive_worker_cm(fault, "enter")


async def drive_cm_exit(fault: Fault) -> None:
    await drive_worker_cm(fault, "exit")


# -- sources -----------------------------------------------------------------------------------
class SyncSource:
    """A sync iterable that misbehaves when it reaches ``BAD``."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.i = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        i = self.i
        self.i += 1
        if i >= N:
            raise StopIteration
        if i == BAD:
            if self.fault is Fault.EARLY_END:
                raise StopIteration
            return inject(self.fault, wrong=WRONG)
        return i


async def check_source(f: Flow[Any, Any], make: Callable[[], Any], fault: Fault) -> None:
    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    # without a handler: the source's error aborts the run
    await outcome(f, make(), fault, aborts=True)
    stats = f.stats()
    if fault is Fault.EARLY_END:
        assert stats.completed == BAD
    elif fault is Fault.WRONG:
        assert stats.completed == N
    elif fault is not Fault.HANG:
        assert stats.accepted == BAD  # what it gave before failing
        assert stats.completed + stats.discarded == BAD
    await again(f)

    # with a handler: a SourceError event, and the run finishes what it has
    events, handler = handler_log()
    f.set_error_handler(handler)
    await outcome(f, make(), fault, aborts=False)
    error = expected_error(fault)
    if error is not None and error not in INTERRUPTS:
        assert len(events) == 1
        assert isinstance(events[0], SourceError)
        assert isinstance(events[0].exception, error)
        assert f.stats().completed == BAD  # nothing it gave is lost
    f.set_error_handler(None)
    await again(f)


async def drive_sync_source(fault: Fault) -> None:
    async def work(x: Any) -> Any:
        return x

    await check_source(flow(work), lambda: SyncSource(fault), fault)


class AsyncSource:
    """An async iterator that misbehaves when it reaches ``BAD``."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.i = 0
        self.closed = False

    def __aiter__(self) -> AsyncSource:
        return self

    async def __anext__(self) -> Any:
        i = self.i
        self.i += 1
        await asyncio.sleep(0.1)
        if i >= N:
            raise StopAsyncIteration
        if i == BAD:
            if self.fault is Fault.EARLY_END:
                raise StopAsyncIteration
            return await ainject(self.fault, wrong=WRONG)
        return i

    async def aclose(self) -> None:
        self.closed = True


async def drive_async_source(fault: Fault) -> None:
    async def work(x: Any) -> Any:
        return x

    sources: list[AsyncSource] = []

    def make() -> AsyncSource:
        sources.append(AsyncSource(fault))
        return sources[-1]

    f = flow(work)
    await check_source(f, make, fault)
    assert all(s.closed for s in sources)  # every source was closed
    if fault is Fault.HANG:
        # drain() and stop() end a run whose source hangs
        for end in ("drain", "stop"):
            task = asyncio.create_task(f.run(make()))
            await asyncio.sleep(1)
            if end == "drain":
                stats = await f.drain()
                assert stats.completed == BAD
            else:
                await f.stop()
            stats = await task
            idle(f)
            assert stats.accepted == BAD


async def drive_async_gen_source(fault: Fault) -> None:
    async def work(x: Any) -> Any:
        return x

    def make() -> Callable[[], AsyncIterator[Any]]:
        async def gen() -> AsyncIterator[Any]:
            for i in range(N):
                await asyncio.sleep(0.1)
                if i == BAD:
                    if fault is Fault.EARLY_END:
                        return
                    yield await ainject(fault, wrong=WRONG)
                    continue
                yield i

        return gen

    await check_source(flow(work), make, fault)


async def drive_source_factory(fault: Fault) -> None:
    """``run(fn)`` with a plain callable that returns the iterable: called in the caller."""

    async def work(x: Any) -> Any:
        return x

    def factory() -> Any:
        return inject(fault, wrong=WRONG)

    f = flow(work)
    raised: BaseException | None = None
    try:
        await f.run(factory)
    except BaseException as exc:
        raised = exc
    error = expected_error(fault)
    if fault is Fault.WRONG:
        assert isinstance(raised, TypeError)  # not a source: a clear error at run()
    elif fault is Fault.CANCEL:
        assert isinstance(raised, HeadraceError), raised
        assert isinstance(raised.__cause__, asyncio.CancelledError)
    else:
        assert isinstance(raised, error), raised  # type: ignore[arg-type]
    idle(f)
    await again(f)


async def drive_source_aclose(fault: Fault) -> None:
    """A source whose ``aclose()`` misbehaves when the run stops pulling early."""

    class Closing:
        def __init__(self) -> None:
            self.i = 0

        def __aiter__(self) -> Closing:
            return self

        async def __anext__(self) -> int:
            self.i += 1
            await asyncio.sleep(0.1)
            return self.i

        async def aclose(self) -> Any:
            return await ainject(fault, wrong=WRONG)

    async def until(x: int) -> Any:
        return Last(x) if x == BAD else x

    f = flow(until)
    await outcome(f, Closing(), fault, aborts=True)

    async def fine() -> AsyncIterator[int]:
        for i in range(N):
            yield i

    stats = await f.run(fine)
    assert stats.completed == BAD + 1  # 0 .. BAD, the last one being the Last's value


# -- scaling strategies --------------------------------------------------------------------------
class Strategy:
    """A custom ``ScalingStrategy`` that misbehaves in ``method`` once."""

    min_workers = 0
    max_workers = 3
    sampling_period = 0.5

    def __init__(self, once: Once, method: str, wrong: Any = WRONG) -> None:
        self.once = once
        self.method = method
        self.wrong = wrong

    def initial_workers(self) -> int:
        if self.method == "initial_workers" and self.once.hit():
            return inject(self.once.fault, wrong=self.wrong)  # type: ignore[no-any-return]
        return 1

    def decide(self, stats: StageStats, now: float, tick: bool) -> int:
        if self.method == ("tick" if tick else "decide") and self.once.hit():
            return inject(self.once.fault, wrong=self.wrong)  # type: ignore[no-any-return]
        if stats.queue_length and stats.busy_workers == stats.workers:
            return 1
        return 0


#: Wrong deltas: within bounds after clamping (run goes on), or not a number (clear error).
WRONG_DELTAS: list[tuple[Any, type[BaseException] | None]] = [
    (-1, None),
    (10**12, None),
    (-(10**12), None),
    (2.0, None),
    (math.nan, TypeError),
    (math.inf, TypeError),
    (None, TypeError),
    ("1", TypeError),
    (WRONG, TypeError),
]


async def drive_strategy(fault: Fault, method: str) -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(1)
        return x

    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    wrongs = WRONG_DELTAS if fault is Fault.WRONG else [(WRONG, None)]
    for wrong, wrong_error in wrongs:
        once = Once(fault, at=None)
        f = flow(stage(work, scaling=Strategy(once, method, wrong)), sink)
        raised: BaseException | None = None
        try:
            await f.run(range(N))
        except BaseException as exc:
            raised = exc
        idle(f)
        error = expected_error(fault)
        if fault is Fault.WRONG:
            if wrong_error is None:
                assert raised is None, raised
                assert f.stats().completed == N
            else:
                assert isinstance(raised, wrong_error), (wrong, raised)
                assert "must return an int" in str(raised)
        elif fault is Fault.CANCEL:
            assert isinstance(raised, HeadraceError), raised
            assert isinstance(raised.__cause__, asyncio.CancelledError)
        else:
            assert isinstance(raised, error), raised  # type: ignore[arg-type]
        assert once.fired
        await again(f, out)


async def drive_strategy_decide(fault: Fault) -> None:
    await drive_strategy(fault, "decide")


async def drive_strategy_tick(fault: Fault) -> None:
    await drive_strategy(fault, "tick")


async def drive_strategy_initial(fault: Fault) -> None:
    await drive_strategy(fault, "initial_workers")


class LegacyStrategy:
    """A flowrhythm-style strategy (``on_enqueue``/``on_dequeue``) that misbehaves once."""

    def __init__(self, once: Once, wrong: Any) -> None:
        self.once = once
        self.wrong = wrong

    def initial_workers(self) -> int:
        return 1

    def on_enqueue(self, snapshot: Any) -> int:
        if self.once.hit():
            return inject(self.once.fault, wrong=self.wrong)  # type: ignore[no-any-return]
        return 0

    def on_dequeue(self, snapshot: Any) -> int:
        return 0


async def drive_legacy_strategy(fault: Fault) -> None:
    async def work(x: int) -> int:
        return x

    wrongs = WRONG_DELTAS if fault is Fault.WRONG else [(WRONG, None)]
    for wrong, wrong_error in wrongs:
        once = Once(fault, at=None)
        f = flow(stage(work, scaling=LegacyStrategy(once, wrong)))
        raised: BaseException | None = None
        try:
            await f.run(range(N))
        except BaseException as exc:
            raised = exc
        idle(f)
        error = wrong_error if fault is Fault.WRONG else expected_error(fault)
        if fault is Fault.CANCEL:
            assert isinstance(raised, HeadraceError), raised
        elif error is None:
            assert raised is None, raised
        else:
            assert isinstance(raised, error), raised
        await again(f)


# -- listeners -----------------------------------------------------------------------------------
async def drive_listener(fault: Fault, *, asynchronous: bool, on_scale: bool) -> None:
    once = Once(fault, at=None)
    heard: list[Any] = []

    def wanted(event: Any) -> bool:
        return isinstance(event, ScaleEvent) if on_scale else isinstance(event, TransformerError)

    async def async_listener(event: Any) -> Any:
        heard.append(event)
        if wanted(event) and once.hit():
            return await ainject(fault, wrong=WRONG)
        return None

    def sync_listener(event: Any) -> Any:
        heard.append(event)
        if wanted(event) and once.hit():
            return inject(fault, wrong=WRONG)
        return None

    listener: Callable[[Any], Any] = async_listener if asynchronous else sync_listener

    async def work(x: int) -> int:
        await asyncio.sleep(1)
        if x == BAD:
            raise OSError("handled")
        return x

    events, handler = handler_log()
    scaling = UtilizationScaling(min_workers=0, max_workers=2, cooldown_seconds=0)
    f = flow(stage(work, scaling=scaling), on_error=handler)
    f.add_listener(listener)
    raised: BaseException | None = None
    try:
        await f.run(range(N))
    except BaseException as exc:
        raised = exc
    stats = idle(f)
    assert once.fired
    error = expected_error(fault)
    if error in INTERRUPTS and not asynchronous:
        # a sync listener's interrupt reaches the caller that caused the event
        assert isinstance(raised, error), raised
    else:
        # isolated: logged, never propagated (an async listener that hangs is cancelled
        # at the end of the run)
        assert raised is None, raised
        assert stats.completed == N - 1
        assert stats.failed == 1
        assert len(events) == 1
    stats = await f.run(range(N))  # the same flow again: BAD fails again, is handled
    idle(f)
    assert stats.completed == N - 1
    assert stats.failed == 1


async def drive_sync_listener(fault: Fault) -> None:
    await drive_listener(fault, asynchronous=False, on_scale=False)


async def drive_async_listener(fault: Fault) -> None:
    await drive_listener(fault, asynchronous=True, on_scale=False)


async def drive_scale_listener(fault: Fault) -> None:
    await drive_listener(fault, asynchronous=False, on_scale=True)


# -- dunders flow calls on user objects --------------------------------------------------------
async def drive_item_repr(fault: Fault) -> None:
    once = Once(fault, at=None)

    class Item:
        def __init__(self, n: int) -> None:
            self.n = n

        def __repr__(self) -> str:
            if once.hit():
                return inject(fault, wrong=42)  # type: ignore[no-any-return]
            return f"Item({self.n})"

    failing = Once(fault)

    async def work(x: Any) -> Any:
        if failing.hit(getattr(x, "n", x)):
            raise OSError("the stage's own error")
        return x

    f = flow(work)
    raised: BaseException | None = None
    try:
        await f.run([Item(i) for i in range(N)])
    except BaseException as exc:
        raised = exc
    idle(f)
    error = expected_error(fault)
    if error in INTERRUPTS:
        assert isinstance(raised, error), raised
    else:
        # the stage's own error, never the failure to describe its item
        assert isinstance(raised, OSError), raised
        assert any("repr failed" in n for n in raised.__notes__)
    await again(f)


async def drive_add_note(fault: Fault) -> None:
    class Failure(Exception):
        def add_note(self, note: str) -> None:
            inject(fault, wrong=WRONG)

    failing = Once(fault)

    async def work(x: int) -> int:
        if failing.hit(x):
            raise Failure("the stage's own error")
        return x

    f = flow(work)
    raised: BaseException | None = None
    try:
        await f.run(range(N))
    except BaseException as exc:
        raised = exc
    idle(f)
    error = expected_error(fault)
    if error in INTERRUPTS:
        assert isinstance(raised, error), raised
    else:
        assert isinstance(raised, Failure), raised
    await again(f)


async def drive_priority_item_lt(fault: Fault) -> None:
    once = Once(fault, at=None)

    class Item:
        def __init__(self, n: int) -> None:
            self.n = n

        def __lt__(self, other: Item) -> bool:
            if once.hit():
                return inject(fault, wrong=WRONG)  # type: ignore[no-any-return]
            return self.n < other.n

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Item) and other.n == self.n

        def __hash__(self) -> int:
            return self.n

    async def slow(x: Item) -> Item:
        await asyncio.sleep(1)
        return x

    events, handler = handler_log()
    f = flow(stage(slow, queue=priority_queue, queue_size=0), on_error=handler)
    raised: BaseException | None = None
    try:
        await f.run([Item(i) for i in range(N)])
    except BaseException as exc:
        raised = exc
    idle(f)
    error = expected_error(fault)
    if error in INTERRUPTS:
        assert isinstance(raised, error), raised
    elif fault is Fault.WRONG:
        assert raised is None, raised
    elif raised is None:  # put by the source: a SourceError
        assert error is not None
        assert events
        assert isinstance(events[0].exception, error)
    else:
        assert error is not None
        assert isinstance(raised, error if fault is Fault.RAISE else HeadraceError), raised
    f.set_error_handler(None)
    once.fired = True
    stats = await f.run([Item(i) for i in range(N)])
    assert stats.completed == N


# -- retries and backoffs ------------------------------------------------------------------------
async def drive_retry_on(fault: Fault) -> None:
    calls: list[int] = []

    async def work(x: int) -> int:
        if x == BAD:
            calls.append(x)
            inject(fault)
        return x

    events, handler = handler_log()
    f = flow(stage(work, retries=2, retry_on=BaseException), on_error=handler)
    await outcome(f, range(N), fault, aborts=False)
    error = expected_error(fault)
    if error in INTERRUPTS:
        assert calls == [BAD]  # never retried, whatever retry_on says
    else:
        assert calls == [BAD] * 3  # the item's own failure: retried as listed
        check_item_failure(events, fault, BAD, "work")


class Schedule:
    """A custom backoff whose delays misbehave after the first one."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def delays(self, rng: Any = None) -> Iterator[Any]:
        yield 0.5
        if self.fault is Fault.EARLY_END:
            return
        yield inject(self.fault, wrong=math.nan)


async def drive_backoff(fault: Fault) -> None:
    calls: list[int] = []

    async def work(x: int) -> int:
        if x == BAD:
            calls.append(x)
            raise OSError("the item's own failure")
        return x

    events, handler = handler_log()
    f = flow(stage(work, retries=5, backoff=Schedule(fault)), on_error=handler)
    await outcome(f, range(N), fault, aborts=False)
    error = expected_error(fault)
    if error not in INTERRUPTS:
        assert calls == [BAD] * 2
        (event,) = events
        if error is None:  # ran out or yielded NaN: a clear BackoffError, chaining the cause
            assert isinstance(event.exception, BackoffError)
            assert isinstance(event.exception.__cause__, OSError)
        else:
            assert isinstance(event.exception, error)


# -- custom queues ---------------------------------------------------------------------------------
class ListQueue:
    """A custom queue (``QueueLike``) that misbehaves in ``method`` once."""

    def __init__(self, once: Once, method: str) -> None:
        self.items: list[Any] = []
        self.once = once
        self.method = method

    def put_nowait(self, item: Any) -> None:
        if self.method == "put" and self.once.hit():
            inject(self.once.fault)  # WRONG: the item is silently not stored
            return
        self.items.append(item)

    def get_nowait(self) -> Any:
        if self.method == "get" and self.once.hit():
            return inject(self.once.fault, wrong=WRONG)  # WRONG: another object
        return self.items.pop(0)

    def qsize(self) -> int:
        return len(self.items)


async def drive_queue(fault: Fault, method: str) -> None:
    once = Once(fault, at=None)

    def factory(maxsize: int = 1) -> Any:
        if method == "factory" and once.hit():
            return inject(fault, wrong=WRONG)
        return ListQueue(once, method)

    out: list[Any] = []

    async def source_stage(x: int) -> int:
        return x

    async def slow_sink(x: Any) -> None:
        await asyncio.sleep(1)  # items wait in its queue: the queue is used
        out.append(x)

    f = flow(source_stage, slow_sink, default_queue=factory, default_queue_size=0)
    raised: BaseException | None = None
    try:
        async with asyncio.timeout(DEADLINE):
            await f.run(range(N))
    except BaseException as exc:
        raised = exc
    idle(f)
    error = expected_error(fault)
    if fault is Fault.WRONG:
        if method == "factory":
            assert isinstance(raised, TypeError), raised  # not a queue: said at run()
        elif method == "get":
            assert raised is None, raised
            assert WRONG in out
        else:  # the queue lost an item: the run ends with the queue's error, no hang
            assert raised is not None
            assert not isinstance(raised, TimeoutError), raised
    elif fault is Fault.CANCEL:
        assert isinstance(raised, HeadraceError), raised
        assert isinstance(raised.__cause__, asyncio.CancelledError)
    else:
        assert isinstance(raised, error), raised  # type: ignore[arg-type]
    await again(f, out)


async def drive_queue_factory(fault: Fault) -> None:
    await drive_queue(fault, "factory")


async def drive_queue_put(fault: Fault) -> None:
    await drive_queue(fault, "put")


async def drive_queue_get(fault: Fault) -> None:
    await drive_queue(fault, "get")


# -- Last from every place, with every callback around it ----------------------------------------
async def drive_last_arm(fault: Fault) -> None:
    """A Last from a router arm while the other arm's callback misbehaves."""
    once = Once(fault, at=1)

    async def classify(x: int) -> str:
        return "odd" if x % 2 else "even"

    async def even(x: int) -> Any:
        return Last("END") if x == 4 else x

    async def odd(x: int) -> Any:
        if once.hit(x):
            return await ainject(fault, wrong=WRONG)
        await asyncio.sleep(0.1)
        return x

    out: list[Any] = []

    async def sink(x: Any) -> None:
        out.append(x)

    _, handler = handler_log()
    f = flow(router(classify, even=even, odd=odd), batched(1), sink, on_error=handler)
    raised: BaseException | None = None
    try:
        async with asyncio.timeout(DEADLINE):
            await f.run(range(20))
    except BaseException as exc:
        raised = exc
    assert not f.running
    error = expected_error(fault)
    if error in INTERRUPTS:
        assert isinstance(raised, error), raised
    else:
        assert raised is None, raised
        assert out[-1] == ["END"]
    out.clear()
    stats = await f.run(range(20))
    assert out[-1] == ["END"]
    assert stats.completed == len(out)


POINTS = [
    Point(
        "stage.target",
        ASYNC_FAULTS,
        drive_stage,
        also=("flow.stages", "Stage.target", "Flow.add_transformer.transformer"),
    ),
    Point("sync_stage.fn", SYNC_FAULTS, drive_sync_stage),
    Point("process_stage.fn", SYNC_FAULTS, drive_process_stage),
    Point("thread_stage.fn", SYNC_FAULTS, drive_thread_stage),
    Point("sink", ASYNC_FAULTS, drive_sink, also=("Flow.set_consumer.consumer",)),
    Point("stage.target (fan-out)", ITERATOR_FAULTS, drive_fan_out),
    Point("stage.target (context manager factory)", SYNC_FAULTS, drive_cm_factory),
    Point("worker context manager.__aenter__", ASYNC_FAULTS, drive_cm_enter),
    Point("worker context manager.__aexit__", ASYNC_FAULTS, drive_cm_exit),
    Point(
        "router.arms",
        ASYNC_FAULTS,
        drive_router_arm,
        also=("router.default", "Stage.arms", "Stage.default"),
    ),
    Point("router.classifier", ASYNC_FAULTS, drive_classifier),
    Point(
        "Flow.run.source (sync iterable)",
        (*SYNC_FAULTS, Fault.EARLY_END),
        drive_sync_source,
        also=("Flow.run.source", "Flow.iterate.source", "Flow.set_producer.producer"),
    ),
    Point("Flow.run.source (async iterator)", ITERATOR_FAULTS, drive_async_source),
    Point("Flow.run.source (async generator function)", ITERATOR_FAULTS, drive_async_gen_source),
    Point("Flow.run.source (factory)", SYNC_FAULTS, drive_source_factory),
    Point("source.aclose", ASYNC_FAULTS, drive_source_aclose),
    Point(
        "flow.on_error",
        ASYNC_FAULTS,
        drive_error_handler,
        also=("Flow.on_error", "Flow.set_error_handler.handler"),
    ),
    Point("on_error (context manager).__aenter__", ASYNC_FAULTS, drive_handler_context_manager),
    Point("on_error (context manager).__aexit__", ASYNC_FAULTS, drive_handler_context_manager_exit),
    Point(
        "ScalingStrategy.decide",
        SYNC_FAULTS,
        drive_strategy_decide,
        also=(
            "stage.scaling",
            "flow.default_scaling",
            "Flow.default_scaling_strategy",
            "Flow.configure.scaling",
            "Flow.configure_default.scaling",
            "Flow.set_default_scaling_strategy.strategy",
            "Flow.add_transformer.scaling_strategy",
        ),
    ),
    Point("ScalingStrategy.decide (tick)", SYNC_FAULTS, drive_strategy_tick),
    Point("ScalingStrategy.initial_workers", SYNC_FAULTS, drive_strategy_initial),
    Point("ScalingStrategy.on_enqueue (flowrhythm style)", SYNC_FAULTS, drive_legacy_strategy),
    Point("Flow.add_listener.callback", SYNC_FAULTS, drive_sync_listener),
    Point("Flow.add_listener.callback (async)", ASYNC_FAULTS, drive_async_listener),
    Point("Flow.add_listener.callback (ScaleEvent)", SYNC_FAULTS, drive_scale_listener),
    Point(
        "item.__repr__",
        SYNC_FAULTS,
        drive_item_repr,
        also=("TransformerError.item", "Dropped.item"),
    ),
    Point("exception.add_note", SYNC_FAULTS, drive_add_note),
    Point("item.__lt__ (priority_queue)", SYNC_FAULTS, drive_priority_item_lt),
    Point(
        "stage.retry_on",
        (Fault.RAISE, Fault.KEYBOARD_INTERRUPT, Fault.SYSTEM_EXIT, Fault.CANCEL),
        drive_retry_on,
    ),
    Point("stage.backoff", (*SYNC_FAULTS, Fault.EARLY_END), drive_backoff),
    Point(
        "QueueFactory",
        SYNC_FAULTS,
        drive_queue_factory,
        also=(
            "stage.queue",
            "flow.default_queue",
            "Flow.configure.queue",
            "Flow.configure_default.queue",
        ),
    ),
    Point(
        "QueueLike.put_nowait", SYNC_FAULTS, drive_queue_put, also=("QueueLike.put_nowait.item",)
    ),
    Point("QueueLike.get_nowait", SYNC_FAULTS, drive_queue_get),
    Point("Last (router arm) beside a misbehaving arm", ASYNC_FAULTS, drive_last_arm),
]

_STATS = "a StageStats snapshot flow builds and passes to a strategy: not user code"
EXCLUDE = {
    "FixedScaling.decide.stats": _STATS,
    "FixedScaling.on_dequeue.stats": _STATS,
    "FixedScaling.on_enqueue.stats": _STATS,
    "ScalingStrategy.decide.stats": _STATS,
    "UtilizationScaling.decide.stats": _STATS,
    "UtilizationScaling.on_dequeue.stats": _STATS,
    "UtilizationScaling.on_enqueue.stats": _STATS,
    "FlowStats.stages": "a mapping of StageStats that flow builds: not user code",
    "process_stage.options": "stage()'s options, passed on as they are (stage's points)",
    "thread_stage.options": "stage()'s options, passed on as they are (stage's points)",
    "AsyncQueueInterface.put.item": (
        "flowrhythm's queue protocol, for users' isinstance checks: flow never calls it"
    ),
}

#: ``Any``-typed parameters take user code too (a stage target, ``*stages``, handlers,
#: strategies, sources): the walk lists them as well.
WORDS = (*CALLABLE_WORDS, "Any")


def test_every_callable_parameter_is_in_the_table() -> None:
    assert missing_points(headrace_flow, POINTS, exclude=EXCLUDE, words=WORDS) == []


@pytest.mark.parametrize(("point", "fault", "start"), list(cases(POINTS)))
def test_fault(point: Point, fault: Fault, start: float, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="headrace"):
        run_injection(point.drive, fault, start=start)


def test_the_table_names_every_fault_point_once() -> None:
    names = [n for p in POINTS for n in p.names]
    assert len(names) == len(set(names))
    assert all(p.faults for p in POINTS)
