"""Stages that run a synchronous function in worker processes or in threads.

Each of the stage's async workers owns one process (or one thread): the stage is a
per-worker context manager (see :func:`stage`), so the processes start with the run,
scale with the workers, and are shut down on every exit path: the end of the run, a
drain, ``stop()``, a cancel, a failure. An item whose call is cancelled (``stop()``, the
stage's ``timeout=``, a cancel) kills the process running it; the worker's next item gets
a fresh one, so no call is ever left running. A process that dies fails its item with
:class:`ProcessStageError` and is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, TypeVar, final

from headrace_core import HeadraceError
from headrace_core.lowlevel import callable_name, check_int, safe_repr
from headrace_flow._stages import Stage, stage

__all__ = ["ProcessStageError", "process_stage", "thread_stage"]

A = TypeVar("A")
B = TypeVar("B")


@final
class ProcessStageError(HeadraceError):
    """A process stage could not run an item.

    Its process died, or the item (or the result) could not be sent between processes.
    The item's own errors are raised as they are.

    Attributes:
        stage: the stage's name.
    """

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """The child process: call ``fn`` on each item received, send back its outcome."""
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(item, tuple):  # the stop message (items come as 1-tuples)
            return
        try:
            result: tuple[bool, Any] = (True, fn(item[0]))
        except BaseException as exc:  # the item's outcome, KeyboardInterrupt included
            result = (False, exc)
        try:
            conn.send(result)
        except Exception as exc:  # a result or an error that cannot be pickled
            conn.send((None, f"{type(exc).__name__}: {exc}"))


class _Child:
    """One worker's process and the pipe to it (started on first use, replaced on loss)."""

    __slots__ = ("_conn", "_context", "_fn", "_name", "_process")

    def __init__(self, context: Any, fn: Callable[[Any], Any], name: str) -> None:
        self._context = context
        self._fn = fn
        self._name = name
        self._process: Any = None
        self._conn: Connection | None = None

    def start(self) -> Connection:
        """Start the process (with the worker: the pool starts with the run)."""
        parent: Connection
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child, self._fn), name=f"headrace-flow:{self._name}"
        )
        process.daemon = True
        process.start()
        child.close()
        self._process, self._conn = process, parent
        return parent

    async def call(self, item: Any) -> Any:
        conn = self._conn
        if conn is None:
            conn = self.start()
        try:
            payload = pickle.dumps((item,))
        except Exception as exc:
            raise ProcessStageError(
                f"stage {self._name!r}: the item cannot be sent to a worker process "
                f"({type(exc).__name__}: {exc})",
                stage=self._name,
            ) from exc
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        try:
            conn.send_bytes(payload)
            loop.add_reader(fd, readable)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            ok, value = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            process = self._process
            self.kill()  # reaps it: its exit code is known after this
            code = process.exitcode if process is not None else None
            raise ProcessStageError(
                f"stage {self._name!r}: its worker process died (exit code {code})",
                stage=self._name,
            ) from exc
        except BaseException:
            self.kill()  # cancelled (stop, timeout): the call must not go on running
            raise
        if ok is None:
            raise ProcessStageError(
                f"stage {self._name!r}: the result cannot be sent back ({value})",
                stage=self._name,
            )
        if not ok:
            raise value
        return value

    def kill(self) -> None:
        """End the process now (the next call starts a new one); it is reaped here."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None and process.is_alive():
            process.kill()
        if process is not None:
            process.join()


def process_stage(
    fn: Callable[[A], B],
    *,
    workers: int = 1,
    name: str | None = None,
    **options: Any,
) -> Stage[A, B]:
    """A stage that calls a synchronous, picklable ``fn(item)`` in worker processes.

    Each of the stage's ``workers`` owns one process (start method ``spawn``), started
    when the run starts its worker and shut down when the worker retires or the run ends
    (however it ends). An item whose call is cancelled (``stop()``, the stage's
    ``timeout=``, a cancel of the run) kills its process; the next item gets a new one.
    ``fn``'s exceptions reach the flow's error policy as they are; a process that dies,
    or an item or result that cannot be pickled, raises :class:`ProcessStageError`.

    Args:
        fn: a synchronous function of one item, importable by name (a module-level
            function: it is pickled to the worker processes).
        workers: the number of processes (and of the stage's workers), ``>= 1``.
        name: the stage's name (default: ``fn``'s name).
        **options: :func:`stage`'s other options (``queue_size``, ``ordered``,
            ``retries``, ``timeout``, ...), except ``scaling``.

    Returns:
        A :class:`Stage` for :func:`flow`.

    Raises:
        ConfigurationError: for a bad option (naming it).
        TypeError: when ``fn`` is not callable, is a coroutine function, or cannot be
            pickled (the message names the stage).
    """
    label = _check_sync("process_stage", fn, name)
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(
            f"process_stage {label!r}: {callable_name(fn)} cannot be pickled to a worker "
            f"process ({type(exc).__name__}: {exc}); use a module-level function"
        ) from exc
    check_int("workers", workers, ge=1)
    context = multiprocessing.get_context("spawn")

    @contextlib.asynccontextmanager
    async def worker() -> AsyncIterator[Callable[[A], Awaitable[B]]]:
        child = _Child(context, fn, label)
        child.start()
        try:
            yield child.call
        finally:
            child.kill()  # idle between items: nothing of it is lost, and no await here

    worker.__name__ = label
    worker.__qualname__ = label
    return stage(worker, name=label, workers=workers, **options)


def thread_stage(
    fn: Callable[[A], B],
    *,
    workers: int = 1,
    name: str | None = None,
    **options: Any,
) -> Stage[A, B]:
    """A stage that calls a blocking ``fn(item)`` in ``workers`` threads of its own.

    For blocking I/O without an async client: each of the stage's workers owns one
    thread (``asyncio.to_thread`` semantics, bounded by ``workers`` and apart from the
    loop's default executor). A thread cannot be interrupted: a call cancelled by
    ``stop()`` or a timeout is abandoned (the worker moves on at once, the thread
    finishes the call on its own and its result is dropped).

    Args:
        fn: a blocking function of one item.
        workers: the number of threads (and of the stage's workers), ``>= 1``.
        name: the stage's name (default: ``fn``'s name).
        **options: :func:`stage`'s other options, except ``scaling``.

    Returns:
        A :class:`Stage` for :func:`flow`.

    Raises:
        ConfigurationError: for a bad option (naming it).
        TypeError: when ``fn`` is not callable or is a coroutine function.
    """
    label = _check_sync("thread_stage", fn, name)
    check_int("workers", workers, ge=1)

    @contextlib.asynccontextmanager
    async def worker() -> AsyncIterator[Callable[[A], Awaitable[B]]]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"headrace-flow:{label}")

        async def call(item: A) -> B:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, fn, item)

        try:
            yield call
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    worker.__name__ = label
    worker.__qualname__ = label
    return stage(worker, name=label, workers=workers, **options)


def _check_sync(kind: str, fn: object, name: str | None) -> str:
    if not callable(fn):
        raise TypeError(f"{kind}() takes a function of one item, got {safe_repr(fn)}")
    if asyncio.iscoroutinefunction(fn):
        raise TypeError(f"{kind}() takes a synchronous function; use stage() for {safe_repr(fn)}")
    if name is not None:
        return name  # stage() checks it
    label = getattr(fn, "__name__", None)
    return label if isinstance(label, str) and label else type(fn).__name__
