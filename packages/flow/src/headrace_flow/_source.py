"""The source task: pulls items into the first stage; drain-safe and cancel-safe."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterable, Iterable
from typing import Any, TypeAlias, cast

from headrace_core.lowlevel import being_cancelled, first_step, safe_repr, start_task
from headrace_flow._errors import Dropped, DropReason, SourceError
from headrace_flow._state import NO_ITEM, Aborted, Engine, StageRun

#: What a run pulls from: an iterable, an async iterable, or ``None`` (trigger mode).
Items: TypeAlias = "Iterable[object] | AsyncIterable[object] | None"

#: Items the source task puts at most before it yields to the loop once: a source that
#: never waits (a sync iterable, an async generator that awaits nothing, an unbounded
#: queue) must not freeze the loop, so stop(), drain() and timeouts can run.
YIELD_EVERY = 64


class Source:
    """The task that pulls a run's source into its first stage.

    ``drain()`` stops it between items (cancelling a pull that waits for the source,
    never losing an item the source already yielded); a ``Last`` cuts it (the item it
    holds is dropped, reported as ``Dropped``).
    """

    __slots__ = ("_cancelling", "_cut", "_pulling", "engine", "first", "task")

    def __init__(self, engine: Engine, first: StageRun) -> None:
        self.engine = engine
        self.first = first
        self.task: asyncio.Task[None] | None = None
        self._pulling = False  # waiting for the source's next item
        self._cancelling = False  # drain() cancelled the pull: not a cancellation of the run
        self._cut = False  # a Last ended the stream

    def start(self, items: Items) -> asyncio.Task[None]:
        """Start pulling ``items`` in a new task.

        ``start_task``: a task cancelled from outside before its first step still ends the
        run with an error, instead of a run that "succeeds" having pulled nothing.
        """
        self.task = start_task(self.engine.loop, self._run(items))
        return self.task

    def stop_pulling(self) -> None:
        """Stop at the next item; cancel a pull that waits for the source (drain)."""
        task = self.task
        if task is not None and not task.done() and self._pulling:
            self._cancelling = True
            task.cancel()

    def cut_off(self) -> None:
        """Stop pulling for good: a ``Last`` ended the stream."""
        self._cut = True
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _run(self, items: Items) -> None:
        engine = self.engine
        try:
            await first_step()  # where start_task leaves it: inside the try
            await self._pull(items)
        except Aborted:
            pass
        except BaseException as exc:  # KeyboardInterrupt & co. end the run, never lost
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                self._cancelled(exc)  # (before its first step; later ones are reported)
                raise
            engine.abort(exc)

    def _cancelled(self, exc: asyncio.CancelledError, item: object = NO_ITEM) -> None:
        """The task is being cancelled: by the run, or by someone else (the run ends).

        By the run (it has ended, or a ``Last`` cut the stream) nothing more is to do.
        ``item``: what the source had given and the task had not put yet.
        """
        engine = self.engine
        if not engine.ended and not self._cut:
            engine.cancelled_outside(None, exc, item)

    async def _pull(self, items: Items) -> None:
        engine = self.engine
        tally = engine.tally
        first = self.first
        ch = first.input
        dynamic = first.scaler.dynamic
        it: Any = None  # the user's iterator
        try:
            if items is None:
                while not engine.draining:
                    tally.accepted += 1
                    await self._put(None)
                    if not ch.maxsize:
                        await asyncio.sleep(0)
            elif (open_ := getattr(items, "__aiter__", None)) is not None:
                it = open_()
                anext_ = it.__anext__
                n = 0
                while not engine.draining:
                    self._pulling = True
                    try:
                        item = await anext_()
                    except StopAsyncIteration:
                        break
                    finally:
                        self._pulling = False
                    tally.accepted += 1
                    if self._cut:
                        await engine.report(
                            Dropped(
                                item, "<source>", DropReason.UPSTREAM_TERMINATED, engine.loop.time()
                            )
                        )
                        break
                    # (the hot path: _put's first step written out, measured)
                    if not ch.try_put(item):
                        await self._put(item)
                    elif dynamic:
                        engine.scale(first, tick=False, enqueue=True)
                    n += 1
                    if n >= YIELD_EVERY:
                        n = 0
                        await asyncio.sleep(0)
            else:
                assert isinstance(items, Iterable)
                n = 0
                for item in items:
                    if engine.draining:
                        break
                    tally.accepted += 1
                    # (the hot path: _put's first step written out, measured)
                    if not ch.try_put(item):
                        await self._put(item)
                    elif dynamic:
                        engine.scale(first, tick=False, enqueue=True)
                    n += 1
                    if n >= YIELD_EVERY:
                        n = 0
                        await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            assert task is not None
            if not task.cancelling():
                # raised by the source itself, not a cancellation: the source's failure
                await self._failed(exc)
            elif (self._cancelling or self._cut) and not engine.ended and task.cancelling() <= 1:
                task.uncancel()
                self._cancelling = False
            else:
                self._cancelled(exc)  # (before the source counts as closed, below)
                raise
        except Exception as exc:
            await self._failed(exc)
        except Aborted:
            pass
        except BaseException as exc:  # KeyboardInterrupt & co.: the run ends with them
            engine.abort(exc)  # (before the source counts as closed, which may end the run)
        finally:
            try:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await aclose()
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    self._cancelled(exc)
                    raise
                await self._failed(exc)  # a source that cannot close failed
            except Aborted:
                pass
            except BaseException as exc:
                engine.abort(exc)
            finally:
                engine.close_source()

    async def _failed(self, exc: BaseException) -> None:
        engine = self.engine
        if not engine.ended:
            with contextlib.suppress(Aborted):
                await engine.report(SourceError(exc, engine.loop.time()))

    async def _put(self, item: object) -> None:
        """Put ``item`` into the first stage, waiting for room."""
        engine = self.engine
        first = self.first
        ch = first.input
        while True:
            try:
                await ch.put(item)
                break
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if engine.ended or task is None:
                    raise
                if task.cancelling() > 1:
                    if not self._cut:
                        # drain() cancelled the pull and someone else the task: the item
                        # the source gave is not lost silently
                        self._cancelled(exc, item)
                    raise
                if self._cut:
                    # a downstream Last(value) cut the stream: the held item is dropped
                    task.uncancel()
                    self._cancelling = False
                    await engine.report(
                        Dropped(
                            item, "<source>", DropReason.UPSTREAM_TERMINATED, engine.loop.time()
                        )
                    )
                    return
                if self._cancelling:
                    # drain() cancelled the pull, but the generator had already yielded:
                    # never lose an item the source gave us
                    task.uncancel()
                    self._cancelling = False
                    continue
                self._cancelled(exc, item)  # someone else cancelled it: not lost silently
                raise
        if first.scaler.dynamic:
            engine.scale(first, tick=False, enqueue=True)


def normalize_source(source: object) -> Items:
    """Turn what ``run()`` accepts into an iterable, async iterable, or ``None``.

    Raises:
        TypeError: for anything else.
    """
    if source is None:
        return None
    items: Items
    if inspect.isasyncgenfunction(source):
        items = source()
        return items
    if hasattr(source, "__aiter__") or isinstance(source, Iterable):
        return cast("Items", source)
    if callable(source):
        result = source()
        if hasattr(result, "__aiter__") or isinstance(result, Iterable):
            return cast("Items", result)
        if inspect.iscoroutine(result):
            result.close()
    raise TypeError(
        "run() takes an async generator function, an async iterable, an iterable or None, "
        f"got {safe_repr(source)}"
    )
