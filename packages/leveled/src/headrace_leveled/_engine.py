"""One run of a processor: the scheduler behind ``process_tasks`` and ``open()``.

A run is driven by one task (the *driver*), created with a copy of the caller's context.
A phase call runs inline in the driver when it is the only thing that can run (so a chain
of one-task levels creates no task at all); otherwise each call is its own task, started
as soon as its dependencies are done, and observed through a done callback. The caller
never awaits the driver directly: it waits on a future, so a cancel of the caller never
reaches a running ``post_execute``; cancellation is handed to the run as a request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Coroutine
from functools import partial
from typing import Any

from headrace_leveled._errors import PhaseTimeout, flatten_exceptions
from headrace_leveled._function import is_retryable
from headrace_leveled._plan import PHASES, CallSpec, Plan
from headrace_leveled._types import TaskFailure

__all__ = ["CANCELLED", "FAILED", "RUNNING", "SUCCEEDED", "Run", "drive"]

logger = logging.getLogger("headrace.leveled")

PRE, EXEC, POST = 0, 1, 2
RUNNING, SUCCEEDED, FAILED, CANCELLED = 1, 2, 3, 4


class Run:
    """The mutable state of one run (never shared between runs)."""

    __slots__ = (
        "attempts",
        "base",
        "caller_cancelled",
        "counts",
        "ctx",
        "driver",
        "driver_cancelled",
        "ended",
        "entered",
        "fast",
        "fatal",
        "finished",
        "inline",
        "loop",
        "phase",
        "plan",
        "post_failures",
        "primary",
        "ready",
        "running",
        "spec",
        "spontaneous",
        "started",
        "status",
        "stopping",
        "succ",
        "t_end",
        "t_start",
        "unstarted",
        "value",
        "waiter",
    )

    def __init__(self, plan: Plan, ctx: Any, loop: asyncio.AbstractEventLoop) -> None:
        size = 3 * plan.n_tasks
        self.plan = plan
        self.ctx = ctx
        self.loop = loop
        self.entered = bytearray(plan.n_nodes)
        self.status = bytearray(size)
        self.t_start = [0.0] * size
        self.t_end = [0.0] * size
        self.value: list[Any] = [None] * size
        self.attempts: dict[int, int] = {}
        self.unstarted: set[int] = set()
        self.primary: list[TaskFailure[Any]] = []
        self.post_failures: list[TaskFailure[Any]] = []
        self.stopping = False
        self.caller_cancelled = False
        self.spontaneous = False
        self.fatal: BaseException | None = None
        self.finished = False
        self.phase = -1
        self.base = 0
        self.running: dict[asyncio.Task[Any], int] = {}
        self.ready: deque[int] = deque()
        self.counts: list[int] = []
        self.succ: tuple[tuple[int, ...], ...] | None = None
        self.fast: tuple[Any, ...] = ()
        self.spec: tuple[CallSpec | None, ...] = ()
        self.waiter: asyncio.Future[None] | None = None
        self.inline = -1
        self.driver: asyncio.Task[None] | None = None
        self.driver_cancelled = False
        self.started = loop.time()
        self.ended = self.started

    # -- whole runs and single phases -------------------------------------------------
    async def run_all(self) -> None:
        """Run pre, execute and post (the body of ``process_tasks``' driver)."""
        try:
            if not self.stopping:
                await self.run_pass(PRE)
            if not self.stopping and self.plan.execute_nodes:
                await self.run_pass(EXEC)
        finally:
            await self.run_pass(POST)

    async def run_phase(self, phase: int) -> None:
        """Run one phase (the body of a stepping driver)."""
        if phase == POST:
            await self.run_pass(POST)
        elif not self.stopping:
            await self.run_pass(phase)

    async def run_pass(self, phase: int) -> None:
        """Run every call of one phase, in graph order, and return when all have ended."""
        plan = self.plan
        self.phase = phase
        self.base = phase * plan.n_tasks
        self.unstarted.clear()
        self.fast = plan.fast[phase]
        self.spec = plan.spec[phase]
        if phase == POST:
            self.succ = plan.pred
            self.counts = list(plan.n_succ)
            self.ready.extend(plan.leaves)
        elif phase == PRE or plan.execute_by_deps:
            self.succ = plan.succ
            self.counts = list(plan.n_pred)
            self.ready.extend(plan.roots)
        else:
            self.succ = None
            self.ready.extend(plan.execute_nodes)
        try:
            while True:
                node = self._pump(True)
                if node >= 0:
                    await self._inline(node)
                    continue
                if not self.running:
                    break
                waiter = self.waiter = self.loop.create_future()
                try:
                    await waiter
                except asyncio.CancelledError:
                    # Only a phase calling current_task().cancel() on the driver gets here.
                    self._spontaneous_cancel()
        finally:
            self.waiter = None
            self.ready.clear()
            if phase == POST:
                self.finished = True
                self.ended = self.loop.time()

    # -- scheduling ---------------------------------------------------------------------
    def _pump(self, allow_inline: bool) -> int:
        """Start what is ready; return a node to run inline, or -1."""
        ready = self.ready
        running = self.running
        phase = self.phase
        if self.stopping and phase != POST:
            ready.clear()
            return -1
        fast = self.fast
        spec = self.spec
        entered = self.entered
        pre = phase == PRE
        post = phase == POST
        cap = self.plan.max_concurrency
        now = -1.0
        create_task = self.loop.create_task
        on_done = self._on_done
        ctx = self.ctx
        base = self.base
        t_start = self.t_start
        status = self.status
        while ready:
            node = ready[0]
            function = fast[node]
            call = spec[node]
            if (function is None and call is None) or (post and not entered[node]):
                ready.popleft()
                if pre:
                    entered[node] = 1
                self._advance(node)
                continue
            if not running and len(ready) == 1:
                if allow_inline:
                    ready.popleft()
                    if pre:
                        entered[node] = 1
                return node
            if len(running) >= cap:
                return -1
            ready.popleft()
            if pre:
                entered[node] = 1
            k = base + node
            if now < 0:
                now = self.loop.time()
            t_start[k] = now
            status[k] = RUNNING
            coro: Coroutine[Any, Any, Any]
            if function is not None:
                try:
                    coro = function(ctx)
                except Exception as exc:
                    self.t_end[k] = now
                    self._failed(node, k, exc)
                    if self.stopping and not post:
                        ready.clear()
                        return -1
                    continue
            else:
                assert call is not None
                coro = self._timed(call) if call.timed_only else self._call(k, call)
            task = create_task(coro)
            running[task] = node
            task.add_done_callback(on_done)
        return -1

    def _advance(self, node: int) -> None:
        succ = self.succ
        if succ is None:
            return
        counts = self.counts
        ready = self.ready
        for s in succ[node]:
            left = counts[s] - 1
            counts[s] = left
            if not left:
                ready.append(s)

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        running = self.running
        node = running.pop(task)
        k = self.base + node
        self.t_end[k] = self.loop.time()
        if task.cancelled():
            if node in self.unstarted:
                self.status[k] = 0
                if self.phase == PRE:
                    self.entered[node] = 0
            else:
                self._cancelled(node, k)
        else:
            exc = task.exception()
            if exc is None:
                self.status[k] = SUCCEEDED
                self.value[k] = task.result()
                succ = self.succ
                if succ is not None:
                    counts = self.counts
                    for s in succ[node]:
                        left = counts[s] - 1
                        counts[s] = left
                        if not left:
                            self.ready.append(s)
            else:
                self._failed(node, k, exc)
        if (self.ready and self._pump(False) >= 0) or not running:
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _inline(self, node: int) -> None:
        k = self.base + node
        self.inline = node
        self.status[k] = RUNNING
        loop = self.loop
        self.t_start[k] = loop.time()
        function = self.fast[node]
        try:
            if function is not None:
                result = await function(self.ctx)
            else:
                call = self.spec[node]
                assert call is not None
                if call.timed_only:
                    # _timed() written out: one coroutine less per inline call.
                    assert call.timeout is not None
                    deadline = asyncio.timeout(call.timeout)
                    try:
                        async with deadline:
                            result = await call.function(self.ctx)
                    except TimeoutError as exc:
                        if deadline.expired():
                            raise PhaseTimeout(
                                task=call.name, phase=call.phase, timeout=call.timeout
                            ) from exc
                        raise
                else:
                    result = await self._call(k, call)
        except asyncio.CancelledError:
            self.t_end[k] = loop.time()
            self._settle_driver()
            self._cancelled(node, k)
        except BaseException as exc:
            self.t_end[k] = loop.time()
            self._settle_driver()
            self._failed(node, k, exc)
        else:
            self.t_end[k] = loop.time()
            self._settle_driver()
            self.status[k] = SUCCEEDED
            self.value[k] = result
            self._advance(node)

    def _settle_driver(self) -> None:
        self.inline = -1
        if self.driver_cancelled:
            # Our own cancel request reached the inline call: restore the driver's count.
            self.driver_cancelled = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    # -- outcomes -------------------------------------------------------------------------
    def _failed(self, node: int, k: int, exc: BaseException) -> None:
        self.status[k] = FAILED
        self.value[k] = exc
        phase = self.phase
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit...: cleanup runs, then it is re-raised as is.
            if self.fatal is None:
                self.fatal = exc
            if phase == POST:
                self._advance(node)
            else:
                self._stop()
            return
        name = self.plan.names[node]
        which = PHASES[phase]
        failures = [TaskFailure(name, which, leaf) for leaf in flatten_exceptions(exc)]
        note = f"in task {name!r} {which.value}"
        for failure in failures:
            failure.error.add_note(note)
        if phase == POST:
            self.post_failures.extend(failures)
            hook = self.plan.on_cleanup_error
            if hook is not None:
                for failure in failures:
                    try:
                        hook(failure)
                    except Exception:
                        logger.exception("on_cleanup_error raised for %s; ignored", failure)
            self._advance(node)
        else:
            self.primary.extend(failures)
            self._stop()

    def _cancelled(self, node: int, k: int) -> None:
        self.status[k] = CANCELLED
        if self.phase == POST:
            self._advance(node)
        elif not self.stopping:
            self._spontaneous_cancel()

    def _spontaneous_cancel(self) -> None:
        self.spontaneous = True
        self._stop()

    def _stop(self) -> None:
        """Fail fast: stop scheduling and cancel the running calls of this phase."""
        if self.stopping:
            return
        self.stopping = True
        if self.phase == POST:
            return
        self.ready.clear()
        running = self.running
        for task in list(running):
            coro = task.get_coro()
            if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == "CORO_CREATED":
                # Cancelled before its first step: the phase never started (so a pre
                # cancelled here does not enter its task).
                self.unstarted.add(running[task])
            task.cancel()

    def request_cancel(self) -> None:
        """The caller was cancelled: stop pre/execute; cleanup still runs in full."""
        self.caller_cancelled = True
        if self.finished or self.phase == POST or self.stopping:
            self.stopping = True
            return
        self._stop()
        driver = self.driver
        if self.inline >= 0 and driver is not None and not driver.done():
            self.driver_cancelled = True
            driver.cancel()

    # -- one call with timeout, retries and guards -----------------------------------------
    async def _call(self, k: int, call: CallSpec) -> Any:
        attempt = 0
        delays = None
        guards = call.guards
        while True:
            attempt += 1
            self.attempts[k] = attempt
            try:
                if guards:
                    return await guards[0](*guards[1:], self._attempt, call)
                return await self._attempt(call)
            except Exception as exc:
                if attempt > call.retries or not is_retryable(exc, call.retry_on):
                    raise
                if delays is None:
                    delays = call.backoff.delays(self.plan.rng)
                await asyncio.sleep(next(delays))

    async def _timed(self, call: CallSpec) -> Any:
        # The common case in one coroutine: ``await fn(ctx)`` under its own deadline.
        assert call.timeout is not None
        deadline = asyncio.timeout(call.timeout)
        try:
            async with deadline:
                return await call.function(self.ctx)
        except TimeoutError as exc:
            if deadline.expired():
                raise PhaseTimeout(task=call.name, phase=call.phase, timeout=call.timeout) from exc
            raise

    async def _attempt(self, call: CallSpec) -> Any:
        if call.timeout is None:
            return await self._invoke(call)
        deadline = asyncio.timeout(call.timeout)
        try:
            async with deadline:
                return await self._invoke(call)
        except TimeoutError as exc:
            if deadline.expired():
                raise PhaseTimeout(task=call.name, phase=call.phase, timeout=call.timeout) from exc
            raise

    async def _invoke(self, call: CallSpec) -> Any:
        if call.task_group:
            async with asyncio.TaskGroup() as group:
                result = call.function(self.ctx, group)
                if inspect.isawaitable(result):
                    result = await result
            return result
        result = call.function(self.ctx)
        if inspect.isawaitable(result):
            result = await result
        return result

    def log_unraised(self) -> None:
        """Log the failures of a cancelled run, which CancelledError hides from the caller."""
        hooked = self.plan.on_cleanup_error is not None
        for failure in self.primary:
            logger.warning("%s (not raised: the run was cancelled)", failure)
        if not hooked:
            for failure in self.post_failures:
                logger.error(
                    "post_execute failed while the run was cancelled: %s",
                    failure,
                    exc_info=failure.error,
                )


def _resolve(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def drive(run: Run, body: Coroutine[Any, Any, None]) -> None:
    """Run ``body`` in a driver task; hand a cancel of the caller to the run as a request.

    The caller's CancelledError is re-raised once the driver has finished (cleanup
    included), and the caller's ``cancelling()`` count is left as the cancellers made it.
    """
    loop = run.loop
    driver = loop.create_task(body)
    run.driver = driver
    done: asyncio.Future[None] = loop.create_future()
    driver.add_done_callback(partial(_resolve, done))
    try:
        await done
    except asyncio.CancelledError:
        run.request_cancel()
        while not driver.done():
            again: asyncio.Future[None] = loop.create_future()
            driver.add_done_callback(partial(_resolve, again))
            try:
                await again
            except asyncio.CancelledError:
                continue
        if not driver.cancelled():
            driver.exception()
        run.log_unraised()
        raise
    driver.result()
