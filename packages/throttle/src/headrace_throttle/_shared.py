"""Budgets shared between processes through a :class:`headrace_core.store.BudgetStore`.

A call reserves its amount in every shared budget *before* it queues for a local slot,
so a call waiting for a shared budget holds no local concurrency slot. Within one
process the shared budgets are reserved in arrival order: once a store refuses a call,
later calls queue behind it (head of line) until it is granted; across processes the
store decides. A call that leaves without running (cancelled, refused locally, closed)
gets every grant back (``adjust(name, entry, 0)``); a call that ran has its token
estimate replaced by the tokens it recorded.

Store calls that fail are isolated where the call's own outcome matters more: a failing
``adjust`` is logged, never raised into the call. A failing ``reserve`` fails the call
(it cannot be admitted), after giving back the grants already made. Refunds of a call
that is being cancelled (or interrupted) are sent without waiting, in a task that
``drain()`` awaits, so a cancellation is never held up by a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from headrace_core import HeadraceError
from headrace_core.lowlevel import (
    despite_cancel,
    finish_tasks,
    first_step,
    safe_repr,
    start_task,
)
from headrace_throttle._budget import RequestBudget, TokenBudget, charge_amount

if TYPE_CHECKING:
    from headrace_throttle._types import Slot

__all__ = ["SharedBudgets", "StoreReplyError"]

_log = logging.getLogger("headrace.throttle")

# When a store refuses without a usable wait, look again after this share of the window.
_RETRY_SHARE = 0.05
# Adjustments whose task was cancelled from outside before its first step are sent all the
# same, within this bound (a shutdown never waits longer for an unreachable store).
_ADJUST_BOUND = 30.0

Budget = TokenBudget | RequestBudget
Grant = tuple[Budget, Any]


class StoreReplyError(HeadraceError, TypeError):
    """A budget store answered ``reserve`` with something that is not ``(granted, wait, entry)``."""


def _own_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is the current task's own cancellation (not a callee's failure)."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _interrupting(exc: BaseException) -> bool:
    """Whether ``exc`` must unwind the caller at once (its cancellation, or an interrupt)."""
    if isinstance(exc, Exception):
        return False
    return not isinstance(exc, asyncio.CancelledError) or _own_cancel(exc)


def _wait_of(budget: Budget, wait: object) -> float:
    """The seconds to wait before asking again after a refusal (bounded by the window).

    A charge never outlives its window, so a request that fits the capacity fits again
    at most ``window_seconds`` from now: a larger (or infinite) wait is cut to that, and
    a wait that is not a number ``>= 0`` is replaced by a share of the window.
    """
    window = budget.window_seconds
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0.0:
        return window * _RETRY_SHARE
    return min(float(wait), window)


class SharedBudgets:
    """The store-backed budgets of one throttle, with its in-process line and refunds."""

    __slots__ = ("_blocked", "_interrupts", "_line", "_sleepers", "_tasks", "budgets", "waiting")

    def __init__(self, budgets: tuple[Budget, ...]) -> None:
        self.budgets = budgets
        #: Calls inside :meth:`reserve` (queued behind a refused call, asking, or waiting).
        self.waiting = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self._blocked = 0
        self._sleepers: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._interrupts: list[BaseException] = []

    # -- reserving -------------------------------------------------------------------
    async def reserve(self, slot: Slot) -> list[Grant]:
        """Reserve the call's amount in every shared budget, waiting while a store refuses.

        Args:
            slot: the call's slot (its ``tokens`` estimate).

        Returns:
            The grants, to give to :meth:`settle` or :meth:`give_back`.

        Raises:
            ThrottleClosed: when the throttle is closed while the call waits.
            StoreReplyError: when a store's reply is not ``(granted, wait, entry)``.
            Exception: a store's own error (the grants made so far are given back).
        """
        loop = asyncio.get_running_loop()
        self.waiting += 1
        head = False
        grants: list[Grant] = []
        try:
            if self._blocked or self._line:
                turn: asyncio.Future[None] = loop.create_future()
                self._line.append(turn)
                try:
                    await turn
                except BaseException:
                    if not turn.done():
                        turn.cancel()  # left without an answer: never hand it the turn
                    elif not turn.cancelled() and turn.exception() is None:
                        head = True  # handed the turn, then left: pass it on (finally)
                    raise
                head = True  # handed the turn: it counts as blocking the line
            for budget in self.budgets:
                store = budget.store
                assert store is not None
                name = budget.name
                assert name is not None
                amount = charge_amount(budget, slot.tokens)
                cap, window = budget.capacity, budget.window_seconds
                while True:
                    reply = await store.reserve(name, amount, cap, window)
                    granted, wait, entry = self._check(reply, budget)
                    if granted:
                        grants.append((budget, entry))
                        break
                    if not head:
                        head = True
                        self._blocked += 1
                    await self._sleep(loop, _wait_of(budget, wait))
        except BaseException as exc:
            if grants:
                await self.give_back(grants, exc)
            raise
        finally:
            self.waiting -= 1
            if head:
                self._blocked -= 1
                if not self._blocked:
                    self._next()
        return grants

    @staticmethod
    def _check(reply: object, budget: Budget) -> tuple[bool, object, object]:
        if isinstance(reply, tuple | list) and len(reply) == 3:
            granted, wait, entry = reply
            if isinstance(granted, bool | int):
                return bool(granted), wait, entry
        raise StoreReplyError(
            f"the store of budget {budget.name!r} answered reserve() with "
            f"{type(reply).__name__} {safe_repr(reply)}, not (granted, retry_after, entry)"
        )

    def _next(self) -> None:
        """Hand the turn to the first call still queued behind a refused one."""
        line = self._line
        while line:
            turn = line.popleft()
            if not turn.done():
                self._blocked += 1
                turn.set_result(None)
                return

    async def _sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        future: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _wake, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            handle.cancel()
            self._sleepers.discard(future)

    def close(self, error: Callable[[], BaseException]) -> None:
        """Refuse the calls still waiting for a shared budget with ``error()``."""
        for future in (*self._line, *self._sleepers):
            if not future.done():
                future.set_exception(error())

    def forget(self) -> None:
        """Drop the waiters of a loop that is gone."""
        self._line.clear()
        self._sleepers.clear()
        self._tasks.clear()
        self._blocked = 0
        self.waiting = 0

    # -- giving back and reconciling -------------------------------------------------
    async def give_back(self, grants: Iterable[Grant], exc: BaseException) -> None:
        """Refund every grant of a call that did not run (``adjust(name, entry, 0)``).

        Args:
            grants: the call's grants.
            exc: why the call leaves; a cancellation or an interrupt does not wait for
                the store (the refund is sent in a task that ``drain()`` awaits).
        """
        items = [(budget, entry, 0) for budget, entry in grants if entry is not None]
        await self._adjust(items, background=_interrupting(exc))

    async def settle(
        self,
        slot: Slot,
        grants: Iterable[Grant],
        exc: BaseException | None,
        *,
        background: bool = False,
    ) -> None:
        """Replace the token estimate of every shared token budget by what the call recorded.

        A call that is cancelled (or interrupted) while it runs keeps its estimate charged
        (the server may have counted it): it is charged ``max(recorded, estimate)``, and
        the store is not waited for.

        Args:
            slot: the finished call's slot.
            grants: its grants.
            exc: how the call ended (None: it returned).
            background: do not wait for the store (the caller is unwinding).
        """
        recorded = slot._recorded
        if recorded is None:
            return  # nothing recorded: the estimate stays charged
        cut_short = exc is not None and _interrupting(exc)
        background = background or cut_short
        amount = max(recorded, slot.tokens) if cut_short else recorded
        items = [
            (budget, entry, amount)
            for budget, entry in grants
            if isinstance(budget, TokenBudget) and entry is not None
        ]
        await self._adjust(items, background=background)

    async def _adjust(self, items: Sequence[tuple[Budget, Any, int]], *, background: bool) -> None:
        if not items:
            return
        if background:
            self._spawn(_adjust_all(items))
            return
        for i, (budget, entry, amount) in enumerate(items):
            store = budget.store
            assert store is not None
            assert budget.name is not None
            try:
                await store.adjust(budget.name, entry, amount)
            except BaseException as exc:
                if _interrupting(exc):
                    # Leave now; the adjustments not yet made are sent without waiting.
                    if items[i + 1 :]:
                        self._spawn(_adjust_all(items[i + 1 :]))
                    raise
                _log_store_failure(budget, exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = send_task(functools.partial(self._run_adjustments, work), _ADJUST_BOUND)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_adjustments(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (KeyboardInterrupt, SystemExit) as exc:
            # Nobody awaits this task but drain(): keep it for drain() to re-raise.
            self._interrupts.append(exc)
        except asyncio.CancelledError:
            # its own (the store raising one by itself is logged in _adjust_all)
            _log.warning(
                "shared budget adjustments were cancelled while they ran; "
                "those not made leave their charges"
            )
            raise

    async def aclose(self, timeout: float | None) -> None:
        """Await the refunds sent without waiting; cancel those still running after ``timeout``."""
        await finish_tasks(self._tasks, timeout)

    def raise_interrupt(self) -> None:
        """Re-raise a ``KeyboardInterrupt``/``SystemExit`` a store raised in a refund task."""
        if self._interrupts:
            interrupt = self._interrupts.pop(0)
            self._interrupts.clear()
            raise interrupt


async def _adjust_all(items: Sequence[tuple[Budget, Any, int]]) -> None:
    for budget, entry, amount in items:
        store = budget.store
        assert store is not None
        assert budget.name is not None
        try:
            await store.adjust(budget.name, entry, amount)
        except Exception as exc:
            _log_store_failure(budget, exc)
        except asyncio.CancelledError as exc:
            if _own_cancel(exc):
                raise
            _log_store_failure(budget, exc)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_store_failure(budget: Budget, exc: BaseException) -> None:
    _log.warning(
        "the store of budget %r failed to adjust a charge (%s); the charge stays",
        budget.name,
        type(exc).__name__,
        exc_info=exc,
        extra={"budget": budget.name},
    )


def send_task(send: Callable[[], Awaitable[None]], bound: float) -> asyncio.Task[None]:
    """A task for a store call that must be made (a refund, a lease handed back).

    ``start_task``: if something else cancels the task before its first step (a shutdown
    sweep over ``asyncio.all_tasks()``), nothing was sent yet: ``send()`` runs all the
    same, within ``bound`` seconds, and the task then ends cancelled as asked. A cancel
    while ``send()`` runs is obeyed (``send`` logs it).
    """
    return start_task(asyncio.get_running_loop(), _sent_anyway(send, bound))


async def _sent_anyway(send: Callable[[], Awaitable[None]], bound: float) -> None:
    try:
        await first_step()  # where start_task leaves it: inside the try
    except asyncio.CancelledError:
        with contextlib.suppress(TimeoutError):  # (send logs the cancellation it got)
            await despite_cancel(send, bound)
        raise
    await send()
