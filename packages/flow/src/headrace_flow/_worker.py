"""A stage's worker: one loop over the stage's input, and a handler per stage kind."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, Final, TypeAlias, cast

from headrace_core.lowlevel import being_cancelled, safe_repr
from headrace_flow._calls import ItemCall, make_call
from headrace_flow._channel import EOF, RETIRE, Channel, Finals, Numbered
from headrace_flow._errors import Dropped, DropReason, TransformerError
from headrace_flow._lineage import Tracked, batch_of, carry, finish, spread, unwrap
from headrace_flow._markers import DROP, Last
from headrace_flow._plan import Kind
from headrace_flow._reorder import HOLE, Outputs, Reorder
from headrace_flow._stages import is_async_gen_callable
from headrace_flow._state import Aborted, Engine, StageRun, note

#: A fan-out stage's function (the user's async generator function).
FanOut: TypeAlias = Callable[[object], AsyncGenerator[object, None]]
#: A kind's handler of one entry (``STOP`` when the worker must leave, else ``NOTHING``),
#: or a map stage's item function (its result, which the loop routes).
Handle: TypeAlias = Callable[[object], Awaitable[object]]
#: Handles one final item (see ``Finals``).
HandleFinal: TypeAlias = Callable[[object], Awaitable[None]]


class Outcome(enum.Enum):
    """What a handler (or a release) tells the loop."""

    NOTHING = "nothing"
    """The entry is done (its outputs went on, or it had none)."""

    STOP = "stop"
    """The worker must leave: the stream ended here (``Last``), or the stage was cut."""


NOTHING: Final = Outcome.NOTHING
STOP: Final = Outcome.STOP


class _Batch:
    """The batch a ``batched`` stage's worker is filling."""

    __slots__ = ("deadline", "final", "items", "max_wait", "size")

    def __init__(self, size: int, max_wait: float | None) -> None:
        self.size = size
        self.max_wait = max_wait
        self.items: list[object] = []
        self.deadline = 0.0  # loop time, from the batch's first item
        self.final = False  # it holds a final item: it goes out as the final output


class Worker:
    """One worker task of a stage.

    :meth:`run` is the task: it enters the stage's per-worker context manager if it has
    one, then runs :meth:`_loop`, the one loop every kind shares: leave when the stage
    retires the worker or is cut, take the next entry (or wait for it), give it to the
    handler of the stage's kind, and on ``Finals`` wait to be the stage's last worker and
    give each final item to the kind's final handler. A map stage's handler is its item
    function, whose result the loop routes itself (in input order for an ordered stage);
    the other kinds' handlers (``_fan_out``, ``_fan_out_ordered``, ``_route``,
    ``_batch``) do their kind's work on one entry and route what comes of it.
    """

    __slots__ = (
        "batch",
        "call",
        "dynamic",
        "engine",
        "gen",
        "gone",
        "live",
        "order",
        "out",
        "scaled",
        "st",
        "tally",
    )

    call: ItemCall
    gen: FanOut
    order: Reorder
    batch: _Batch

    def __init__(self, engine: Engine, st: StageRun) -> None:
        self.engine = engine
        self.st = st
        self.live = st.live
        self.tally = engine.tally
        self.dynamic = st.scaler.dynamic
        self.out = st.out
        # the stage behind ``out`` when it scales on enqueue events
        self.scaled = st.out_stage if st.out_stage and st.out_stage.scaler.dynamic else None
        self.gone = False  # counted out before it served (its context manager failed)

    async def run(self) -> None:
        """Serve the stage until the worker retires, its input ends or the run ends."""
        st = self.st
        engine = self.engine
        try:
            if st.plan.kind is Kind.CM:
                await self._in_context()
            else:
                await self._serve(st.plan.target)
        except Aborted:
            pass
        except asyncio.CancelledError as exc:
            if not being_cancelled():  # raised by user code (a context manager's exit)
                note(exc, f"raised in flow stage {st.name!r}")
                engine.abort(exc)
            elif not engine.ended and not st.cut:
                # neither the run's end nor a Last's cut: someone else cancelled the task
                # (between items, or as it handed one on)
                engine.cancelled_outside(st, exc)
        except BaseException as exc:  # a failing __aexit__, or KeyboardInterrupt & co.
            note(exc, f"raised in flow stage {st.name!r}")
            engine.abort(exc)
        finally:
            st.tasks.discard(asyncio.current_task())
            if self.gone:
                engine.maybe_finish(st)
            else:
                engine.worker_exit(st)

    async def _in_context(self) -> None:
        st = self.st
        failure: BaseException | None = None
        cm: Any = None  # the user's context manager
        fn: Any = None  # and the item function it gives
        try:
            cm = st.plan.target()
            enter = getattr(cm, "__aenter__", None)
            if enter is None or not callable(getattr(cm, "__aexit__", None)):
                raise TypeError(
                    f"the context manager factory of flow stage {st.name!r} returned "
                    f"{safe_repr(cm)}, not an async context manager"
                )
            fn = await enter()
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            failure = exc
        if failure is not None:
            # this worker is gone before it started: count it out now, so that
            # concurrent failures see the true number of workers left
            st.live.workers -= 1
            self.gone = True
            await self._context_failed(failure)
            return
        try:
            if not callable(fn):
                raise TypeError(
                    f"the context manager of flow stage {st.name!r} gave "
                    f"{safe_repr(fn)}; its __aenter__ must return the async item function"
                )
            await self._serve(fn)
        finally:
            # The per-worker context manager always exits cleanly: item errors are
            # routed per item, and a stop is not the resource's failure.
            await cm.__aexit__(None, None, None)

    async def _context_failed(self, exc: BaseException) -> None:
        st = self.st
        engine = self.engine
        now = engine.loop.time()
        st.live.errors += 1
        st.live.last_error = now
        try:
            await engine.report(TransformerError(None, exc, st.name, now))
        except Aborted:
            return
        ch = st.input
        if st.live.workers <= 0 and not (ch.closed and not ch.pending()):
            # never leave a stage without workers while items may wait
            note(exc, f"flow stage {st.name!r} has no worker left (context manager failed)")
            engine.abort(exc)

    def _serve(self, fn: Any) -> Coroutine[Any, Any, None]:
        """The loop with the handler of the stage's kind (``fn``: its item function).

        A plain function returning the loop's coroutine: the task awaits the loop
        directly, one frame less to pass through at every resume (the hot path).
        """
        st = self.st
        kind = st.plan.kind
        ch = st.input
        tracked = self.engine.tracked
        if kind is Kind.ROUTER:
            self.call = st.call or fn
            if tracked:
                self.call = unwrap(self.call)
            return self._loop(ch, self._route, self._route_final, maps=False)
        if kind is Kind.BATCHED:
            batching = st.plan.batching
            assert batching is not None
            self.batch = _Batch(batching.size, batching.max_wait)
            return self._loop(
                ch,
                self._batch,
                self._batch_final,
                maps=False,
                wait=self._batch_wait,
                end=self._flush_rest,
            )
        if st.order is not None:
            self.order = st.order
        if is_async_gen_callable(fn):
            self.gen = spread(fn) if tracked else fn
            handle = self._fan_out if st.order is None else self._fan_out_ordered
            return self._loop(ch, handle, self._fan_out_final, maps=False)
        self.call = make_call(st.name, st.plan.calls, fn) if kind is Kind.CM else st.call or fn
        if tracked:
            self.call = carry(self.call)
        # a map stage's handler is its item function: the loop routes its result
        return self._loop(ch, self.call, self._map_final, maps=True)

    # -- the loop ----------------------------------------------------------------------
    async def _loop(
        self,
        ch: Channel,
        handle: Handle,
        final: HandleFinal,
        *,
        maps: bool,
        wait: Callable[[], Awaitable[object]] | None = None,
        end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Take entries, give each to the stage's handler, route the result, until told to leave.

        It leaves when the stage's target drops below its worker count (retired), when
        the stage is cut, when the handler returns ``STOP``, or when the input ends
        (``EOF``, ``RETIRE``: then ``end`` runs). ``wait`` replaces the channel's wait
        (``batched`` flushes on its deadline meanwhile). ``Finals`` go to ``final``, one
        by one, once this is the stage's last worker.

        ``handle`` does the kind's work on the entry and routes what comes of it. With
        ``maps``, ``handle`` is a map stage's item function: the loop counts the call,
        and routes its result (an output, ``DROP``, ``Last(value)``, a failure), in
        input order for an ordered stage; no handler frame per item, the hot path,
        measured. An ordered stage with a FIFO input takes no entry past its window
        (see ``Reorder``): its input's gate holds them back.
        """
        st = self.st
        live = self.live
        scaler = st.scaler
        tally = self.tally
        engine = self.engine
        loop = engine.loop
        out = self.out
        scaled = self.scaled
        dynamic = maps and self.dynamic
        order = st.order if maps else None  # (the other handlers keep their own order)
        # the window bounds in-flight + held results; with a LIFO/priority queue the head
        # of the order may still wait in the queue, so only FIFO inputs bound it
        gated = st.order is not None and ch.fifo
        if gated:
            assert st.order is not None
            st.order.window(scaler.target or 1)  # (a new worker: the target may have moved)
        seq = 0
        while True:
            if live.workers > scaler.target or st.cut:
                return
            # (ch.ready() written out: the hot path)
            if ch.size and (not gated or ch.seq - ch.size < ch.gate):
                entry = ch.take()
            else:
                if wait is not None:
                    got = await wait()
                elif ch.closed and not ch.size:
                    got = ch.ended()
                else:
                    # (the channel's wait written out, ch.getter() too: no coroutine and no
                    # call per wait, the hot path)
                    fut = loop.create_future()
                    ch.getters.append(fut)
                    try:
                        got = await fut
                    except asyncio.CancelledError:
                        ch.abandon(fut)
                        raise
                if got is EOF or got is RETIRE:
                    break
                if got.__class__ is Finals:  # (no isinstance: the hot path)
                    # after every other item: the results go out after theirs
                    await self._alone()
                    assert isinstance(got, Finals)  # (for type checkers: rare, not hot)
                    for value in got.values:
                        await final(value)
                    continue
                entry = got
            if not maps:
                if await handle(entry) is STOP:
                    return
                continue
            # -- a map stage: the call, its failure, DROP and Last ---------------------------
            if order is not None:
                numbered: Any = entry  # (seq, item): unpacked with no cast, the hot path
                seq, entry = numbered
            live.busy += 1
            if dynamic:
                engine.scale(st, tick=False, enqueue=False)
            try:
                result = await handle(entry)
            except (Exception, asyncio.CancelledError) as exc:
                # a CancelledError the stage raised itself (the run is not being
                # cancelled) is the item's failure, like any other
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    self._cancelled(entry, exc)
                    raise
                live.busy -= 1
                if order is None:
                    await engine.failed_item(st, entry, exc)
                    continue
                order.held[seq] = HOLE
                await engine.failed_item(st, entry, exc)
                if await self._release() is STOP:
                    return
                continue
            live.busy -= 1
            live.processed += 1
            if order is not None:
                if self.st.cut:  # (read again) a Last released before this item meanwhile:
                    return  # it is discarded
                # (no test of ``emitting``: while a worker releases, ``released`` is the
                # number of an item it emits, which no other worker has)
                if seq != order.released or result is DROP or result.__class__ is Last:
                    if result is DROP:
                        self._filtered()
                        result = HOLE
                    held = order.held
                    held[seq] = result
                    # (_release's own first test made here: no coroutine for nothing to do)
                    if (
                        not order.emitting
                        and order.released in held
                        and await self._release() is STOP
                    ):
                        return
                    continue
                # the head of the line: it goes out at once (below), then what it unblocked
            elif result is DROP:
                self._filtered()
                continue
            elif result.__class__ is Last:
                await engine.last(st, cast("Last[object]", result).value)
                return
            # -- hand the output on ----------------------------------------------------------
            if out is None:
                tally.completed += 1
                if type(result) is Tracked:  # (finish() written out: the hot path)
                    result.ticket.done()
            elif not out.try_put(result):
                if order is None:
                    await out.park(result)
                else:
                    order.emitting = True  # nobody else releases while it waits for room
                    try:
                        await out.park(result)
                    finally:
                        order.emitting = False
            if scaled is not None:
                engine.scale(scaled, tick=False, enqueue=True)
            if order is not None:
                released = order.released + 1
                order.released = released
                if gated:
                    # (order.window() written out: the hot path)
                    ch.gate = released + (scaler.target or 1)
                    if ch.getters and ch.size:
                        ch.hand_out()
                # (nobody else is releasing: _release's first test made here)
                if released in order.held and await self._release() is STOP:
                    return
        if end is not None:
            await end()

    async def _alone(self) -> None:
        """Wait until this is the stage's last worker.

        The others finish their items and leave (the input is closed and empty): the
        final items are processed after everything else.
        """
        st = self.st
        while st.live.workers > 1:
            waiter: asyncio.Future[None] = self.engine.loop.create_future()
            st.final_waiter = waiter
            try:
                await waiter
            finally:
                st.final_waiter = None

    def _cancelled(self, item: object, exc: asyncio.CancelledError) -> bool:
        """The task is being cancelled while the stage's function processes ``item``.

        By the run (it has ended, or a ``Last`` cut the stage) nothing more is to do. By
        someone else, the run ends with an error and ``item`` counts as failed.

        Returns:
            Whether someone else cancelled it.
        """
        engine = self.engine
        if engine.ended or self.st.cut:
            return False
        engine.cancelled_outside(self.st, exc, item)
        return True

    # -- outputs -----------------------------------------------------------------------
    async def _emit(self, value: object) -> None:
        """Hand ``value`` to the next stage (waiting for room), or count it completed."""
        out = self.out
        if out is None:
            self.tally.completed += 1
            finish(value)
            return
        if not out.try_put(value):
            await out.park(value)
        if self.scaled is not None:
            self.engine.scale(self.scaled, tick=False, enqueue=True)

    def _pass_final(self, value: object) -> None:
        """Hand ``value`` on as a final output: after everything else the stage emits."""
        out = self.out
        if out is None:
            self.tally.completed += 1
            finish(value)
        else:
            out.add_final(value)

    async def _emit_final(self, value: object) -> None:
        self._pass_final(value)

    def _filtered(self) -> None:
        self.live.filtered += 1
        self.tally.filtered += 1

    async def _release(self) -> Outcome:
        """Emit held results of the ordered stage in number order, as far as they go.

        Returns:
            ``STOP`` when a released item returned ``Last`` (everything held after it is
            discarded), else ``NOTHING``.
        """
        order = self.order
        held = order.held
        if order.emitting or order.released not in held:
            return NOTHING
        order.emitting = True
        try:
            while order.released in held:
                result = held.pop(order.released)
                if isinstance(result, Last):
                    # (the stage is cut: its input is emptied and closed, its workers leave)
                    held.clear()
                    order.released += 1
                    order.emitting = False
                    await self.engine.last(self.st, result.value)
                    return STOP
                if isinstance(result, Outputs):
                    for value in result.values:
                        await self._emit(value)
                elif result is not HOLE:
                    await self._emit(result)
                order.released += 1
                order.window(self.st.scaler.target or 1)
        finally:
            order.emitting = False
        return NOTHING

    # -- map: async def f(x) -> y (the item calls are the loop's; see _loop) -----------
    async def _map_final(self, value: object) -> None:
        st = self.st
        live = self.live
        live.busy += 1
        try:
            result = await self.call(value)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                self._cancelled(value, exc)
                raise
            live.busy -= 1
            await self.engine.failed_item(st, value, exc)
            return
        live.busy -= 1
        live.processed += 1
        if result is DROP:
            self._filtered()
            return
        if isinstance(result, Last):
            result = result.value  # already the final item
        self._pass_final(result)

    # -- fan-out: async def f(x): yield ... ------------------------------------------------
    async def _spread(
        self, item: object, put: Callable[[object], Awaitable[None]]
    ) -> BaseException | None:
        """Run the fan-out function on ``item``, giving ``put`` each output.

        Returns:
            What the function raised (after the outputs it yielded before), or ``None``.
        """
        live = self.live
        tally = self.tally
        live.busy += 1
        if self.dynamic:
            self.engine.scale(self.st, tick=False, enqueue=False)
        count = 0
        try:
            outputs = self.gen(item)
            try:
                async for value in outputs:
                    if value is DROP or value.__class__ is Last:
                        raise TypeError(
                            f"fan-out stage {self.st.name!r} yielded {safe_repr(value)}; it yields "
                            "outputs (yield nothing to drop an item; return Last from a map "
                            "stage to end the run)"
                        )
                    count += 1
                    if count > 1:
                        tally.extra += 1  # one item in, one more unit out
                    await put(value)
            finally:
                await outputs.aclose()
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                if self._cancelled(item, exc) and count:
                    tally.extra += 1  # the outputs went on and the item failed
                raise
            live.busy -= 1
            if count:
                tally.extra += 1  # the outputs went on and the item failed
            return exc
        live.busy -= 1
        live.processed += 1
        if not count:
            self._filtered()
        return None

    async def _fan_out(self, item: object) -> Outcome:
        error = await self._spread(item, self._emit)
        if error is not None:
            await self.engine.failed_item(self.st, item, error)
        return NOTHING

    async def _fan_out_ordered(self, entry: object) -> Outcome:
        seq, item = cast("Numbered", entry)
        order = self.order
        outputs: list[object] = []

        async def hold(value: object) -> None:
            outputs.append(value)

        error = await self._spread(item, hold)
        # the outputs go out together, in the item's place (a failed item's too: the ones
        # it yielded before it failed)
        if error is None and self.st.cut:
            return STOP
        order.held[seq] = Outputs(outputs) if outputs else HOLE
        if error is not None:
            await self.engine.failed_item(self.st, item, error)
        return await self._release()

    async def _fan_out_final(self, value: object) -> None:
        error = await self._spread(value, self._emit_final)
        if error is not None:
            await self.engine.failed_item(self.st, value, error)

    # -- router: route(classifier, **arms) ----------------------------------------------
    async def _route(self, item: object) -> Outcome:
        await self._route_one(item, False)
        return NOTHING

    async def _route_final(self, value: object) -> None:
        await self._route_one(value, True)

    async def _route_one(self, item: object, final: bool) -> None:
        """Send ``item`` to the arm its label names (a final item as the arm's final one)."""
        st = self.st
        live = self.live
        engine = self.engine
        live.busy += 1
        try:
            label = await self.call(item)
            if label.__class__ is Last:
                # A classifier returns a label; ending the run is an arm's Last (as in
                # flowrhythm, this is the item's failure, for the error policy).
                raise TypeError(
                    f"router classifier {st.name!r} returned Last(...); a classifier "
                    "returns a label: return Last from an arm to end the run"
                )
            # a label that is not an arm's name (or not a str at all) goes to the default
            target = st.routes.get(label, st.default) if isinstance(label, str) else st.default
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                self._cancelled(item, exc)
                raise
            live.busy -= 1
            await engine.failed_item(st, item, exc)
            return
        live.busy -= 1
        live.processed += 1
        if target is None:
            self._filtered()
            await engine.report(Dropped(item, st.name, DropReason.ROUTER_MISS, engine.loop.time()))
        elif final:
            target.input.add_final(item)
        else:
            ch = target.input
            if not ch.try_put(item):
                await ch.park(item)
            if target.scaler.dynamic:
                engine.scale(target, tick=False, enqueue=True)

    # -- batched(size, max_wait=) ---------------------------------------------------------
    async def _batch(self, item: object) -> Outcome:
        await self._add(item)
        return NOTHING

    async def _batch_final(self, value: object) -> None:
        self.batch.final = True
        await self._add(value)

    async def _add(self, item: object) -> None:
        batch = self.batch
        batch.items.append(item)
        if len(batch.items) == 1 and batch.max_wait is not None:
            batch.deadline = self.engine.loop.time() + batch.max_wait
        if len(batch.items) >= batch.size:
            await self._flush()

    async def _batch_wait(self) -> object:
        """Wait for the next entry; flush the batch when its ``max_wait`` passes first."""
        batch = self.batch
        ch = self.st.input
        while batch.items and batch.max_wait is not None:
            try:
                async with asyncio.timeout_at(batch.deadline):
                    return await ch.wait()
            except TimeoutError:
                await self._flush()
                if self.st.cut:
                    return EOF
        return await ch.wait()

    async def _flush(self) -> None:
        batch = self.batch
        items = batch.items
        batch.items = []
        self.tally.extra -= len(items) - 1  # many items in, one unit out
        self.live.processed += 1
        unit: object = batch_of(items) if self.engine.tracked else items
        if batch.final:
            self._pass_final(unit)
        else:
            await self._emit(unit)

    async def _flush_rest(self) -> None:
        # a partial batch is flushed at the end; cancelled, its units stay counted as
        # discarded
        if self.batch.items:
            await self._flush()
