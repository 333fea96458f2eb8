"""The shared state of one ``@batch`` function: lanes, batches, leading and routing.

The first caller of a window becomes the *leader*: it waits for the window, resumes its
own body with the batch's unique live items, and routes the bulk result to everybody.
Every other caller is a *follower*: it parks on a future. Because each follower's body
stays suspended at ``collect()`` until its result arrives, any follower can take over: if
the leader is cancelled, the next live caller resumes *its own* body with the items still
wanted and reruns the bulk call.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Final

from headrace_coalesce._collect import resume
from headrace_coalesce._lane import (
    DONE,
    OPEN,
    RUNNING,
    BatchBase,
    Lane,
    Options,
    admit,
    discard_if_idle,
    filled,
    finish,
    sleep0,
    start,
)
from headrace_coalesce._routing import as_error, describe, is_sequence, lookup, unhashable
from headrace_coalesce._stats import _Recorder, logging_events
from headrace_core.lowlevel import Lifecycle, PerLoop

__all__ = ["PROMOTE", "Batch", "Core", "close"]

PROMOTE: Final[Any] = object()  # a follower's future result: "you lead now"


class Batch(BatchBase):
    """One batch of one lane: its items, its callers and who leads it."""

    __slots__ = ("dead", "entries", "futs", "ids", "items", "keys", "leader")

    def __init__(
        self, lane: Lane, items: list[Any], keys: dict[Hashable, int] | None, ids: list[Any] | None
    ) -> None:
        # window state (see _lane.BatchBase; set inline: this runs once per batch)
        self.lane = lane
        self.state = OPEN
        self.expired = False
        self.granted = False
        self.queued = False
        self.wake: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.items = items  # unique items, call order
        self.keys = keys  # key -> entry (None: no de-duplication)
        self.ids = ids  # key(item) per entry (None: no key=)
        # per caller, call order: a follower's future (None for the first leader)
        self.futs: list[asyncio.Future[Any] | None] = [None]
        self.entries: list[int] | None = None  # caller -> entry; None: identity
        self.dead = 0  # callers cancelled (including leaders)
        self.leader = 0  # position of the caller that leads now (-1: none)


class _LoopState:
    __slots__ = ("lane", "lanes")

    def __init__(self, options: Options) -> None:
        self.lane = Lane(options)
        self.lanes: dict[Hashable, Lane] = {}


class Core:
    """Everything a ``BatchFunction`` and its bound copies share."""

    __slots__ = (
        "calls",
        "dedupe",
        "ended",
        "fn",
        "group_by",
        "inline_join",
        "key",
        "last",
        "last_entry",
        "life",
        "method",
        "name",
        "options",
        "per_loop",
        "plain_lane",
        "rec",
        "zero_config",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        options: Options,
        key: Callable[[Any], Hashable] | None,
        dedupe: bool,
        group_by: Callable[..., Hashable] | None,
    ) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or describe(fn)
        self.options = options
        self.key = key
        self.dedupe = dedupe
        self.group_by = group_by
        self.per_loop: PerLoop[_LoopState] = PerLoop(lambda: _LoopState(options))
        self.rec = _Recorder(self.name, "@batch")
        self.life = Lifecycle(f"@batch function {self.name}")
        # the calls made (``calls.value``) and those that ended: the difference is the calls
        # in flight, which aclose() waits for (the lifecycle's ``running``, one update less)
        self.calls = self.rec.calls
        self.ended = 0
        # the entry whose arrival fills a batch (max_size - 1), or -1: compared to an int
        self.last_entry = -1 if options.max_size is None else options.max_size - 1
        self.zero_config = not options.max_wait and options.max_concurrent is None
        self.plain_lane = group_by is None  # the loop's default lane serves unbound calls
        self.method = False  # set by BatchFunction.__set_name__ in a class body
        self.inline_join = key is None and dedupe  # items are their own keys
        # the last loop's default lane, checked through a weak reference (fast path)
        self.last: tuple[weakref.ReferenceType[asyncio.AbstractEventLoop], Lane] | None = None

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """End the open windows of ``loop``'s lanes now (the function was closed)."""
        for owner, state in self.per_loop.items():
            if owner is loop:
                for lane in (state.lane, *state.lanes.values()):
                    if lane.open is not None:
                        filled(lane.open)

    async def wait_idle(self) -> None:
        """Return once no call is in flight (``Lifecycle.wait_idle`` on this count)."""
        life = self.life
        while self.calls.value != self.ended:
            idle = life.idle
            if idle is None:
                idle = life.idle = asyncio.Event()
            await idle.wait()

    def default_lane(self, loop: asyncio.AbstractEventLoop) -> Lane:
        lane = self.per_loop.get(loop).lane
        self.last = (weakref.ref(loop), lane)
        return lane

    def lane_for(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Lane:
        """The lane of one call: per loop, and per instance and group when they apply.

        Raises:
            TypeError: when ``group_by`` returns an unhashable group key.
            Exception: what ``group_by`` raised.
        """
        if self.plain_lane and instance is None:  # the loop's default lane
            return self.default_lane(loop)
        state = self.per_loop.get(loop)
        group: Hashable = None
        if self.group_by is not None:
            if instance is None:
                group = self.group_by(*args, **kwargs)
            else:
                group = self.group_by(instance, *args, **kwargs)
        if instance is None and self.method and args:
            instance = args[0]  # Class.method(obj, ...): still per instance
        key = (None if instance is None else id(instance), group)
        lanes = state.lanes
        try:
            lane = lanes.get(key)
        except TypeError as exc:
            raise unhashable(
                f"group_by of @batch function {self.name} returned a value of type "
                f"{type(group).__qualname__}, which is unhashable; group_by must return a "
                "hashable group key",
                exc,
            ) from exc
        if lane is None:
            lane = lanes[key] = Lane(self.options, lanes, key, instance)
        return lane

    def open(self, lane: Lane, item: Any, loop: asyncio.AbstractEventLoop) -> Batch:
        """Open the lane's next batch with its first caller's item (slot 0, the leader).

        Raises:
            Exception: what ``key(item)``, ``hash`` or ``==`` raised; no batch is left open.
        """
        if self.inline_join:  # items are their own keys
            batch = Batch(lane, [item], {}, None)
            start(batch, loop)
            try:
                batch.keys[item] = 0  # type: ignore[index]
            except TypeError:  # unhashable: allowed, never de-duplicated
                pass
            except BaseException:
                finish(batch)  # nobody leads it: the lane opens a new one next time
                raise
            if not self.last_entry:  # max_size=1
                filled(batch)
            return batch
        batch = Batch(lane, [], {} if self.dedupe else None, [] if self.key is not None else None)
        start(batch, loop)
        try:
            self.join(batch, item)  # key(item), hash and == may raise (a first item: no duplicate)
        except BaseException:
            finish(batch)  # nobody leads it: the lane opens a new one next time
            raise
        return batch

    def join(self, batch: Batch, item: Any) -> None:
        """Add one caller's item (its future, if any, is appended by the caller)."""
        items = batch.items
        keys = batch.keys
        keyfn = self.key
        n = len(items)
        if keys is not None:
            k = item if keyfn is None else keyfn(item)
            try:
                entry = keys.setdefault(k, n)
            except TypeError:  # unhashable: allowed, never de-duplicated
                entry = n
            if entry != n:
                self.duplicate(batch, entry)
                return
            if batch.ids is not None:
                batch.ids.append(k)
        elif keyfn is not None and batch.ids is not None:
            batch.ids.append(keyfn(item))
        items.append(item)
        if batch.entries is not None:
            batch.entries.append(n)
        if n + 1 == self.options.max_size:
            filled(batch)

    def duplicate(self, batch: Batch, entry: int) -> None:
        """The next caller's item is already in ``batch`` as ``entry``."""
        self.rec.deduplicated.value += 1
        entries = batch.entries
        if entries is None:
            entries = batch.entries = list(range(len(batch.futs)))
        entries.append(entry)

    async def lead(
        self,
        batch: Batch,
        coro: Coroutine[Any, Any, Any],
        pos: int,
        loop: asyncio.AbstractEventLoop,
    ) -> Any:
        rec = self.rec
        if batch.state == OPEN:
            try:
                if self.zero_config and not batch.expired:  # admit() inlined: one hop
                    await sleep0()
                    batch.expired = True
                    lane = batch.lane
                    if lane.open is batch:
                        lane.open = None
                    batch.state = RUNNING
                    if lane.registry is not None:
                        discard_if_idle(lane)
                else:
                    await admit(batch, loop)
            except asyncio.CancelledError:
                rec.cancelled.value += 1
                try:
                    close(coro)
                finally:
                    self.leader_lost(batch, pos)
                raise
        remap: list[int] | None = None
        if batch.dead == 0 and batch.entries is None:
            # a cancelled follower's future is done at once; its task may not have run yet
            for fut in batch.futs:
                if fut is not None and fut.done():
                    sent, remap = self.live(batch)
                    break
            else:
                sent = batch.items[:]
        else:
            sent, remap = self.live(batch)
        size = len(sent)
        rec.dispatched(size)
        if rec.listening or logging_events():
            try:
                rec.emit("dispatched", size)
            except BaseException:
                # a listener's KeyboardInterrupt/SystemExit ends this caller before its bulk
                # call starts: the next live caller leads the batch instead
                rec.undispatched(size)
                try:
                    close(coro)
                finally:
                    self.leader_lost(batch, pos)
                raise
        try:
            result = await resume(coro, sent)
        except asyncio.CancelledError as exc:
            rec.settled += 1
            rec.cancelled.value += 1
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self.leader_lost(batch, pos)
            else:  # the body raised CancelledError by itself: a failure of the bulk call
                self.fail(batch, exc, pos, size)
            raise
        except BaseException as exc:
            rec.settled += 1
            self.fail(batch, exc, pos, size)
            raise
        rec.settled += 1
        return self.route(batch, result, sent, remap, pos)

    def live(self, batch: Batch) -> tuple[list[Any], list[int]]:
        """The items some live caller still waits for, and old entry -> new index."""
        items = batch.items
        entries = batch.entries
        leader = batch.leader
        alive = [False] * len(items)
        for pos, fut in enumerate(batch.futs):
            if pos == leader or (fut is not None and not fut.done()):
                alive[entries[pos] if entries is not None else pos] = True
        remap = [-1] * len(items)
        sent: list[Any] = []
        for entry, wanted in enumerate(alive):
            if wanted:
                remap[entry] = len(sent)
                sent.append(items[entry])
        return sent, remap

    def route(
        self,
        batch: Batch,
        result: Any,
        sent: list[Any],
        remap: list[int] | None,
        pos: int,
    ) -> Any:
        size = len(sent)
        futs = batch.futs
        try:
            exact = (type(result) is list or type(result) is tuple) and len(result) == size
            sequence = exact or is_sequence(result, size, self.name)
            # the common case (no duplicates, nobody cancelled); zip only a list or a tuple:
            # another sequence may iterate otherwise than it indexes
            if exact and remap is None:
                for fut, value in zip(futs, result):  # noqa: B905 - lengths checked above
                    if fut is None or fut.done():  # the leader; or cancelled meanwhile
                        continue
                    if isinstance(value, BaseException):
                        fut.set_exception(as_error(value))
                    else:
                        fut.set_result(value)
                own = result[0]
            else:
                entries = batch.entries
                keys = batch.ids if batch.ids is not None else batch.items
                mapping: Any = result  # a Mapping when not a sequence (lookup() checks)
                own = None
                for p, fut in enumerate(futs):
                    if p != pos and (fut is None or fut.done()):
                        continue
                    entry = entries[p] if entries is not None else p
                    if sequence:
                        value = result[entry if remap is None else remap[entry]]
                    else:
                        value = lookup(mapping, keys[entry])
                    if p == pos:
                        own = value
                    elif isinstance(value, BaseException):
                        fut.set_exception(as_error(value))  # type: ignore[union-attr]
                    else:
                        fut.set_result(value)  # type: ignore[union-attr]
        except BaseException as error:
            # a mis-shaped result (BatchRoutingError), or a result whose __len__,
            # __getitem__ or __iter__ failed: every caller not yet served gets the error
            self.fail(batch, error, pos, size)
            raise
        finish(batch)
        if self.rec.listening or logging_events():
            # a listener's KeyboardInterrupt/SystemExit reaches the leader, after routing
            self.rec.emit("completed", size)
        if isinstance(own, BaseException):
            raise own
        return own

    def fail(self, batch: Batch, error: BaseException, pos: int, size: int) -> None:
        """The bulk call raised (or returned a mis-shaped result): every caller gets it.

        The caller at ``pos`` raises ``error`` itself; a listener's ``KeyboardInterrupt``
        or ``SystemExit`` is raised here, once every other caller has been answered.
        """
        self.rec.failed.value += 1
        cancel = isinstance(error, asyncio.CancelledError)
        carried = as_error(error)
        for p, fut in enumerate(batch.futs):
            if p == pos or fut is None or fut.done():
                continue
            if cancel:
                fut.cancel()
            else:
                fut.set_exception(carried)
        finish(batch)
        if self.rec.listening or logging_events():
            self.rec.emit("failed", size, error)

    def leader_lost(self, batch: Batch, pos: int) -> None:
        """The leader at ``pos`` is gone: promote the next live caller, or drop the batch.

        A listener's ``KeyboardInterrupt`` or ``SystemExit`` is raised here, after that.
        """
        batch.dead += 1
        if batch.state == DONE:
            return
        for p, fut in enumerate(batch.futs):
            if p != pos and fut is not None and not fut.done():
                batch.leader = p
                fut.set_result(PROMOTE)
                if self.rec.listening or logging_events():
                    self.rec.emit("handed_over", len(batch.items))
                return
        batch.leader = -1
        finish(batch)
        if self.rec.listening or logging_events():
            self.rec.emit("dropped", len(batch.items))

    def follower_failed(self, batch: Batch, fut: asyncio.Future[Any], error: BaseException) -> None:
        if not isinstance(error, asyncio.CancelledError):
            return
        self.rec.cancelled.value += 1
        if fut.cancelled():
            batch.dead += 1
            return
        # the result arrived, but the task was cancelled before it resumed
        if fut.exception() is None and fut.result() is PROMOTE:
            self.leader_lost(batch, batch.futs.index(fut))


def close(coro: Coroutine[Any, Any, Any]) -> None:
    """Close a caller's suspended body: its ``finally`` blocks run now.

    What they raise propagates, as it would in plain Python (chaining the error in
    flight); a body that awaits in a ``finally`` block (``coroutine ignored
    GeneratorExit``) is left to the garbage collector.
    """
    try:
        coro.close()
    except RuntimeError:
        if getattr(coro, "cr_frame", None) is None:  # the body raised it: the user's error
            raise
