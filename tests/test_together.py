"""The packages working together: combinations, and a seeded soak through all of them."""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

import pytest

import headrace_core
from headrace_coalesce import Loader, batch, collect
from headrace_core.testing import VirtualClock
from headrace_flow import flow, stage
from headrace_guards import Bulkhead, CircuitBreaker, CircuitOpenError, Retry, Timeout
from headrace_leveled import Phase, Processor, ProcessorError, Task, TaskFunction
from headrace_throttle import Throttle
from shared.faults import FaultError


def test_one_circuit_open_error_across_the_family() -> None:
    import headrace_guards
    import headrace_throttle

    assert headrace_guards.CircuitOpenError is headrace_core.CircuitOpenError
    assert headrace_throttle.CircuitOpenError is headrace_core.CircuitOpenError
    assert headrace_guards.CircuitState is headrace_core.CircuitState


async def test_flow_stage_loads_through_throttle_breaker_and_loader_in_a_leveled_request() -> None:
    with VirtualClock():
        batches: list[int] = []

        async def fetch_many(keys: list[int]) -> list[int]:
            batches.append(len(keys))
            await asyncio.sleep(0.01)
            return [k * 10 for k in keys]

        loader: Loader[int, int] = Loader(fetch_many, cache=False)
        breaker = CircuitBreaker("backend")
        throttle = Throttle(8)
        rows: list[int] = []
        log: list[str] = []

        async def load(item: int) -> int:
            async def call(slot: object) -> int:
                return await breaker.call(loader.load, item)

            return await throttle.execute(call)

        async def keep(value: int) -> None:
            rows.append(value)

        async def pipeline(ctx: dict[str, Any]) -> int:
            stats = await flow(stage(load, workers=16), keep).run(range(200))
            return stats.completed

        async def setup(ctx: dict[str, Any]) -> None:
            log.append("open")

        async def cleanup(ctx: dict[str, Any]) -> None:
            log.append("close")

        processor = (
            Processor.builder()
            .add_task(Task("pool", pre_execute=setup, post_execute=cleanup), level=0)
            .add_task(Task("pipeline", execute=pipeline), level=1)
            .build()
        )
        report = await processor.process_tasks({})
        assert report.results["pipeline"] == 200
        assert sorted(rows) == [k * 10 for k in range(200)]
        assert sum(batches) == 200
        assert len(batches) < 200 // 4  # calls were coalesced
        assert log == ["open", "close"]
        snap = throttle.snapshot()
        assert snap.in_flight == 0
        assert snap.completed == 200
        assert breaker.snapshot().successes == 200
        await throttle.drain()


async def test_leveled_phases_run_through_guard_objects() -> None:
    with VirtualClock(start=0.0) as clock:
        bulkhead = Bulkhead(2)
        peak = 0
        running = 0

        async def work(ctx: dict[str, Any]) -> None:
            nonlocal peak, running
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(1)
            running -= 1

        builder = Processor.builder()
        for i in range(6):
            builder.add_task(
                Task(f"t{i}", execute=TaskFunction(work, guards=(bulkhead, Timeout(5)))), level=0
            )
        await builder.build().process_tasks({})
        assert peak == 2
        assert clock.now() == pytest.approx(3)
        assert bulkhead.snapshot().in_flight == 0


async def test_leveled_timeout_guard_failure_is_attributed() -> None:
    with VirtualClock():

        async def slow(ctx: object) -> None:
            await asyncio.sleep(100)

        processor = (
            Processor.builder()
            .add_task(Task("slow", execute=TaskFunction(slow, guards=(Timeout(1),))), level=0)
            .build()
        )
        with pytest.raises(ProcessorError) as info:
            await processor.process_tasks(None)
        (failure,) = info.value.failures
        assert failure.task == "slow"
        assert isinstance(failure.error, headrace_core.GuardTimeout)


async def test_throttle_breaker_rejection_is_the_shared_error() -> None:
    with VirtualClock():
        breaker = CircuitBreaker("api", failure_threshold=1, recovery_timeout=10)
        throttle = Throttle(4, circuit_breaker=breaker)

        async def boom(slot: object) -> None:
            raise ConnectionError("down")

        with pytest.raises(ConnectionError):
            await throttle.execute(boom)
        with pytest.raises(headrace_core.CircuitOpenError) as info:
            await throttle.execute(boom)
        assert info.value.retry_after == pytest.approx(10)
        await throttle.drain()


async def test_coalesced_batch_inside_flow_workers() -> None:
    with VirtualClock():
        sizes: list[int] = []

        @batch
        async def double(x: int) -> list[int]:
            items = await collect(x)
            sizes.append(len(items))
            await asyncio.sleep(0.01)
            return [i * 2 for i in items]

        out: list[int] = []

        async def sink(x: int) -> None:
            out.append(x)

        await flow(stage(double, workers=10), sink).run(range(100))
        assert sorted(out) == [i * 2 for i in range(100)]
        assert sum(sizes) == 100
        assert max(sizes) > 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_soak_every_package_at_once_loses_nothing(seed: int) -> None:
    """Thousands of calls through every package with random failures and cancellations."""
    rng = random.Random(seed)
    with VirtualClock():
        bulkhead = Bulkhead(8)
        breaker = CircuitBreaker("soak", failure_threshold=20, recovery_timeout=0.5)
        retry = Retry(attempts=3, retry_on=ConnectionError)
        throttle = Throttle(12)
        loaded: list[int] = []

        async def fetch_many(keys: list[int]) -> list[Any]:
            loaded.extend(keys)
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            return [ConnectionError(k) if rng.random() < 0.05 else k for k in keys]

        loader: Loader[int, Any] = Loader(fetch_many, cache=False)

        async def guarded(item: int) -> Any:
            async def attempt() -> Any:
                return await breaker.call(bulkhead.call, loader.load, item)

            async def call(slot: object) -> Any:
                return await retry.call(attempt)

            return await throttle.execute(call)

        outcomes = {"ok": 0, "failed": 0, "cancelled": 0, "rejected": 0}

        async def one(item: int) -> None:
            try:
                await guarded(item)
            except ConnectionError:
                outcomes["failed"] += 1
            except CircuitOpenError:
                outcomes["rejected"] += 1
            else:
                outcomes["ok"] += 1

        async def stage_fn(item: int) -> int:
            task = asyncio.ensure_future(one(item))
            if rng.random() < 0.1:
                await asyncio.sleep(rng.uniform(0, 0.01))
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                outcomes["cancelled"] += 1
            return item

        seen: list[int] = []

        async def sink(item: int) -> None:
            seen.append(item)

        entered: list[str] = []
        posted: list[str] = []

        def make_task(name: str, fn: Any) -> Task[Any, str]:
            async def pre(ctx: object) -> None:
                entered.append(name)

            async def post(ctx: object) -> None:
                posted.append(name)

            return Task(name, pre_execute=pre, execute=fn, post_execute=post)

        async def pipeline(ctx: object) -> Any:
            return await flow(stage(stage_fn, workers=24), sink).run(range(2000))

        builder = Processor.builder()
        builder.add_task(make_task("open", None), level=0)
        builder.add_task(make_task("pipeline", pipeline), level=1)
        report = await builder.build().process_tasks({})
        stats = report.results["pipeline"]
        assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded
        assert stats.completed == 2000
        assert sorted(seen) == list(range(2000))
        assert sum(outcomes.values()) == 2000
        assert posted == list(reversed(entered))
        assert bulkhead.snapshot().in_flight == 0
        assert breaker.snapshot().half_open_in_flight == 0
        snap = throttle.snapshot()
        assert snap.in_flight == 0
        assert snap.waiting == 0
        assert loader.stats().in_flight == 0
        await throttle.drain()


class _Injector:
    """Raises, at random callback points, the user's own error or a CancelledError of its own."""

    def __init__(self, rng: random.Random, rate: float, rates: dict[str, float]) -> None:
        self.rng = rng
        self.rate = rate
        self.rates = rates  # points called rarely fail more often, so every run hits them
        self.counts: collections.Counter[str] = collections.Counter()

    def maybe(self, point: str) -> None:
        # The first call at each point always fails, later ones at random: every run hits
        # every point.
        if point not in self.counts or self.rng.random() < self.rates.get(point, self.rate):
            self.counts[point] += 1
            if self.rng.random() < 0.5:
                raise FaultError(point)
            raise asyncio.CancelledError(point)  # raised by the callback, not a cancellation


#: Seeds of the faulty soak; each run injects at every point below (counted and asserted).
FAULT_SEEDS = range(6)
FAULT_POINTS = (
    "Loader.key",
    "Loader.load_fn",
    "CircuitBreaker.record",
    "CircuitBreaker.listener",
    "Bulkhead.call.fn",
    "Retry.retry_on",
    "Throttle.is_failure",
    "Throttle.listener",
    "batch.fn",
    "flow.stage",
    "flow.sink",
    "flow.on_error",
    "Task.post_execute",
)


@pytest.mark.parametrize("seed", FAULT_SEEDS)
async def test_soak_with_faults_at_random_callback_points(seed: int) -> None:
    """The soak again, while user callbacks at random points raise or cancel themselves.

    Every item ends up in the sink or in the error handler (never lost), every component
    is idle at the end, and every post phase runs for the pre phases that ran.
    """
    rng = random.Random(1000 + seed)
    inject = _Injector(
        rng,
        rate=0.02,
        rates={"CircuitBreaker.listener": 0.5, "Throttle.listener": 0.2, "Task.post_execute": 0.5},
    )
    with VirtualClock(start=(0.0, 1e3, 1e6)[seed % 3]):
        bulkhead = Bulkhead(8)

        def record(exc: BaseException) -> bool:
            inject.maybe("CircuitBreaker.record")
            return True

        breaker = CircuitBreaker(
            "faulty-soak",
            failure_threshold=2,
            recovery_timeout=0.5,
            record=record,
        )
        breaker.add_listener(lambda event: inject.maybe("CircuitBreaker.listener"))

        def retry_on(exc: BaseException) -> bool:
            inject.maybe("Retry.retry_on")
            return isinstance(exc, ConnectionError)

        retry = Retry(attempts=3, retry_on=retry_on)

        def is_failure(exc: BaseException) -> bool:
            inject.maybe("Throttle.is_failure")
            return True

        throttle = Throttle(12, is_failure=is_failure)
        throttle.add_listener(lambda event: inject.maybe("Throttle.listener"))

        async def fetch_many(keys: list[int]) -> list[Any]:
            inject.maybe("Loader.load_fn")
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            return [ConnectionError(k) if rng.random() < 0.05 else k for k in keys]

        def key(item: int) -> int:
            inject.maybe("Loader.key")
            return item

        loader: Loader[int, Any] = Loader(fetch_many, cache=False, key=key)

        @batch
        async def tag(item: int) -> list[int]:
            items = await collect(item)
            inject.maybe("batch.fn")
            await asyncio.sleep(0.001)
            return list(items)

        async def in_bulkhead(item: int) -> Any:
            inject.maybe("Bulkhead.call.fn")
            return await loader.load(item)

        async def attempt(item: int) -> Any:
            return await breaker.call(bulkhead.call, in_bulkhead, item)

        async def through_throttle(item: int) -> Any:
            async def call(slot: object) -> Any:
                return await retry.call(attempt, item)

            return await throttle.execute(call)

        async def stage_fn(item: int) -> int:
            inject.maybe("flow.stage")
            await asyncio.sleep(rng.uniform(0, 0.2))  # the run spans many recovery periods
            await through_throttle(item)
            return await tag(item)

        seen: list[int] = []
        handled: list[int] = []

        async def sink(item: int) -> None:
            inject.maybe("flow.sink")
            seen.append(item)

        async def on_error(event: Any) -> None:
            handled.append(event.item)
            # A raising handler aborts the run by contract, so the soak counts its calls
            # (its own faults are driven by flow's fault table).
            inject.counts["flow.on_error"] += 1

        entered: list[str] = []
        posted: list[str] = []

        def make_task(name: str, fn: Any) -> Task[Any, Any]:
            async def pre(ctx: object) -> None:
                entered.append(name)

            async def post(ctx: object) -> None:
                posted.append(name)
                inject.maybe("Task.post_execute")

            return Task(name, pre_execute=pre, execute=fn, post_execute=post)

        async def pipeline(ctx: object) -> Any:
            return await flow(stage(stage_fn, workers=24), sink, on_error=on_error).run(range(1500))

        builder = Processor.builder()
        for n in range(4):
            builder.add_task(make_task(f"open{n}", None), level=0)
        builder.add_task(make_task("pipeline", pipeline), level=1)
        try:
            report = await builder.build().process_tasks({})
        except ProcessorError as error:
            report = error.report
            phases = {f.phase for f in error.failures}
        else:
            phases = set()
        # Only cleanup faults may fail the run; the pipeline itself finished.
        assert phases <= {Phase.POST_EXECUTE}
        stats = report.results["pipeline"]
        assert stats.accepted == 1500
        assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded
        assert sorted(seen + handled) == list(range(1500))  # nothing lost
        assert sorted(posted) == sorted(entered)  # every post ran, faults or not
        assert bulkhead.snapshot().in_flight == 0
        assert breaker.snapshot().half_open_in_flight == 0
        snap = throttle.snapshot()
        assert snap.in_flight == 0
        assert snap.waiting == 0
        assert loader.stats().in_flight == 0
        assert tag.stats().in_flight == 0
        await throttle.drain()
    # Every point was hit in this run.
    assert set(inject.counts) == set(FAULT_POINTS), set(FAULT_POINTS) - set(inject.counts)
