"""``Flow``: a reusable pipeline definition, and the ways to run it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import MappingProxyType
from typing import Any, Self, TypeVar, cast

from headrace_core import ConfigurationError, GuardTimeout, HeadraceError
from headrace_core.lowlevel import (
    Deadline,
    being_cancelled,
    check_optional_number,
    first_step,
    safe_repr,
    start_task,
)
from headrace_core.stats import Listeners
from headrace_flow._channel import EOF, Finals
from headrace_flow._compile import bake, compile_parts, resolve, settings
from headrace_flow._dump import dump
from headrace_flow._errors import FlowClosed, FlowEvent
from headrace_flow._lineage import Tracked, finish
from headrace_flow._on_error import Form, adapt, handler_form, normalize_handler
from headrace_flow._plan import NO_SETTINGS, Graph, Plan, Settings
from headrace_flow._push import PushHandle
from headrace_flow._queues import QueueFactory
from headrace_flow._run import Run
from headrace_flow._scaling import as_strategy
from headrace_flow._source import normalize_source
from headrace_flow._stages import Composite, Stage, as_stage, stage
from headrace_flow._state import user_cancelled
from headrace_flow._stats import FlowStats, StageStats

__all__ = ["Flow"]

In = TypeVar("In")
Out = TypeVar("Out")


class Flow(Composite[In, Out]):
    """A pipeline definition: source -> stages -> sink, reusable for sequential runs.

    Build one with :func:`flow` (``flow(parse, enrich, store)``) or step by step with the
    builder methods (``Flow()``, ``set_producer``, ``add_transformer``, ``set_consumer``).

    Args:
        default_scaling_strategy: the scaling of stages that set none.
        on_error: the error handler (see :meth:`set_error_handler`).

    Raises:
        ConfigurationError: for a bad strategy or handler.
    """

    def __init__(
        self: Flow[Any, Any],
        default_scaling_strategy: Any = None,
        *,
        on_error: Any = None,
    ) -> None:
        self._parts: list[Stage[object, object]] = []
        self._consumer: Stage[object, object] | None = None
        self._producer: object = None  # the user's source, for start()
        self._graph_cache: Graph | None = None
        self._overrides: dict[str, Settings] = {}
        self._defaults = NO_SETTINGS
        if default_scaling_strategy is not None:
            self._defaults = Settings(
                scaling=as_strategy(default_scaling_strategy, "default_scaling_strategy")
            )
        self._handler = normalize_handler(on_error)
        self._run: Run | None = None
        self._last: FlowStats | None = None
        self._listeners: Listeners[FlowEvent] = Listeners("headrace.flow", "flow")
        self._task: asyncio.Task[FlowStats | _Interrupt] | None = None
        self._closed = False

    # -- definition ----------------------------------------------------------------------
    def _compiled(self) -> Graph:
        if self._graph_cache is None:
            parts = [*self._parts]
            if self._consumer is not None:
                parts.append(self._consumer)
            self._graph_cache = compile_parts(parts)
        return self._graph_cache

    def _graph(self) -> Graph:
        """Return its compiled stages, its own defaults and ``configure()`` baked in."""
        return bake(self._compiled(), self._defaults, self._overrides)

    def _plan(self) -> Plan:
        return resolve(self._compiled(), self._defaults, self._overrides)

    def _changed(self) -> None:
        if self._run is not None:
            raise HeadraceError("a flow cannot be changed while it runs")
        self._graph_cache = None

    @property
    def stage_names(self) -> list[str]:
        """The stages' names in pipeline order (router arms and sub-flow stages dotted)."""
        return [node.name for node in self._compiled()]

    def configure(
        self,
        name: str,
        *,
        scaling: Any = None,
        queue: QueueFactory | None = None,
        queue_size: int | None = None,
        ordered: bool | None = None,
    ) -> None:
        """Override one stage's settings (``None`` keeps what is there).

        Args:
            name: the stage's name (see :attr:`stage_names`).
            scaling: a scaling strategy.
            queue: a queue factory.
            queue_size: the input queue's bound (``0`` = unbounded).
            ordered: release outputs in input order.

        Raises:
            ConfigurationError: for an unknown stage name or a bad setting.
        """
        if name not in self.stage_names:
            raise ConfigurationError.argument_error(
                "name", name, f"no such stage; stages are {self.stage_names}"
            )
        self._changed()
        given = settings(scaling, queue, queue_size, ordered)
        self._overrides[name] = given.over(self._overrides.get(name, NO_SETTINGS))

    def configure_default(
        self,
        *,
        scaling: Any = None,
        queue: QueueFactory | None = None,
        queue_size: int | None = None,
    ) -> None:
        """Set defaults for every stage; per-stage settings override them.

        Args:
            scaling: a scaling strategy.
            queue: a queue factory.
            queue_size: the input queues' bound (``0`` = unbounded).

        Raises:
            ConfigurationError: for a bad setting.
        """
        self._changed()
        self._defaults = settings(scaling, queue, queue_size, None).over(self._defaults)

    def set_error_handler(self, handler: Any) -> None:
        """Set (or with ``None`` remove) the error handler.

        Without a handler the first stage, source or context manager error aborts the
        run and ``run()`` raises it. A handler receives each ``TransformerError``,
        ``SourceError`` and ``Dropped`` event: ``async def h(event)``, or the two-argument
        form ``async def h(item, exc)`` (item ``None`` for a source error; not called for
        drops), or an async context manager factory yielding either (entered per run).
        Returning continues the flow (the item counts as failed); raising aborts it and
        ``run()`` raises the handler's exception.

        Args:
            handler: the handler, or ``None``.

        Raises:
            ConfigurationError: when ``handler`` is not one of those forms.
        """
        self._handler = normalize_handler(handler, "handler")

    def add_listener(self, callback: Callable[[FlowEvent], Any]) -> Callable[[], None]:
        """Receive every event (errors, drops and ``ScaleEvent``s), sync or async.

        A listener's exception is logged, never propagated.

        Args:
            callback: called with each :data:`FlowEvent` (an ``ErrorEvent`` or a
                ``ScaleEvent``).

        Returns:
            A callable that removes the listener.
        """
        return self._listeners.add(callback)

    # -- README builder API ----------------------------------------------------------------
    def set_producer(self, producer: Any) -> None:
        """Set the source used by :meth:`start` (an async generator function or iterable).

        Args:
            producer: what ``run()`` accepts as ``source``.
        """
        self._producer = producer

    def add_transformer(
        self, transformer: Any, *, name: str | None = None, scaling_strategy: Any = None
    ) -> None:
        """Append a stage (before the consumer).

        Args:
            transformer: any stage form :func:`flow` accepts.
            name: the stage's name.
            scaling_strategy: its scaling strategy.

        Raises:
            ConfigurationError: for a bad name or strategy.
            TypeError: for a sync callable.
        """
        scaling = scaling_strategy
        if scaling is not None:
            scaling = as_strategy(scaling, "scaling_strategy")
        self._changed()
        self._parts.append(stage(transformer, name=name, scaling=scaling))

    def set_consumer(self, consumer: Any) -> None:
        """Set the last stage (the sink).

        Args:
            consumer: an async item function or a context manager factory.

        Raises:
            TypeError: for a sync callable.
        """
        self._changed()
        self._consumer = as_stage(consumer)

    def set_default_scaling_strategy(self, strategy: Any) -> None:
        """Set the scaling of every stage that sets none.

        Args:
            strategy: a scaling strategy.

        Raises:
            ConfigurationError: when it is not a strategy.
        """
        self.configure_default(scaling=as_strategy(strategy, "strategy"))

    async def start(self) -> None:
        """Start a run of the producer in the background; :meth:`wait` ends it.

        Raises:
            HeadraceError: when the flow is already running.
        """
        if self._run is not None or (self._task is not None and not self._task.done()):
            raise HeadraceError("the flow is already running")
        run = self._begin(output=False)
        # start_task: a task cancelled before its first step (a sweep over all_tasks())
        # still ends its run, so the flow runs again and drain()/aclose() return
        self._task = start_task(asyncio.get_running_loop(), self._background(run, self._producer))
        await asyncio.sleep(0)

    async def _background(self, run: Run, source: object) -> FlowStats | _Interrupt:
        # The run of start() has no caller until wait(): KeyboardInterrupt and SystemExit
        # must not escape its task into the event loop; wait() raises them.
        try:
            try:
                await first_step()  # where start_task leaves it: inside the try
            except asyncio.CancelledError:
                # cancelled before the run began, as a cancel later would end it: wait()
                # raises CancelledError, and the flow is free for the next run
                try:
                    await run.teardown()
                finally:
                    self._finish(run)
                raise
            return await self._execute(run, source)
        except (KeyboardInterrupt, SystemExit) as exc:
            return _Interrupt(exc)

    async def wait(self) -> FlowStats:
        """Wait for the run :meth:`start` began.

        Returns:
            The final stats.

        Raises:
            HeadraceError: when :meth:`start` was not called.
        """
        task = self._task
        if task is None:
            raise HeadraceError("wait() without start()")
        try:
            result = await task
        finally:
            if task.done():
                self._task = None
        if isinstance(result, _Interrupt):
            raise result.error
        return result

    # -- running -------------------------------------------------------------------------
    def _begin(self, *, output: bool) -> Run:
        if self._closed:
            raise FlowClosed("the flow is closed and starts no new run")
        if self._run is not None:
            raise HeadraceError("the flow is already running; a Flow runs once at a time")
        try:
            run = Run(self._plan(), handler=None, listeners=self._listeners, output=output)
        except asyncio.CancelledError as exc:  # from a queue factory: never a cancellation
            raise user_cancelled(exc) from exc
        self._run = run
        return run

    async def _setup(
        self, run: Run, stack: contextlib.AsyncExitStack, source: object, *, push: bool = False
    ) -> None:
        # The user code run before the run's tasks exist (the handler's context manager, a
        # source factory, strategies' initial_workers()) runs in the caller's task.
        try:
            await self._open_handler(run, stack)
            run.start(None if push else normalize_source(source), push=push)
        except asyncio.CancelledError as exc:
            if being_cancelled():
                raise
            raise user_cancelled(exc) from exc

    async def _open_handler(self, run: Run, stack: contextlib.AsyncExitStack) -> None:
        if self._handler is None:
            return
        form, handler = self._handler
        if form is Form.CM:
            handler = await stack.enter_async_context(handler())
            if not callable(handler):
                raise TypeError(
                    "the error handler's context manager must give the async handler, got "
                    f"{safe_repr(handler)}"
                )
            form = handler_form(handler)
        run.handler = adapt(form, handler)

    async def _execute(self, run: Run, source: object, *, push: bool = False) -> FlowStats:
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await self._setup(run, stack, source, push=push)
                    await run.done
                finally:
                    await run.teardown()
        except asyncio.CancelledError as exc:
            if being_cancelled():
                raise
            # raised by the handler's context manager on exit
            raise user_cancelled(exc) from exc
        finally:
            self._finish(run)
        if run.error is not None:
            raise run.error
        return run.stats()

    def _finish(self, run: Run) -> None:
        if self._run is run:
            self._last = run.stats()
            self._run = None

    async def run(self, source: Any = None) -> FlowStats:
        """Run the flow over ``source`` and return its stats.

        Args:
            source: an async generator function, an async iterable, an iterable, or
                ``None`` (trigger mode: ``None`` items until ``drain()`` or ``stop()``).

        Returns:
            The final :class:`FlowStats`.

        Raises:
            HeadraceError: when the flow is already running.
            TypeError: for a source of another kind.
            Exception: the first stage/source/context manager error when there is no
                error handler, or the handler's own exception.
        """
        run = self._begin(output=False)
        return await self._execute(run, source)

    async def iterate(self, source: Any = None) -> AsyncGenerator[Out, None]:
        """Run the flow and yield what leaves the last stage.

        Close the generator (``contextlib.aclosing``) to stop the run early: workers are
        cancelled and every per-worker context manager exits.

        Args:
            source: as for :meth:`run`.

        Yields:
            Each output of the last stage.

        Raises:
            HeadraceError: when the flow is already running.
            Exception: as for :meth:`run`.
        """
        run = self._begin(output=True)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await self._setup(run, stack, source)
                    out = run.output
                    assert out is not None
                    while True:
                        if out.size:
                            item = out.take()
                        else:
                            item = await out.wait()
                            if item is EOF:
                                source = run.source
                                if source is not None and source.task and not run.ended:
                                    # a source cut by a Last may still be closing
                                    await asyncio.wait([source.task])
                                break
                            if isinstance(item, Finals):
                                for value in item.values:
                                    run.tally.completed += 1
                                    if isinstance(value, Tracked):
                                        yield cast("Out", value.item)
                                        finish(value)  # the consumer came back for more
                                    else:
                                        yield cast("Out", value)  # (typed by flow())
                                continue
                        run.tally.completed += 1
                        if isinstance(item, Tracked):
                            yield cast("Out", item.item)
                            finish(item)  # the consumer came back for more
                        else:
                            yield cast("Out", item)
                finally:
                    await run.teardown()
        finally:
            self._finish(run)
        if run.error is not None:
            raise run.error

    @contextlib.asynccontextmanager
    async def push(self) -> AsyncIterator[PushHandle[In]]:
        """Run the flow fed by hand: ``async with f.push() as h: await h.send(x)``.

        Leaving the block normally completes the stream and waits until every sent item
        is finished and every worker closed; leaving it by an exception stops the run.

        Yields:
            A :class:`PushHandle`.

        Raises:
            HeadraceError: when the flow is already running.
            Exception: as for :meth:`run`, when a stage error aborted the run.
        """
        run = self._begin(output=False)
        handle: PushHandle[In] = PushHandle(run)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await self._setup(run, stack, None, push=True)
                    try:
                        yield handle
                    except BaseException as exc:
                        handle._completed = True
                        if not (isinstance(exc, FlowClosed) and run.error is not None):
                            run.stop()
                            raise
                        # send() found the run aborted: its error is raised below, as
                        # is (its own cause kept)
                    else:
                        await handle.complete()
                        await run.done
                finally:
                    handle._completed = True
                    await run.teardown()
        finally:
            self._finish(run)
        if run.error is not None:
            raise run.error

    async def drain(self, timeout: float | None = None) -> FlowStats:
        """End the current run gracefully: stop pulling, finish everything accepted.

        A source awaiting its next item is cancelled; an item it already yielded is never
        lost. Returns at once when no run is active (or when called from the run itself,
        or during :meth:`iterate`, whose consumer must keep reading).

        Args:
            timeout: the longest to wait for the run to finish, in seconds (loop clock);
                ``None`` waits as long as it takes. On expiry the run goes on draining
                (:meth:`stop` ends it at once).

        Returns:
            The stats (final when the run ended).

        Raises:
            ConfigurationError: for a ``timeout`` that is not a number ``>= 0``.
            GuardTimeout: the run had not finished after ``timeout`` (a ``TimeoutError``).
        """
        limit = check_optional_number("timeout", timeout, ge=0, finite=False)
        run = self._run
        if run is None:
            return self.stats()
        run.drain()
        if run.output is not None or run.is_own_task():
            return run.stats()
        if limit is None:
            await run.finished.wait()
            return run.stats()

        def expired() -> GuardTimeout:
            return GuardTimeout(
                f"drain() did not finish within {limit:g}s; the run goes on draining",
                timeout=limit,
            )

        await Deadline(limit, expired).run(run.finished.wait())
        return run.stats()

    async def stop(self) -> None:
        """End the current run at once: cancel in-flight work, discard queued items.

        Returns promptly, even while the source is blocked; discarded items are counted.
        """
        run = self._run
        if run is None:
            return
        run.stop()
        if run.is_own_task():
            return
        await run.teardown()

    # -- closing ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: the flow starts no new run."""
        return self._closed

    async def aclose(self) -> None:
        """Close the flow for good (the family's one ``aclose()``; idempotent).

        New runs (``run``, ``start``, ``iterate``, ``push``) raise
        :class:`FlowClosed`. A run in progress is drained, not stopped: the source is not
        pulled any more, and everything already accepted goes through to the sink; this
        returns once it has (a run of :meth:`start` is left for :meth:`wait` to collect).
        Called from the run itself, or while :meth:`iterate` runs (its consumer must keep
        reading), it drains without waiting. Then pending async listeners are awaited
        (under a deadline, ``asyncio.timeout``, those still running are cancelled).
        ``stats()`` and ``add_listener()`` keep working.
        """
        self._closed = True
        run = self._run
        inside = run is not None and run.is_own_task()  # a worker, the source, a handler
        if run is not None:
            run.drain()
            if run.output is None and not inside:
                await run.finished.wait()
        task = self._task
        if task is not None and task is not asyncio.current_task() and not inside:
            await asyncio.wait((task,))  # (from inside, it waits for this very task)
        await self._listeners.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- observing -------------------------------------------------------------------------
    def stats(self) -> FlowStats:
        """Return the stats: live during a run, the last run's after it.

        Returns:
            A frozen :class:`FlowStats`.
        """
        if self._run is not None:
            return self._run.stats()
        if self._last is not None:
            return self._last
        return FlowStats(
            stages=MappingProxyType({name: StageStats(name) for name in self.stage_names})
        )

    def snapshot(self) -> FlowStats:
        """The same as :meth:`stats`.

        Returns:
            A frozen :class:`FlowStats`.
        """
        return self.stats()

    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self._run is not None

    def dump(self, *, mode: str = "structure", format: str = "text") -> str:
        """Describe the flow: its structure, or its stats.

        Args:
            mode: ``"structure"`` or ``"stats"``.
            format: ``"text"``, ``"json"`` or ``"mermaid"`` (structure only).

        Returns:
            The description.

        Raises:
            ValueError: for an unknown mode or format.
        """
        return dump(self._plan(), self.stats(), mode, format)

    def __repr__(self) -> str:
        return f"<Flow {' -> '.join(self.stage_names) or '(empty)'}>"


class _Interrupt:
    """A KeyboardInterrupt/SystemExit of a background run, carried to :meth:`Flow.wait`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
