"""One run of a processor: the scheduler behind ``process_tasks`` and ``open()``.

A run is driven by one task (the *driver*), created with a copy of the caller's context.
A phase call runs inline in the driver when it is the only thing that can run (so a chain
of one-task levels creates no task at all); otherwise each call is its own task, started
as soon as its dependencies are done, and observed through a done callback. The caller
never awaits the driver directly: it waits on a future, so a cancel of the caller never
reaches a running ``post_execute``; cancellation is handed to the run as a request.

Whatever a phase does, the run ends: ``KeyboardInterrupt``/``SystemExit`` raised in a
phase task is caught there and re-raised in the caller once cleanup has run; a
``CancelledError`` that a phase raises while nobody cancels it is that phase's failure;
and a timed call that swallows the cancellation sent at its deadline is abandoned (see
:meth:`Run._abandon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Coroutine
from functools import partial
from types import CoroutineType
from typing import Any

from headrace_core import HeadraceError
from headrace_core.backoff import next_delay
from headrace_core.lowlevel import (
    Deadlines,
    first_step,
    raise_if_expired,
    safe_repr,
    start_task,
)
from headrace_leveled._errors import PhaseTimeout, flatten_exceptions
from headrace_leveled._function import is_retryable
from headrace_leveled._log import event_logger, events
from headrace_leveled._plan import PHASES, CallSpec, Plan
from headrace_leveled._types import Phase, TaskFailure

__all__ = ["CANCELLED", "FAILED", "RUNNING", "SUCCEEDED", "Run", "drive"]

logger = logging.getLogger("headrace.leveled")

PRE, EXEC, POST = 0, 1, 2
RUNNING, SUCCEEDED, FAILED, CANCELLED = 1, 2, 3, 4

#: Loop iterations a timed call gets, after the cancellation sent at its deadline, to end
#: before it is abandoned (enough to unwind ``finally`` blocks that await briefly).
GRACE = 8

_FATAL = (KeyboardInterrupt, SystemExit)


# What a timed call runs (see Run._timed).
_INVOKE, _GUARDS = 1, 2


class _Returned(Exception):
    """An inline call past its deadline returned: it leaves the stretch with its result."""


class _Renew(Exception):
    """The driver's cancel count moved since the stretch was entered: enter a new one.

    A ``Timeout`` reads the count once, when entered; ``asyncio.timeout()`` per call
    would read it at each call.
    """


class _Fatal(Exception):
    """Carries a ``KeyboardInterrupt``/``SystemExit`` out of a phase task.

    A task that lets either escape re-raises it into the event loop; the phase tasks
    catch it, end with this instead, and the run re-raises the original in the caller.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


# What a run holds of a timed call, the owner of the call's entry in its watcher
# (``[when, scope, held]``, see :class:`Deadlines`), is the list ``[task, *coroutines]``:
# the task awaiting the call, then the coroutines the call runs, closed if it is abandoned
# (see ``Run._abandon``). A list, since every timed call makes one. A phase task that is
# its call's scope has no owner (``None``): the task is ``entry[1]``, and the coroutine
# its body awaits is found when needed; its entry also carries its watcher's deque.


def _track(held: list[Any], awaitable: Any) -> None:
    """Add ``awaitable`` to what a timed call runs (``held``), if it is a coroutine."""
    if isinstance(awaitable, CoroutineType):  # inspect.iscoroutine(), one call less
        held.append(awaitable)


class _PhaseGroup(asyncio.TaskGroup):
    """The task group a ``task_group=True`` phase gets (an ``asyncio.TaskGroup``).

    Each child runs inside a small wrapper, so that a child's ``KeyboardInterrupt`` or
    ``SystemExit`` fails the group (and reaches the caller of the run) instead of escaping
    into the event loop, and a ``CancelledError`` a child raises while nobody cancels it
    is that child's failure rather than being dropped.
    """

    def __init__(self, held: list[Any] | None) -> None:
        super().__init__()
        self._held = held

    def create_task(  # type: ignore[override]
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None, context: Any = None
    ) -> asyncio.Task[Any]:
        if not inspect.iscoroutine(coro):
            return super().create_task(coro, name=name, context=context)
        wrapped = _child(coro)
        try:
            task = super().create_task(wrapped, name=name, context=context)
        except BaseException:
            wrapped.close()
            coro.close()
            raise
        if self._held is not None:
            self._held.append(coro)
        return task


async def _child(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coro
    except _FATAL as exc:
        raise _Fatal(exc) from None
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        error = HeadraceError("a task group child raised CancelledError without being cancelled")
        raise error from exc


def _unfatal(group: BaseExceptionGroup[Any]) -> None:
    """Re-raise the first ``KeyboardInterrupt``/``SystemExit`` a task group's children hid."""
    for leaf in flatten_exceptions(group):
        if type(leaf) is _Fatal:
            raise leaf.error
        if isinstance(leaf, _FATAL):
            raise leaf


def _cancel_failure(error: BaseException, phase: Phase) -> HeadraceError:
    """The failure of a phase that raised ``CancelledError`` while nobody cancelled it.

    The task's name is left to the note (``in task 'A' pre_execute``), which is added
    safely: building this error never calls user code.
    """
    failure = HeadraceError(f"{phase.value} raised CancelledError without being cancelled")
    failure.__cause__ = error
    return failure


def _add_note(error: BaseException, note: str) -> None:
    # The same exception object raised again by a later run keeps one note, not one per run.
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list) and note in notes:
        return
    error.add_note(note)


class Run:
    """The mutable state of one run (never shared between runs)."""

    __slots__ = (
        "abandoned",
        "attempts",
        "base",
        "begun",
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
        "inline_coro",
        "left",
        "loop",
        "phase",
        "plan",
        "post_failures",
        "primary",
        "ready",
        "restarted",
        "running",
        "spec",
        "spontaneous",
        "started",
        "status",
        "stopping",
        "stretch",
        "stretch_count",
        "succ",
        "t_end",
        "t_start",
        "timed",
        "unstarted",
        "value",
        "waiter",
        "watchers",
    )

    def __init__(self, plan: Plan, ctx: Any, loop: asyncio.AbstractEventLoop) -> None:
        size = 3 * plan.n_tasks
        self.plan = plan
        self.ctx = ctx
        self.loop = loop
        self.entered = bytearray(plan.n_nodes)
        self.status = bytearray(size)
        # Which phase calls' tasks ran their first line (see _plain, _call, _not_started).
        self.begun = bytearray(size)
        self.t_start = [0.0] * size
        self.t_end = [0.0] * size
        self.value: list[Any] = [None] * size
        self.attempts: dict[int, int] = {}
        self.unstarted: set[int] = set()
        self.restarted: set[int] = set()  # the posts started again (see _not_started)
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
        # The pass's scope for inline calls with only a timeout (see run_pass), and the
        # call that left it at its deadline: (node, call, its result if it returned).
        self.stretch: asyncio.Timeout | None = None
        self.inline_coro: Any = None
        self.stretch_count = 0  # the driver's cancelling() when the stretch was entered
        self.left: tuple[int, CallSpec, Any] | None = None
        # The abandoned calls' entries by scope, until the calls' frames take them back.
        # (keyed by the call's scope: its ``asyncio.Timeout``, or the phase task itself).
        self.abandoned: dict[asyncio.Timeout | asyncio.Task[Any], list[Any]] = {}
        # The phase tasks that are their call's scope (see ``_pump``), with their entries.
        self.timed: dict[asyncio.Task[Any], list[Any]] = {}
        # The timed calls' deadlines, one watcher (one loop timer) per timeout length.
        self.watchers: dict[float, Deadlines[list[Any]]] = {}
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
            if not plan.timed[phase]:
                await self._schedule()
                return
            while True:
                # The inline calls with only a timeout share one asyncio.Timeout, the
                # stretch, which each one's deadline reschedules; a call whose deadline
                # came leaves it (see _inline), and the next calls get a new one.
                stretch = self.stretch = asyncio.Timeout(None)
                driver = self.driver  # the task running this pass (see drive())
                self.stretch_count = 0 if driver is None else driver.cancelling()
                try:
                    async with stretch:
                        await self._schedule()
                    return
                except BaseException as exc:
                    if not self._left_stretch(exc, stretch):
                        raise
        finally:
            self.stretch = self.inline_coro = None
            self.waiter = None
            self.ready.clear()
            if phase == POST:
                self.finished = True
                self.ended = self.loop.time()
                for watcher in self.watchers.values():
                    watcher.close()
                self.watchers.clear()  # they refer back to the run

    async def _schedule(self) -> None:
        """Run the calls of the current phase, inline or in tasks, until all have ended."""
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
                # Only a phase cancelling the driver task gets here: a run cancel.
                driver = asyncio.current_task()
                if driver is not None:
                    driver.uncancel()
                self._spontaneous_cancel()

    def _left_stretch(self, exc: BaseException, stretch: asyncio.Timeout) -> bool:
        """Settle the inline call whose deadline made it leave ``stretch`` with ``exc``.

        ``stretch`` has settled the cancellation as ``asyncio.timeout()`` does: ``exc`` is
        a ``TimeoutError`` when the deadline's cancel alone reached the call, and a
        ``CancelledError`` when the run cancelled it too. A call abandoned at its deadline
        (``_abandon``) fails with ``PhaseTimeout(abandoned=True)`` whatever it left with.
        ``_Renew``: the call had not started (see ``_inline``); it runs again under a new
        stretch. Returns ``False`` when no call left (``exc`` is then the driver's own to
        raise).
        """
        left = self.left
        if left is None:
            return False
        self.left = None
        node, call, result = left
        assert call.timeout is not None
        if type(exc) is _Renew:
            self.inline = -1
            self.ready.appendleft(node)
            return True
        k = self.base + node
        self.t_end[k] = self.loop.time()
        error: BaseException | None = exc
        try:
            if self.abandoned.pop(stretch, None) is not None:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # the cancel that woke the driver after its call was closed
                error = PhaseTimeout(
                    task=call.name, phase=call.phase, timeout=call.timeout, abandoned=True
                )
            elif type(exc) is _Returned:
                error = None
            elif isinstance(exc, asyncio.CancelledError):
                self._inline_cancelled(node, k, exc)
                return True
            elif isinstance(exc, TimeoutError) and stretch.expired():
                error = call.timed_out()  # chained from the TimeoutError (core's rule)
                error.__cause__ = exc
        except BaseException as raised:  # the task name's __repr__, in PhaseTimeout
            error = raised
        self._settle_driver()
        if error is None:
            self.status[k] = SUCCEEDED
            self.value[k] = result
            self._advance(node)
        else:
            self._failed(node, k, error)
        return True

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
        base = self.base
        t_start = self.t_start
        status = self.status
        watchers = self.watchers
        timed = self.timed
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
            if function is not None:
                task = create_task(self._plain(function, k))
            else:
                assert call is not None
                if call.timed_only:
                    # The task is its call's scope: the watcher cancels it at the
                    # deadline, and _on_done reads the outcome from the ended task; no
                    # asyncio.Timeout, since a task that ends owes no uncancel().
                    # Deadlines.add() written out, as its docs allow, and the entry
                    # carries its watcher's deque for _on_done. No owner: the task is
                    # the scope, and its body awaits the call's coroutine.
                    task = create_task(self._plain(call.function, k))
                    seconds = call.timeout
                    assert seconds is not None
                    watcher = watchers.get(seconds) or self._watcher(seconds)
                    entries = watcher.entries
                    entry = timed[task] = [now + watcher.seconds, task, None, entries]
                    entries.append(entry)
                    if watcher.handle is None:
                        watcher.handle = self.loop.call_at(entry[0], watcher.fire)
                else:
                    task = create_task(self._call(k, call))
                    # An eager task may have added a deadline read at a later time: the
                    # next entry reads the clock again, so entries stay in time order.
                    now = -1.0
            running[task] = node
            task.add_done_callback(on_done)
        return -1

    def _timed_outcome(self, task: asyncio.Task[Any]) -> BaseException | None:
        """What a timed phase task that reached its deadline fails with, if not its own outcome.

        As ``asyncio.timeout()`` decides: a task cancelled by its deadline alone, or one
        that answered the deadline's cancel with ``TimeoutError``, raises ``PhaseTimeout``
        chained from a ``TimeoutError``; one also cancelled by the run stays cancelled. One
        abandoned (:meth:`_abandon`) raises ``PhaseTimeout(abandoned=True)``.
        """
        call = self.spec[self.running[task]]
        assert call is not None
        if self.abandoned.pop(task, None) is not None:
            if not task.cancelled():
                task.exception()  # what the closed call raised is noise: retrieved
            assert call.timeout is not None
            return PhaseTimeout(
                task=call.name, phase=call.phase, timeout=call.timeout, abandoned=True
            )
        cause: BaseException | None = None
        if task.cancelled():
            if task.cancelling() > 1:
                return None  # cancelled by the run too: a cancellation
            try:
                task.result()
            except asyncio.CancelledError as cancelled:
                cause = TimeoutError()
                cause.__cause__ = cancelled
        else:
            error = task.exception()
            if not isinstance(error, TimeoutError):
                return None
            cause = error
        error = call.timed_out()
        error.__cause__ = cause
        return error

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
        if self.timed:
            entry = self.timed.pop(task, None)
            if entry is not None:
                entries = entry[3]  # Deadlines.done() written out
                entry[1] = None
                while entries and entries[0][1] is None:
                    entries.popleft()
                if entry[0] is None:  # the deadline came
                    try:
                        error = self._timed_outcome(task)
                    except BaseException as raised:  # the name's __repr__, in PhaseTimeout
                        error = raised
                    if error is not None:
                        node = running.pop(task)
                        k = self.base + node
                        self.t_end[k] = self.loop.time()
                        self._failed(node, k, error)
                        if (self.ready and self._pump(False) >= 0) or not running:
                            self._wake()
                        return
        node = running.pop(task)
        k = self.base + node
        self.t_end[k] = self.loop.time()
        if task.cancelled():
            if node in self.unstarted:
                self.status[k] = 0
                if self.phase == PRE:
                    self.entered[node] = 0
            elif not self.begun[k]:
                self._not_started(node, k)
            elif task.cancelling():
                self._cancelled(node, k)
            else:
                # Nobody cancelled the task: the phase raised CancelledError by itself.
                try:
                    task.result()
                except asyncio.CancelledError as error:
                    self._failed(node, k, _cancel_failure(error, PHASES[self.phase]))
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
        self.t_start[k] = now = loop.time()
        function = self.fast[node]
        try:
            if function is not None:
                result = await function(self.ctx)
            else:
                call = self.spec[node]
                assert call is not None
                if call.timed_only:
                    # Under the pass's stretch (see run_pass), which the deadline
                    # reschedules: no asyncio.Timeout of its own.
                    # Deadlines.add() and done() written out, as its docs allow.
                    assert call.timeout is not None
                    driver = self.driver
                    if driver is not None and driver.cancelling() != self.stretch_count:
                        self.left = (node, call, None)
                        raise _Renew  # before the call starts: it runs under a new stretch
                    watcher = self.watchers.get(call.timeout) or self._watcher(call.timeout)
                    # No owner: the driver awaits the call, whose coroutine is kept in
                    # ``inline_coro`` (see _held).
                    coro = self.inline_coro = call.function(self.ctx)
                    entry: list[Any] = [now + watcher.seconds, self.stretch, None]
                    entries = watcher.entries
                    entries.append(entry)
                    if watcher.handle is None:
                        watcher.handle = loop.call_at(entry[0], watcher.fire)
                    try:
                        result = await coro
                    except BaseException:
                        watcher.done(entry)
                        if entry[0] is None:  # the deadline came: the stretch settles it
                            self.left = (node, call, None)
                        raise
                    entry[1] = None
                    while entries and entries[0][1] is None:
                        entries.popleft()
                    if entry[0] is None:
                        # The deadline came, and the call returned all the same (it
                        # swallowed the cancel, or ended before it): the stretch settles.
                        self.left = (node, call, result)
                        raise _Returned
                else:
                    result = await self._call(k, call)
        except asyncio.CancelledError as exc:
            if self.left is not None:
                raise  # leaving the stretch, which settles it (_left_stretch)
            self.t_end[k] = loop.time()
            self._inline_cancelled(node, k, exc)
        except BaseException as exc:
            if self.left is not None:
                raise
            self.t_end[k] = loop.time()
            self._settle_driver()
            self._failed(node, k, exc)
        else:
            self.t_end[k] = loop.time()
            self._settle_driver()
            self.status[k] = SUCCEEDED
            self.value[k] = result
            self._advance(node)

    def _inline_cancelled(self, node: int, k: int, exc: asyncio.CancelledError) -> None:
        driver = asyncio.current_task()
        requested = self.driver_cancelled
        own = driver is not None and driver.cancelling() > 0
        self._settle_driver()
        if own:
            if not requested and driver is not None:
                driver.uncancel()  # a phase cancelled the driver: taken as a run cancel
            self._cancelled(node, k)
        else:
            # The phase raised CancelledError while nobody cancelled the run.
            self._failed(node, k, _cancel_failure(exc, PHASES[self.phase]))

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
        if type(exc) is _Fatal:
            exc = exc.error
        self.status[k] = FAILED
        self.value[k] = exc
        phase = self.phase
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit...: cleanup runs, then it is re-raised as is.
            self._fatal(exc)
            if phase == POST:
                self._advance(node)
            return
        name = self.plan.names[node]
        which = PHASES[phase]
        failures = [TaskFailure(name, which, leaf) for leaf in flatten_exceptions(exc)]
        # The failure is recorded whatever its annotation or the hook do; only their own
        # KeyboardInterrupt/SystemExit is kept, to be re-raised in the caller after cleanup.
        if phase == POST:
            self.post_failures.extend(failures)
        else:
            self.primary.extend(failures)
            self._stop()
        try:
            self._annotate(failures, name, which)
            if phase == POST and self.plan.on_cleanup_error is not None:
                self._call_hook(failures)
        except _FATAL as fatal:
            self._fatal(fatal)
        finally:
            if phase == POST:
                self._advance(node)

    def _annotate(self, failures: list[TaskFailure[Any]], name: Any, which: Phase) -> None:
        """Add ``in task 'A' pre_execute`` to each leaf; a failing ``add_note`` is skipped."""
        note = f"in task {safe_repr(name)} {which.value}"
        for failure in failures:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                _add_note(failure.error, note)

    def _call_hook(self, failures: list[TaskFailure[Any]]) -> None:
        hook = self.plan.on_cleanup_error
        assert hook is not None
        for failure in failures:
            try:
                returned: object = hook(failure)
                if inspect.isawaitable(returned):  # a sync callable that returned one
                    if inspect.iscoroutine(returned):
                        returned.close()
                    logger.error(
                        "on_cleanup_error returned an awaitable for %s; it is called where "
                        "nothing awaits it, so it must do its work itself",
                        failure,
                    )
            except _FATAL:
                raise
            except BaseException:
                logger.exception("on_cleanup_error raised for %s; ignored", failure)

    def _fatal(self, exc: BaseException) -> None:
        """Keep the first KeyboardInterrupt/SystemExit; stop pre/execute, cleanup still runs."""
        if self.fatal is None:
            self.fatal = exc
        if self.phase != POST:
            self._stop()

    def _cancelled(self, node: int, k: int) -> None:
        """A phase cancelled by someone other than the run (itself included).

        In pre/execute, the run sends no cancel of its own outside ``_stop`` (whose tasks
        are its own to cancel) and deadlines; in post, only deadlines. So such a cancel
        cancels the run: pre/execute stop, every due post runs, and the caller gets
        ``CancelledError`` once cleanup has run. A post so cancelled is interrupted: it is
        reported cancelled, and the remaining posts run.
        """
        self.status[k] = CANCELLED
        if self.phase == POST:
            self.spontaneous = True
            self._advance(node)
        elif not self.stopping:
            self._spontaneous_cancel()

    def _not_started(self, node: int, k: int) -> None:
        """A phase task that someone else cancelled before its first step.

        The run cancels no task of its own there but in ``_stop`` (``unstarted``), so the
        cancel came from outside the run (a sweep cancelling every task): it cancels the
        run, as a cancel of a running phase does (``_cancelled``). But no line of the phase
        ran: a pre so cancelled does not enter its task (it gets no post), and a post so
        cancelled is started again, since the post of an entered task must run; if that
        one too is cancelled before it starts, the post fails (a ``HeadraceError``, passed
        to ``on_cleanup_error``), so skipped cleanup is never silent.
        """
        phase = self.phase
        if phase != POST:
            if phase == PRE:
                self.entered[node] = 0
            self._cancelled(node, k)
            return
        self.spontaneous = True
        if node in self.restarted:
            error = HeadraceError(
                "post_execute was cancelled before it started, twice; it never ran"
            )
            self._failed(node, k, error)
            return
        self.restarted.add(node)
        self.ready.appendleft(node)  # _on_done starts it again

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
    async def _plain(self, function: Any, k: int) -> Any:
        # A phase task's body for a plain ``async def`` phase: the function is called here,
        # in the task, and a KeyboardInterrupt/SystemExit does not escape into the loop.
        self.begun[k] = 1  # first, so _on_done tells a task cancelled before its first step
        try:
            return await function(self.ctx)
        except _FATAL as exc:
            raise _Fatal(exc) from None

    async def _call(self, k: int, call: CallSpec) -> Any:
        self.begun[k] = 1  # see _plain
        try:
            attempt = 0
            delays = None
            guards = call.guards
            while True:
                attempt += 1
                self.attempts[k] = attempt
                try:
                    if guards:
                        if call.phase is Phase.POST_EXECUTE and call.timeout is not None:
                            return await self._timed(call, _GUARDS)
                        return await self._through_guards(call)
                    return await self._attempt(call)
                except Exception as exc:
                    # Only Exceptions are retried: never KeyboardInterrupt, SystemExit or a
                    # cancellation, and never a call abandoned at its deadline.
                    if attempt > call.retries or type(exc) is _Fatal:
                        raise
                    if type(exc) is PhaseTimeout and exc.abandoned:
                        raise
                    if not is_retryable(exc, call.retry_on):
                        raise
                    if delays is None:
                        delays = iter(call.backoff.delays(self.plan.rng))
                    delay = next_delay(delays, owner="TaskFunction(backoff=...)", cause=exc)
                    if event_logger.isEnabledFor(logging.DEBUG):
                        _log_retry(call, attempt, delay, exc)
                    await asyncio.sleep(delay)
        except _FATAL as exc:
            raise _Fatal(exc) from None

    def _through_guards(self, call: CallSpec) -> Any:
        guards = call.guards
        awaitable = guards[0](*guards[1:], self._attempt, call)
        if not inspect.isawaitable(awaitable):
            owner = getattr(guards[0], "__self__", guards[0])
            raise TypeError(
                f"guard {safe_repr(owner)}: call() returned {safe_repr(awaitable)}, "
                "not an awaitable (a guard's call must be async)"
            )
        return awaitable

    async def _attempt(self, call: CallSpec) -> Any:
        if call.timeout is None:
            return await self._invoke(call, None)
        return await self._timed(call, _INVOKE)

    async def _timed(self, call: CallSpec, how: int) -> Any:
        """One attempt, or the guards around the attempts, under a deadline of its own.

        The call enters an ``asyncio.Timeout`` of its own, which the run's watcher of its
        timeout length reschedules when the deadline comes (see :class:`Deadlines`), and
        raises ``PhaseTimeout`` past it. ``how`` says what runs: the phase through
        ``_invoke`` (one attempt of ``_call``), or the guards around the attempts
        (``post_execute``, whose cleanup is shielded, so the timeout bounds the guards
        too). (A phase with only a timeout runs without one: see ``_pump`` and
        ``_inline``.)
        """
        assert call.timeout is not None
        scope = asyncio.Timeout(None)
        held = [asyncio.current_task()]
        watcher = self.watchers.get(call.timeout) or self._watcher(call.timeout)
        entry = watcher.add(scope, held)
        try:
            async with scope:
                if how == _INVOKE:
                    return await self._invoke(call, held)
                awaitable = self._through_guards(call)
                _track(held, awaitable)
                return await awaitable
        except BaseException as exc:
            self._timed_out(exc, scope, call)
            raise
        finally:
            watcher.done(entry)

    async def _invoke(self, call: CallSpec, held: list[Any] | None) -> Any:
        if call.task_group:
            try:
                async with _PhaseGroup(held) as group:
                    result = call.function(self.ctx, group)
                    if inspect.isawaitable(result):
                        if held is not None:
                            _track(held, result)
                        result = await result
            except BaseExceptionGroup as group_error:
                _unfatal(group_error)
                raise
            return result
        result = call.function(self.ctx)
        if inspect.isawaitable(result):
            if held is not None:
                _track(held, result)
            result = await result
        return result

    def _timed_out(self, exc: BaseException, deadline: asyncio.Timeout, call: CallSpec) -> None:
        """Raise what a timed call that raised ``exc`` raises instead, if anything.

        A call abandoned at its deadline raises ``PhaseTimeout(abandoned=True)`` with no
        cause (what the closed call raised is noise); one whose deadline expired raises
        ``PhaseTimeout`` chained from the ``TimeoutError`` (core's rule); otherwise the
        caller re-raises ``exc``.
        """
        if isinstance(exc, GeneratorExit):
            return  # an outer call is being closed: let it close
        if deadline in self.abandoned:
            assert call.timeout is not None
            del self.abandoned[deadline]
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cancel that woke this task after its call was closed
            raise PhaseTimeout(
                task=call.name, phase=call.phase, timeout=call.timeout, abandoned=True
            ) from None
        if isinstance(exc, TimeoutError):
            raise_if_expired(deadline, call.timed_out, exc)

    def _watcher(self, seconds: float) -> Deadlines[list[Any]]:
        """The watcher of this run's timed calls that last ``seconds`` (created on first use)."""
        watcher = self.watchers[seconds] = Deadlines(self.loop, seconds, self._expire)
        return watcher

    def _expire(self, entry: list[Any]) -> None:
        """A timed call reached its deadline (its scope cancels it next): watch it end."""
        self.loop.call_soon(self._overdue, entry, GRACE)

    def _held(self, entry: list[Any]) -> list[Any]:
        """What a live timed call holds: ``[task, *coroutines]`` (see ``_track``).

        An entry without an owner is an inline call under the stretch (the driver awaits
        ``inline_coro``) or a phase task that is its call's scope (its body awaits the
        call's coroutine).
        """
        held: list[Any] | None = entry[2]
        if held is not None:
            return held
        scope = entry[1]
        if isinstance(scope, asyncio.Timeout):
            task, coro = self.driver, self.inline_coro
        else:
            task, coro = scope, getattr(scope.get_coro(), "cr_await", None)
        return [task, coro] if type(coro) is CoroutineType else [task]

    def _overdue(self, entry: list[Any], left: int) -> None:
        scope = entry[1]
        if scope is None or (type(scope) is not asyncio.Timeout and scope.done()):
            return  # the call ended (a task that is its scope: _on_done settles it)
        task = self._held(entry)[0]
        if not left and any(
            other[1] is not None and self._held(other)[0] is task
            for other in self.abandoned.values()
        ):
            left = GRACE  # an inner deadline of the same call is being abandoned: wait for it
        if left:
            self.loop.call_soon(self._overdue, entry, left - 1)
        else:
            self._abandon(entry)

    def _abandon(self, entry: list[Any]) -> None:
        """Stop waiting for a timed call that swallowed the cancellation sent at its deadline.

        Its coroutines are closed (``GeneratorExit`` is raised where each one waits, so its
        ``finally`` blocks run, as when a forgotten coroutine is garbage-collected), and the
        task awaiting it is woken by one more cancel, which the call's frame takes back.
        The call then fails with ``PhaseTimeout(abandoned=True)`` and is never retried; so
        no task is left pending when the run returns. A coroutine that ignores
        ``GeneratorExit`` too cannot be stopped: that is logged.
        """
        scope: asyncio.Timeout | asyncio.Task[Any] | None = entry[1]
        if scope is None:
            return
        held = self._held(entry)
        task = held[0]
        if task is None:
            return
        if event_logger.isEnabledFor(logging.WARNING):
            if isinstance(scope, asyncio.Timeout):
                when = scope.when()
            else:  # a phase task that is its call's scope: its deadline is its start + timeout
                node = self.running[scope]
                call = self.spec[node]
                assert call is not None
                assert call.timeout is not None
                when = self.t_start[self.base + node] + call.timeout
            events.warning(
                "a phase call ignored the cancel at its deadline (loop time %.3f): abandoned",
                when,
                kind="Processor",
                component=None,
                event="phase_abandoned",
            )
        self.abandoned[scope] = entry
        for coro in reversed(held[1:]):
            if coro.cr_frame is None:
                continue
            try:
                coro.close()
            except _FATAL as exc:
                if self.fatal is None:
                    self.fatal = exc
            except BaseException:
                logger.exception("a timed-out phase call could not be stopped")
        task.cancel()

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


def _driver_done(
    run: Run,
    body: Coroutine[Any, Any, None],
    waiter: asyncio.Future[None],
    driver: asyncio.Task[None],
) -> None:
    """Resolve ``waiter`` once the run's driver ended, or start the driver again.

    The run cancels its driver only while the driver runs an inline call (see
    :meth:`Run.request_cancel`). A driver that someone else cancelled before its first
    step ran no line, not even its ``try``, so ``body`` never started: that cancel is taken
    as the run takes a cancel of its running driver (``Run._schedule``), a cancel of the
    run, and ``body`` runs in a new driver, so cleanup still runs. The new driver is started
    inside its ``try`` (:func:`start_task`): it cannot be lost that way again.
    """
    if driver.cancelled() and inspect.getcoroutinestate(body) == "CORO_CREATED":
        run._spontaneous_cancel()
        again = run.driver = start_task(run.loop, _restarted(run, body))
        again.add_done_callback(partial(_driver_done, run, body, waiter))
        return
    if not waiter.done():
        waiter.set_result(None)


async def _driver(run: Run, body: Coroutine[Any, Any, None]) -> None:
    # The driver task's body: nothing it runs may let KeyboardInterrupt/SystemExit escape
    # into the event loop; it is kept and re-raised in the caller.
    try:
        await body
    except _FATAL as exc:
        if run.fatal is None:
            run.fatal = exc


async def _restarted(run: Run, body: Coroutine[Any, Any, None]) -> None:
    # The body of a driver started again (see _driver_done), run by start_task().
    try:
        await first_step()
    except asyncio.CancelledError:
        # Cancelled again before its first step: as a cancel of the running driver.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        run._spontaneous_cancel()
    await _driver(run, body)


async def drive(run: Run, body: Coroutine[Any, Any, None]) -> None:
    """Run ``body`` in a driver task; hand a cancel of the caller to the run as a request.

    The caller's CancelledError is re-raised once the driver has finished (cleanup
    included), and the caller's ``cancelling()`` count is left as the cancellers made it.
    A ``KeyboardInterrupt``/``SystemExit`` a phase raised wins over the cancellation.
    """
    loop = run.loop
    driver = loop.create_task(_driver(run, body))
    run.driver = driver
    done: asyncio.Future[None] = loop.create_future()
    driver.add_done_callback(partial(_driver_done, run, body, done))
    try:
        await done
    except asyncio.CancelledError:
        run.request_cancel()
        # run.driver: a driver cancelled before its first step is replaced, by its first
        # done callback (_driver_done), which runs before this task wakes up.
        while not (driver := run.driver).done():
            again: asyncio.Future[None] = loop.create_future()
            driver.add_done_callback(partial(_resolve, again))
            try:
                await again
            except asyncio.CancelledError:
                continue
        if not driver.cancelled():
            driver.exception()
        if run.fatal is not None:
            raise run.fatal from None
        run.log_unraised()
        raise
    driver = run.driver
    assert driver is not None
    driver.result()


def _log_retry(call: CallSpec, attempt: int, delay: float, error: BaseException) -> None:
    events.debug(
        "%s of task %s failed (attempt %d, %s), retrying in %.3fs",
        call.phase.value,
        safe_repr(call.name),
        attempt,
        type(error).__name__,
        delay,
        kind="Processor",
        component=None,
        event="retry",
        task=safe_repr(call.name),
        phase=call.phase.value,
        attempt=attempt,
        delay=delay,
        error_type=type(error).__name__,
    )
