"""The source task: pulls items into the first stage; drain-safe and cancel-safe."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from headrace_core.lowlevel import being_cancelled
from headrace_flow._errors import Dropped, DropReason, SourceError
from headrace_flow._queues import Channel
from headrace_flow._stage_run import Aborted, StageRun

if TYPE_CHECKING:
    from headrace_flow._run import Run


#: Items the source task puts at most before it yields to the loop once: a source that
#: never waits (a sync iterable, an async generator that awaits nothing, an unbounded
#: queue) must not freeze the loop, so stop(), drain() and timeouts can run.
YIELD_EVERY = 64


async def pull_source(run: Run, source: Any) -> None:
    try:
        await _pull(run, source)
    except Aborted:
        pass
    except BaseException as exc:  # KeyboardInterrupt & co. end the run, never lost
        if isinstance(exc, asyncio.CancelledError) and being_cancelled():
            raise
        run.abort(exc)


async def _pull(run: Run, source: Any) -> None:
    first = run.stages[0]
    ch = first.input
    dynamic = first.dynamic
    it: Any = None
    try:
        if source is None:
            while not run.draining:
                run.accepted += 1
                await source_put(run, first, ch, None, dynamic)
                if not ch.maxsize:
                    await asyncio.sleep(0)
        elif hasattr(source, "__aiter__"):
            it = source.__aiter__()
            anext_ = it.__anext__
            n = 0
            while not run.draining:
                run.source_pulling = True
                try:
                    item = await anext_()
                except StopAsyncIteration:
                    break
                finally:
                    run.source_pulling = False
                run.accepted += 1
                if run.source_cut:
                    await run.report(
                        Dropped(item, "<source>", DropReason.UPSTREAM_TERMINATED, run.loop.time())
                    )
                    break
                await source_put(run, first, ch, item, dynamic)
                n += 1
                if n >= YIELD_EVERY:
                    n = 0
                    await asyncio.sleep(0)
        else:
            n = 0
            for item in source:
                if run.draining:
                    break
                run.accepted += 1
                await source_put(run, first, ch, item, dynamic)
                n += 1
                if n >= YIELD_EVERY:
                    n = 0
                    await asyncio.sleep(0)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        assert task is not None
        if not task.cancelling():
            # raised by the source itself, not a cancellation: the source's failure
            await source_failed(run, exc)
        elif (run.source_cancel or run.source_cut) and not run.ended and task.cancelling() <= 1:
            task.uncancel()
            run.source_cancel = False
        else:
            raise
    except Exception as exc:
        await source_failed(run, exc)
    except Aborted:
        pass
    except BaseException as exc:  # KeyboardInterrupt & co.: the run ends with them
        run.abort(exc)  # (before the source counts as closed, which may end the run)
    finally:
        try:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            await source_failed(run, exc)  # a source that cannot close failed
        except Aborted:
            pass
        except BaseException as exc:
            run.abort(exc)
        finally:
            run.close_source()


async def source_failed(run: Run, exc: BaseException) -> None:
    if not run.ended:
        with contextlib.suppress(Aborted):
            await run.report(SourceError(exc, run.loop.time()))


async def source_put(run: Run, first: StageRun, ch: Channel, item: Any, dynamic: bool) -> None:
    if ch.try_put(item):
        if dynamic:
            run.scale(first, tick=False, enqueue=True)
        return
    while True:
        try:
            await ch.put(item)
            break
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if run.ended or task is None or task.cancelling() > 1:
                raise
            if run.source_cut:
                # a downstream Last(value) cut the stream: the held item is dropped
                task.uncancel()
                run.source_cancel = False
                await run.report(
                    Dropped(item, "<source>", DropReason.UPSTREAM_TERMINATED, run.loop.time())
                )
                return
            if run.source_cancel:
                # drain() cancelled the pull, but the generator had already yielded:
                # never lose an item the source gave us
                task.uncancel()
                run.source_cancel = False
                continue
            raise
    if dynamic:
        run.scale(first, tick=False, enqueue=True)


def normalize_source(source: Any) -> Any:
    """Turn what ``run()`` accepts into an iterable, async iterable, or ``None``.

    Raises:
        TypeError: for anything else.
    """
    if source is None:
        return None
    if inspect.isasyncgenfunction(source):
        return source()
    if hasattr(source, "__aiter__") or isinstance(source, Iterable):
        return source
    if callable(source):
        result = source()
        if hasattr(result, "__aiter__") or isinstance(result, Iterable):
            return result
        if inspect.iscoroutine(result):
            result.close()
    raise TypeError(
        "run() takes an async generator function, an async iterable, an iterable or None, "
        f"got {source!r}"
    )
