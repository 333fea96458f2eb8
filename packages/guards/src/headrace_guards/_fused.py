"""A pipeline's consecutive ``[Retry] [CircuitBreaker] Timeout [Bulkhead]`` in one frame.

``pipeline(Retry(...), CircuitBreaker(), Timeout(...), Bulkhead(...))`` nests four
coroutines per call. :class:`Fused` runs such a run of guards in one coroutine instead:
each guard's ``call`` is transcribed in place, in the same order, under the same
``try`` nesting (so every counter, event, log record, lifecycle count, exception and its
``__context__``/``__cause__`` come out as with the guards nested), and everything but the
common path goes back to the guards' own methods: a breaker that is not on its fast path
runs the rest of the run under its own ``call()``, and a retry after the first attempt is
the guard's own loop over the rest of the run.

Two details differ in form only. A nested guard asks ``raise_if_not_async`` about the next
guard's ``call`` (an async callable: only the innermost guard judges ``fn``); the fused
run passes its own ``run``, as async. And it keeps the bulkhead's slots for the loop it
last ran on (``PerLoop.get`` per call is a loop lookup), and gives a slot back with
``release()`` only when a caller waits for one (without one, ``release()`` is a decrement).

Whatever changes in one of these guards' ``call`` must change here too; the tests in
``test_fused.py`` hold the fused and the nested pipelines to the same outcomes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, final

from headrace_core import Closed
from headrace_core.lowlevel import Deadlines
from headrace_guards._bulkhead import Bulkhead, _Slots
from headrace_guards._circuit import CircuitBreaker
from headrace_guards._circuit_state import MemoryState
from headrace_guards._common import now_of, raise_if_not_async
from headrace_guards._retry import _NOTHING, Retry
from headrace_guards._timeout import Timeout


@final
class Fused:
    """``[retry] [breaker] timeout [bulkhead]`` (outermost first) run in one frame.

    Not public: :class:`~headrace_guards.Pipeline` builds one for each such run of its
    guards (see :func:`fuse`); it has the ``call`` of a guard.
    """

    __slots__ = (
        "_after_breaker",
        "_after_retry",
        "_slots_of",
        "_state",
        "breaker",
        "bulkhead",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        retry: Retry | None,
        breaker: CircuitBreaker | None,
        timeout: Timeout,
        bulkhead: Bulkhead | None,
    ) -> None:
        self.retry = retry
        self.breaker = breaker
        self.timeout = timeout
        self.bulkhead = bulkhead
        # The breaker's in-process state (fuse() takes no store-backed breaker).
        self._state: MemoryState | None = None
        if breaker is not None:
            assert isinstance(breaker._local, MemoryState)
            self._state = breaker._local
        # The rest of the run below the retry, and below the breaker.
        self._after_retry = None if retry is None else Fused(None, breaker, timeout, bulkhead)
        self._after_breaker = None if breaker is None else Fused(None, None, timeout, bulkhead)
        # The bulkhead's slots on the timeout's loop, with the timeout's deadlines there:
        # the same deadlines, the same loop, the same slots (no loop lookup per call).
        self._slots_of: tuple[Deadlines[None], _Slots] | None = None

    def __repr__(self) -> str:
        guards = (self.retry, self.breaker, self.timeout, self.bulkhead)
        return f"Fused({', '.join(repr(g) for g in guards if g is not None)})"

    def call(
        self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` through the guards, as nested ``call``s would."""
        return self.run(fn, args, kwargs)

    async def run(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """:meth:`call` with the arguments as they are (a pipeline calls this)."""
        retry, state, timeout, bulkhead = self.retry, self._state, self.timeout, self.bulkhead
        # -- Retry.call, up to the outcome of the first attempt ------------------------------
        if retry is not None:
            rlife = retry._life
            if rlife.closed:
                raise rlife.refuse()
            rlife.running += 1
        try:
            start = 0.0
            if retry is not None:
                retry._calls += 1
                retry._attempts += 1
                if retry.deadline is not None:
                    start = now_of(retry._clock)
            error: Exception | None
            try:
                # -- CircuitBreaker.call: the fast path here, anything else in call() ----
                if state is not None and not state.fast:
                    result = await self._through_breaker(fn, args, kwargs)
                else:
                    gen = 0
                    if state is not None:
                        gen = next(state.tickets)
                    try:
                        # -- Timeout.call ---------------------------------------------------
                        tlife = timeout._life
                        if tlife.closed:
                            raise tlife.refuse()
                        tlife.running += 1
                        timeout._calls += 1
                        try:
                            loop = asyncio.get_running_loop()
                            deadlines = timeout._deadlines
                            if deadlines is None or deadlines.loop is not loop:
                                deadlines = timeout._bind()
                            cm = asyncio.Timeout(None)
                            entry: list[Any] = [loop.time() + timeout.seconds, cm, None]
                            entries = deadlines.entries
                            entries.append(entry)
                            if deadlines.handle is None:
                                deadlines.handle = loop.call_at(entry[0], deadlines.fire)
                            late = False
                            try:
                                async with cm:
                                    if bulkhead is None:
                                        result = await (
                                            fn(*args, **kwargs) if kwargs else fn(*args)
                                        )
                                    else:
                                        # -- Bulkhead.call (fuse() takes no store) -----------
                                        blife = bulkhead._life
                                        if blife.closed:
                                            raise blife.refuse()
                                        blife.running += 1
                                        try:
                                            decl = bulkhead._decl
                                            slots_of = self._slots_of
                                            if slots_of is not None and slots_of[0] is deadlines:
                                                slots = slots_of[1]
                                            else:
                                                slots = decl.slots.get(loop)
                                                self._slots_of = (deadlines, slots)
                                            if slots.in_flight < decl.limit and not slots.waiting:
                                                slots.in_flight += 1
                                            else:
                                                await bulkhead._wait(slots)
                                            try:
                                                result = await (
                                                    fn(*args, **kwargs) if kwargs else fn(*args)
                                                )
                                            except TypeError as exc:
                                                raise_if_not_async(fn, exc)
                                                raise
                                            finally:
                                                slots.completed += 1
                                                if slots.waiting:
                                                    decl.release(slots)
                                                else:  # release(), without a waiter
                                                    slots.in_flight -= 1
                                        finally:
                                            blife.running -= 1
                                            if not blife.running and blife.idle:
                                                blife.wake()
                            except TimeoutError as exc:
                                if not cm.expired():
                                    raise
                                result = await timeout._timed_out(exc, args, kwargs)
                            except TypeError as exc:
                                raise_if_not_async(fn if bulkhead is None else self.run, exc)
                                raise
                            else:
                                # The callee swallowed the cancellation and returned late?
                                late = entry[0] is None and cm.expired()
                            finally:
                                entry[1] = None
                                while entries and entries[0][1] is None:
                                    entries.popleft()
                            if late:
                                result = await timeout._timed_out(None, args, kwargs)
                        finally:
                            tlife.running -= 1
                            if not tlife.running and tlife.idle:
                                tlife.wake()
                    except BaseException as exc:
                        if state is not None:
                            state.fast_error(self.run, gen, exc)
                        raise
                    if state is not None:
                        state.budget -= 1
                        if not state.budget:
                            state.fast_success(gen)
            except Exception as exc:
                if retry is None:
                    raise
                if isinstance(exc, TypeError):
                    raise_if_not_async(self.run, exc)
                if not retry._retry_on(exc) or isinstance(exc, Closed):
                    raise
                error, result = exc, _NOTHING
            else:
                if retry is None:
                    return result
                predicate = retry.retry_on_result
                if predicate is None or not predicate(result):
                    return result
                error = None
            # Outside the ``except`` block, so later errors get no chained ``__context__``.
            assert self._after_retry is not None
            rest = functools.partial(self._after_retry.call, fn)
            return await retry._again(start, error, result, rest, args, kwargs)
        finally:
            if retry is not None:
                rlife = retry._life
                rlife.running -= 1
                if not rlife.running and rlife.idle:
                    rlife.wake()

    async def _through_breaker(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The rest of the run under the breaker's own ``call()`` (its general path)."""
        breaker, rest = self.breaker, self._after_breaker
        assert breaker is not None
        assert rest is not None
        return await breaker.call(functools.partial(rest.call, fn), *args, **kwargs)


def fuse(guards: Sequence[Any]) -> list[Any]:
    """Replace each run of ``[Retry] [CircuitBreaker] Timeout [Bulkhead]`` by a :class:`Fused`.

    A run has two guards or more, each of exactly that class (a breaker and a bulkhead
    without a store), in that order; the other guards are left as they are.

    Args:
        guards: a pipeline's guards, outermost first.

    Returns:
        The guards, each run replaced by its :class:`Fused`.
    """
    out: list[Any] = []
    i, n = 0, len(guards)
    while i < n:
        j = i
        retry = breaker = bulkhead = None
        if type(guards[j]) is Retry:
            retry, j = guards[j], j + 1
        if j < n and type(guards[j]) is CircuitBreaker and guards[j]._store is None:
            breaker, j = guards[j], j + 1
        if j < n and type(guards[j]) is Timeout:
            timeout, j = guards[j], j + 1
            if j < n and type(guards[j]) is Bulkhead and guards[j]._store is None:
                bulkhead, j = guards[j], j + 1
            if j - i >= 2:
                out.append(Fused(retry, breaker, timeout, bulkhead))
                i = j
                continue
        out.append(guards[i])
        i += 1
    return out
