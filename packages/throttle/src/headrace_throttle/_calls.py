"""A call's way through a throttle, and the ``acquire()`` context manager that takes it.

In: the ``tokens`` check, the closed check, the composed breaker's state, the budgets
shared through a store (reserved before the call queues, so a call waiting for a store
holds no local slot), then :meth:`Admission.admit`. Out: the slot is released, the
outcome is accounted (counters, budget reconciliation, the limit's sample, progress),
then the freed capacity goes on, and shared grants are settled or given back.
``Throttle.execute`` takes its own fast way when nothing but admission applies; every
other way (``acquire()``, calls with shared budgets or a breaker) comes through here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar, final

from headrace_core import CircuitOpenError, CircuitState
from headrace_core.lowlevel import being_cancelled
from headrace_guards import CircuitBreaker, Retry
from headrace_throttle._admission import Admission
from headrace_throttle._budget import Budget, LocalBudgets, check_tokens, token_cap
from headrace_throttle._errors import ThrottleClosed
from headrace_throttle._feedback import NOT_A_HINT, Feedback
from headrace_throttle._progress import Progress
from headrace_throttle._shared import SharedBudgets
from headrace_throttle._shared_limit import SharedLimit
from headrace_throttle._types import Slot, ThrottleSnapshot

__all__ = ["Acquire", "Calls"]

T = TypeVar("T")


@final
class Calls:
    """Takes calls into a throttle and out of it (every way but ``execute``'s fast one).

    Args:
        admission: admits and releases.
        budgets: every budget (the token cap and its error name them).
        local: the in-memory budgets (reconciled at the end of a call), or None.
        shared: the store-backed budgets, or None.
        shared_limit: the limit shared through a store, or None.
        feedback: where outcomes and hints go.
        progress: the counters and progress reports.
        breaker: the composed circuit breaker, or None.
        retry: the composed retry, or None.
        snapshot: the throttle's snapshot (for progress reports).
        name: the throttle's name, for errors.
    """

    __slots__ = (
        "_admission",
        "_breaker",
        "_budgets",
        "_feedback",
        "_local",
        "_name",
        "_progress",
        "_retry",
        "_shared",
        "_shared_limit",
        "_snapshot",
        "token_cap",
    )

    def __init__(
        self,
        *,
        admission: Admission,
        budgets: tuple[Budget, ...],
        local: LocalBudgets | None,
        shared: SharedBudgets | None,
        feedback: Feedback,
        shared_limit: SharedLimit | None = None,
        progress: Progress,
        breaker: CircuitBreaker | None,
        retry: Retry | None,
        snapshot: Callable[[], ThrottleSnapshot],
        name: str | None,
    ) -> None:
        self._admission = admission
        self._budgets = budgets
        self._local = local
        self._shared = shared
        self._shared_limit = shared_limit
        self._feedback = feedback
        self._progress = progress
        self._breaker = breaker
        self._retry = retry
        self._snapshot = snapshot
        self._name = name
        #: The most tokens one call may ask for (``inf`` without a token budget).
        self.token_cap = token_cap(budgets)

    # -- checks ------------------------------------------------------------------------
    def check_tokens(self, tokens: object) -> None:
        """Refuse a ``tokens=`` that is not an int ``>= 0`` or that no budget can hold.

        Raises:
            ValueError: when ``tokens`` is not an int ``>= 0``.
            TokenBudgetExceeded: when it exceeds a token budget's capacity.
        """
        check_tokens(tokens, self._budgets)

    def check_breaker(self) -> None:
        """Refuse a call while the composed breaker is open (before it queues).

        Raises:
            CircuitOpenError: when the breaker is open.
        """
        breaker = self._breaker
        assert breaker is not None
        if breaker.state is CircuitState.OPEN:
            raise CircuitOpenError(
                retry_after=breaker.snapshot().retry_after,
                name=breaker.name,
                state=CircuitState.OPEN,
            )

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop`` (dropping the waiters of a previous loop that is gone)."""
        if self._admission.bind(loop) and self._shared is not None:
            self._shared.forget()

    # -- in ----------------------------------------------------------------------------
    def enter(self, slot: Slot) -> Awaitable[None] | None:
        """Admit a call: checks, the breaker, shared budgets (no local slot held), admission.

        Returns None when the call is admitted at once, else an awaitable that admits it;
        on any exception (a cancellation included) the call holds nothing: its shared
        grants are given back and its local slot, if it was admitted, released.

        Raises:
            ThrottleClosed: when the throttle is closed.
            TokenBudgetExceeded: when ``tokens`` exceeds a token budget.
            CircuitOpenError: when the composed breaker is open.
        """
        slot._grants = None
        slot._ran = self._breaker is None
        tokens = slot.tokens
        if tokens and (type(tokens) is not int or tokens < 0 or tokens > self.token_cap):
            self.check_tokens(tokens)
        admission = self._admission
        if admission.closed:
            raise ThrottleClosed(name=self._name)
        if self._breaker is not None:
            self.check_breaker()
        loop = asyncio.get_running_loop()
        if loop is not admission.loop:
            self.bind(loop)
        if self._shared is not None or self._shared_limit is not None:
            slot._lease = None
            slot._hinted = False
            return self._enter_shared(slot)
        turn = admission.admit(slot)
        return None if turn is None else admission.wait(turn, slot)

    async def _enter_shared(self, slot: Slot) -> None:
        # Shared budgets first, then the shared limit's lease, then a local slot: a call
        # waiting for something shared holds nothing local.
        shared = self._shared
        if shared is not None:
            slot._grants = await shared.reserve(slot)
        limit = self._shared_limit
        admission = self._admission
        try:
            if limit is not None:
                leased = await limit.admit(lambda: admission.closed)
                if leased is not None:
                    slot._lease, slot._shared_epoch = leased
            if admission.closed:  # closed while the call waited for something shared
                raise ThrottleClosed(name=self._name)
            turn = admission.admit(slot)
            if turn is not None:
                await admission.wait(turn, slot)
        except BaseException as exc:
            self._give_back_lease(slot)
            grants = slot._grants
            if grants:
                slot._grants = None
                assert shared is not None
                await shared.give_back(grants, exc)
            raise

    def _give_back_lease(self, slot: Slot, outcome: str = "neutral") -> None:
        lease = slot._lease
        if lease is not None:
            slot._lease = None
            limit = self._shared_limit
            assert limit is not None
            limit.done(lease, outcome, slot._shared_epoch)

    # -- through -----------------------------------------------------------------------
    async def execute(self, fn: Callable[[Slot], Awaitable[T]], tokens: int) -> T:
        """Run ``fn`` the full way: in, through the breaker and retry, out."""
        slot = Slot(tokens)
        waiter = self.enter(slot)
        if waiter is not None:
            await waiter
        try:
            result = await self.run(fn, slot)
        except BaseException as exc:
            await self.leave(slot, exc, hinted=True, ran=slot._ran)
            raise
        await self.leave(slot, None, hinted=True)
        return result

    async def run(self, fn: Callable[[Slot], Awaitable[T]], slot: Slot) -> T:
        """Call ``fn(slot)`` through the composed breaker and retry, applying hints at once.

        A server hint pauses and decreases when the attempt fails, before the retry
        waits (so the pause is in place for the next attempt).
        """
        breaker = self._breaker
        feedback = self._feedback
        attempts = [-1]
        # With shared budgets, note whether the breaker let the function run: the grants
        # of a call it refused are given back.
        marked = breaker is not None and self._shared is not None

        async def once() -> T:
            attempts[0] += 1
            slot.attempt = attempts[0]
            try:
                if breaker is not None:
                    if marked:
                        return await breaker.call(_marked, fn, slot)
                    return await breaker.call(fn, slot)
                return await fn(slot)
            except Exception as exc:
                hint = feedback.hint(exc)
                if hint != NOT_A_HINT:
                    feedback.apply_hint(hint, slot._epoch, exc)
                    limit = self._shared_limit
                    if limit is not None and slot._lease is not None:
                        slot._hinted = True  # every process holds, and one decrease
                        limit.hold(0.0 if math.isnan(hint) else hint, slot._shared_epoch)
                raise

        if self._retry is not None:
            return await self._retry.call(once)
        return await once()

    # -- out ---------------------------------------------------------------------------
    async def leave(
        self, slot: Slot, exc: BaseException | None, *, hinted: bool, ran: bool = True
    ) -> None:
        """Finish an admitted call, then reconcile its shared grants.

        ``ran``: whether the function (or the block) was called; the grants of a call
        the breaker refused are given back, like those of a call that never got a slot.
        """
        grants = slot._grants
        try:
            if exc is None:
                self.finish_ok(slot)
                if self._shared_limit is not None:
                    self._give_back_lease(slot, "success")
            else:
                congestion = self.finish_error(slot, exc, hinted=hinted)
                if self._shared_limit is not None:
                    hinted_here = slot._hinted
                    self._give_back_lease(
                        slot, "failure" if congestion and not hinted_here else "neutral"
                    )
        except BaseException as error:  # an interrupt from a listener, the limit, ...
            if self._shared_limit is not None:
                self._give_back_lease(slot)
            if grants:
                assert self._shared is not None
                if ran:
                    await self._shared.settle(slot, grants, exc, background=True)
                else:
                    await self._shared.give_back(grants, error)
            raise
        if grants:
            assert self._shared is not None
            if ran:
                await self._shared.settle(slot, grants, exc)
            else:
                assert exc is not None
                await self._shared.give_back(grants, exc)

    def finish_ok(self, slot: Slot) -> None:
        """Account a call that returned, and give its slot back."""
        admission = self._admission
        admission.release()
        self._progress.completed += 1
        if self._local is not None:
            self._local.reconcile(slot)
        if not self._feedback.quiet:
            self.account_success(slot)
        elif admission.queue or admission.closed:
            admission.dispatch()

    def account_success(self, slot: Slot) -> None:
        """The rest of :meth:`finish_ok` when a success needs more than counting and reconciling."""
        # User code runs here (the limit, listeners, on_progress): whatever it raises, the
        # freed slot still goes to the next waiter.
        try:
            if self._feedback.sample_ok:
                self._feedback.success(slot)
            if self._progress.reporting:
                self._progress.tick(self._snapshot)
        finally:
            admission = self._admission
            if admission.queue or admission.closed:
                admission.dispatch()

    def finish_error(self, slot: Slot, exc: BaseException, *, hinted: bool = False) -> bool:
        """Account a call that raised ``exc``, and give its slot back.

        ``hinted``: its server hint was applied while it ran (:meth:`run`).

        Returns:
            Whether ``exc`` is congestion (see :meth:`Feedback.failure`).
        """
        self._admission.release()
        try:
            if not isinstance(exc, Exception) and not _callee_cancel(exc):
                # A cancel (or an interpreter exit) is the caller's, never the service's
                # fault. (A CancelledError the callee raised by itself, while its task was
                # not being cancelled, is the callee's failure: counted below.)
                if self._local is not None:
                    self._local.reconcile(slot, cancelled=True)
                return False
            self._progress.failed += 1
            if self._local is not None:
                self._local.reconcile(slot)
            congestion = self._feedback.failure(exc, slot, hinted=hinted)
            self._progress.tick(self._snapshot)
            return congestion
        finally:
            self._admission.dispatch()

    def record_success(self, duration: float | None = None, tokens: int = 0) -> None:
        """Account a success of a call made outside the throttle.

        ``duration``: its latency sample, if known; ``tokens``: tokens it consumed.
        """
        if tokens:
            self.record_tokens(tokens)
        self._progress.completed += 1
        self._feedback.success(None, duration)
        self._progress.tick(self._snapshot)

    def record_tokens(self, count: int) -> None:
        """Charge ``count`` tokens, consumed outside a call, to the in-memory token budgets."""
        local = self._local
        if local is not None and count:
            local.record(count, self._admission.now())

    def record_failure(self, exc: BaseException) -> None:
        """Account a failure of a call made outside the throttle (for the current epoch)."""
        self._progress.failed += 1
        self._feedback.failure(exc)
        self._progress.tick(self._snapshot)


@final
class Acquire:
    """The context manager of ``Throttle.acquire()``: one slot for one block, no retry.

    It takes the full way in (:meth:`Calls.enter`), then enters the composed breaker
    (its own ``async with``, in memory or store-backed), and the same way out.
    """

    __slots__ = ("_breaker", "_calls", "_slot", "_tokens")

    def __init__(self, calls: Calls, breaker: CircuitBreaker | None, tokens: int) -> None:
        self._calls = calls
        self._breaker = breaker
        self._tokens = tokens
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        if self._slot is not None:
            raise RuntimeError("this acquire() context is already entered")
        calls = self._calls
        slot = Slot(self._tokens)
        waiter = calls.enter(slot)
        if waiter is not None:
            await waiter
        breaker = self._breaker
        if breaker is not None:
            try:
                await breaker.__aenter__()
            except BaseException as exc:  # refused: the block never runs
                await calls.leave(slot, exc, hinted=False, ran=False)
                raise
        self._slot = slot
        return slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot, calls = self._slot, self._calls
        assert slot is not None
        self._slot = None
        breaker = self._breaker
        if breaker is not None:
            try:
                await breaker.__aexit__(exc_type, exc, tb)
            except BaseException as error:
                if error is not exc:
                    # The breaker's own error while recording (a predicate's, a store's).
                    await calls.leave(slot, error, hinted=False)
                    raise
        if slot._grants is None:
            # No shared budget to reconcile: finishing is synchronous (no extra frame).
            if exc is None:
                calls.finish_ok(slot)
            else:
                calls.finish_error(slot, exc)
            return
        await calls.leave(slot, exc, hinted=False)


async def _marked(fn: Callable[[Slot], Awaitable[T]], slot: Slot) -> T:
    """Call ``fn(slot)``, noting on the slot that it was called."""
    slot._ran = True
    return await fn(slot)


def _callee_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a CancelledError raised by the callee while nobody cancelled the task."""
    return isinstance(exc, asyncio.CancelledError) and not being_cancelled()
