"""``Throttle``: adaptive concurrency, pacing, budgets, hints, retry, breaker and progress."""

from __future__ import annotations

import asyncio
import functools
import math
import random
from asyncio import get_running_loop
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final, overload

from headrace_core import CircuitOpenError, CircuitState, GuardTimeout
from headrace_core.lowlevel import check_int, check_optional_number, is_async_callable
from headrace_core.stats import Listeners
from headrace_guards import CircuitBreaker, Retry
from headrace_throttle._acquire import _Acquire
from headrace_throttle._budget import RequestBudget, TokenBudget
from headrace_throttle._compat import CircuitBreakerConfig, RetryConfig
from headrace_throttle._config import ThrottleConfig
from headrace_throttle._errors import ThrottleClosed, TokenBudgetExceeded
from headrace_throttle._limit import AIMD, Gradient, Limit
from headrace_throttle._outcomes import NOT_A_HINT, _describe, _Outcomes
from headrace_throttle._shared import SharedBudgets
from headrace_throttle._types import Slot, ThrottleEvent, ThrottleSnapshot
from headrace_throttle._vegas import Vegas

__all__ = ["Throttle"]

P = ParamSpec("P")
T = TypeVar("T")


def _any_exception(exc: BaseException) -> bool:
    # The default is_failure: every Exception is congestion (a CancelledError a callee
    # raised by itself is its failure, but not the service's congestion).
    return isinstance(exc, Exception)


@final
class Throttle(_Outcomes):
    """An adaptive throttle for calls to a service that may push back.

    Concurrency follows AIMD (or any :class:`Limit`): congestion lowers it once per
    event (the admission-epoch rule) and successes raise it back to the ceiling; a
    lowered limit is enforced as calls finish, never by cancelling them. Admission is
    strict FIFO across the concurrency limit, optional pacing and every budget.

    Args:
        max_concurrency: the ceiling, ``>= 1``.
        initial_concurrency: the starting limit (default ``max_concurrency``); it ramps
            up by ``increase_by`` per ``cooling_period``.
        min_concurrency: the floor, ``>= 1``.
        failure_threshold: failures that make one congestion event.
        failure_window: seconds within which they must fall.
        decrease_factor: the multiplier on a decrease, in ``(0, 1)``.
        cooling_period: seconds between changes before the limit grows again.
        increase_by: the additive step.
        min_dispatch_interval: the minimum gap between two starts (0: no pacing).
        max_dispatch_interval: the cap of the gap when decreases double it.
        jitter_fraction: each gap is drawn from ``[gap * (1 - jitter), gap]``.
        rng: the random source of the jitter.
        budgets: :class:`RequestBudget` and :class:`TokenBudget` objects, all enforced.
        token_budget: one more :class:`TokenBudget` (gentlify's argument).
        is_failure: which errors are congestion (default every ``Exception``).
        retry_after: an extractor of a server's hint from an error: seconds, a numeric
            string or an HTTP date (``Retry-After``'s two forms), or None for no hint.
            Anything else (or an extractor that raises) is ignored with one warning on
            the ``headrace.throttle`` logger; it never replaces the call's error.
        retry: a :class:`headrace_guards.Retry` (or :class:`RetryConfig`) run inside the slot.
        circuit_breaker: a :class:`headrace_guards.CircuitBreaker` (or
            :class:`CircuitBreakerConfig`), checked before queueing.
        total: the expected number of calls, for progress and ETA.
        on_event: a listener for :class:`ThrottleEvent` (sync or async).
        on_progress: called with a snapshot at each ``progress_step`` percent.
        progress_step: percent between ``on_progress`` calls, in ``(0, 100]``.
        limit: the limit algorithm: None (AIMD from the arguments above), an
            :class:`AIMD`, a :class:`Gradient`, a :class:`Vegas` or your own :class:`Limit`.
        name: a name for events, errors and snapshots.
        total_tasks: gentlify's name for ``total`` (0 means unknown).
        failure_predicate: gentlify's name for ``is_failure``.
        on_state_change: gentlify's name for ``on_event``.
        **unsupported: nothing else is accepted; gentlify's
            ``safe_ceiling_decay_multiplier`` raises, pointing to the migration page.

    Raises:
        ConfigurationError: naming the argument and the value, when one is invalid.
    """

    __slots__ = ("_config", "_entry_checks", "_retry", "_token_cap")

    def __init__(
        self,
        max_concurrency: int = 5,
        *,
        initial_concurrency: int | None = None,
        min_concurrency: int = 1,
        failure_threshold: int = 3,
        failure_window: float = 60.0,
        decrease_factor: float = 0.5,
        cooling_period: float = 60.0,
        increase_by: int = 1,
        min_dispatch_interval: float = 0.0,
        max_dispatch_interval: float = 30.0,
        jitter_fraction: float = 0.0,
        rng: random.Random | None = None,
        budgets: Sequence[TokenBudget | RequestBudget] = (),
        token_budget: TokenBudget | None = None,
        is_failure: Callable[[BaseException], bool] | None = None,
        retry_after: Callable[[BaseException], float | str | None] | None = None,
        retry: Retry | RetryConfig | None = None,
        circuit_breaker: CircuitBreaker | CircuitBreakerConfig | None = None,
        total: int | None = None,
        on_event: Callable[[ThrottleEvent], object] | None = None,
        on_progress: Callable[[ThrottleSnapshot], object] | None = None,
        progress_step: float = 10.0,
        limit: AIMD | Gradient | Vegas | Limit | None = None,
        name: str | None = None,
        total_tasks: int | None = None,
        failure_predicate: Callable[[BaseException], bool] | None = None,
        on_state_change: Callable[[ThrottleEvent], object] | None = None,
        **unsupported: Any,
    ) -> None:
        arguments = dict(locals())
        for key in ("self", "unsupported", "__class__"):
            arguments.pop(key, None)
        arguments.update(unsupported)
        self._setup(ThrottleConfig.from_kwargs(arguments))

    @classmethod
    def from_config(cls, config: ThrottleConfig) -> Throttle:
        """Build a throttle from a :class:`ThrottleConfig`.

        Args:
            config: the validated configuration.

        Returns:
            A new throttle.
        """
        throttle = cls.__new__(cls)
        throttle._setup(config)
        return throttle

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Throttle:
        """Build a throttle from a plain dict; see :meth:`ThrottleConfig.from_dict`.

        Args:
            data: argument names and values (nested dicts for budgets, retry, breaker).

        Returns:
            A new throttle.

        Raises:
            ConfigurationError: naming an unknown key, or a bad value.
        """
        return cls.from_config(ThrottleConfig.from_dict(data))

    @classmethod
    def from_env(
        cls, prefix: str | None = None, *, environ: Mapping[str, str] | None = None
    ) -> Throttle:
        """Build a throttle from ``{prefix}_{NAME}`` environment variables.

        Args:
            prefix: e.g. ``"MYAPP"``; None reads ``HEADRACE_THROTTLE_*`` and then
                ``GENTLIFY_*``.
            environ: the variables to read; default ``os.environ``.

        Returns:
            A new throttle.

        Raises:
            ConfigurationError: naming the variable, when one is unknown or does not parse.
        """
        return cls.from_config(ThrottleConfig.from_env(prefix, environ))

    def _setup(self, config: ThrottleConfig) -> None:
        self._config = config
        high, low = config.max_concurrency, config.min_concurrency
        initial = config.initial_concurrency if config.initial_concurrency is not None else high
        limiter: Limit
        if config.limit is None:
            limiter = AIMD(
                failure_threshold=config.failure_threshold,
                failure_window=config.failure_window,
                decrease_factor=config.decrease_factor,
                cooling_period=config.cooling_period,
                increase_by=config.increase_by,
            )
        else:
            limiter = config.limit
        binder = getattr(limiter, "_bind", None)
        if binder is not None:
            binder(initial, low, high, None)
            initial = int(getattr(limiter, "limit", initial))
        budgets = list(config.budgets)
        if config.token_budget is not None:
            budgets.append(config.token_budget)
        local = tuple(b for b in budgets if b.store is None)
        shared = tuple(b for b in budgets if b.store is not None)
        self._shared = SharedBudgets(shared) if shared else None
        caps = [b.capacity for b in budgets if isinstance(b, TokenBudget)]
        self._token_cap: float = min(caps) if caps else math.inf
        self._init_engine(
            name=config.name,
            limit_value=initial,
            low=low,
            high=high,
            limiter=limiter,
            min_interval=float(config.min_dispatch_interval),
            max_interval=float(config.max_dispatch_interval),
            jitter=float(config.jitter_fraction),
            rng=config.rng,
            budgets=local,
        )
        if any(isinstance(b, TokenBudget) and b.store is None for b in budgets):
            self._token_budget = next(b for b in local if isinstance(b, TokenBudget))
        self._is_failure = config.is_failure or config.failure_predicate or _any_exception
        self._retry_after = config.retry_after
        self._bad_hints = 0
        retry = config.retry
        self._retry = retry.build(name=config.name) if isinstance(retry, RetryConfig) else retry
        breaker = config.circuit_breaker
        if isinstance(breaker, CircuitBreakerConfig):
            counts = self._counts_quietly
            breaker = breaker.build(name=config.name, ignore=lambda exc: not counts(exc))
        self._breaker = breaker
        self._entry_checks = breaker is not None or self._shared is not None
        self._total = config.resolved_total
        self._on_progress: Listeners[ThrottleSnapshot] = Listeners(
            "headrace.throttle", "on_progress"
        )
        if config.on_progress is not None:
            self._on_progress.add(config.on_progress)
        self._progress = self._total is not None and config.on_progress is not None
        self._progress_step = float(config.progress_step)
        self._refresh()
        self._milestone = 0
        self._closed = False
        self._drained = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        listener = config.on_event or config.on_state_change
        if listener is not None:
            self._listeners.add(listener)
        if self._retry is not None:
            self._retry.add_listener(self._forward_retry)
        guarded = self._retry is not None or self._breaker is not None or self._shared
        self._runner = self._run_guarded if guarded else None

    # -- the main call ---------------------------------------------------------------
    async def execute(self, fn: Callable[[Slot], Awaitable[T]], *, tokens: int = 0) -> T:
        """Run ``fn(slot)`` in a throttled slot (with the retry, if one is set).

        Args:
            fn: an async callable taking the :class:`Slot` (``lambda slot: call(x)``).
            tokens: the estimated tokens of the call, reserved in every token budget at
                admission and replaced by what the call records with
                ``slot.record_tokens``.

        Returns:
            What ``fn`` returned.

        Raises:
            ThrottleClosed: the throttle is closed (also for calls queued at ``close()``).
            TokenBudgetExceeded: ``tokens`` exceeds a token budget's ``max_tokens``.
            CircuitOpenError: the composed breaker is open.
            Exception: the call's own error, unchanged.
        """
        if tokens and (type(tokens) is not int or tokens < 0 or tokens > self._token_cap):
            self._check_tokens(tokens)
        if self._closed:
            raise ThrottleClosed(name=self.name)
        if self._entry_checks:
            if self._shared is not None:
                return await self._execute_shared(fn, tokens)
            self._check_breaker()
        slot = Slot(tokens)
        loop = get_running_loop()
        if loop is not self._loop:
            self._bind_loop(loop)
        if self._waiting or self._in_flight >= self._limit:
            # Queue (inlined: this is the saturated path, one coroutine frame less).
            future: asyncio.Future[None] = loop.create_future()
            self._queue.append((future, slot))
            self._waiting += 1
            try:
                await future
            except BaseException:
                self._abandon(future, slot)
                raise
        elif self._simple:
            # The fast path: no lock, no future, no task, no clock unless it is needed.
            self._in_flight += 1
            slot._epoch = self._epoch
            if self._stamp:
                now = loop.time()
                slot._start = now
                if self._first_admit is None:
                    self._first(now)
        elif self._try_admit(slot, loop.time()):
            await self._enqueue(slot, loop)
        try:
            if self._runner is None:
                result = await fn(slot)
            else:
                result = await self._runner(fn, slot)
        except BaseException as exc:
            self._finish_error(slot, exc, self._runner is not None)
            raise
        self._in_flight -= 1
        self._completed += 1
        if self._slow_finish:
            self._finish_rest(slot)
        elif self._queue:
            queue = self._queue
            if self._simple and self._in_flight < self._limit:
                # Hand the freed slot to the head waiter (inlined _hand_off: saturated path).
                while queue:
                    future, waiter = queue.popleft()
                    if future.done():
                        continue
                    self._waiting -= 1
                    self._in_flight += 1
                    waiter._epoch = self._epoch
                    if self._stamp:
                        waiter._start = loop.time()
                    future.set_result(None)
                    break
            else:
                self._dispatch()
        elif self._closed:  # (mypy keeps the narrowing from the check above the await)
            self._released()  # type: ignore[unreachable]
        return result

    def _check_tokens(self, tokens: int) -> None:
        value: object = tokens
        if isinstance(value, bool) or not isinstance(value, int) or tokens < 0:
            raise ValueError(f"tokens={tokens!r}: must be an int >= 0")
        cap = self._token_cap
        if tokens > cap:
            budget = min(
                (
                    b
                    for b in (*self._budgets, *(self._shared.budgets if self._shared else ()))
                    if isinstance(b, TokenBudget)
                ),
                key=lambda b: b.capacity,
            )
            raise TokenBudgetExceeded(requested=tokens, capacity=int(cap), name=budget.name)

    def _check_breaker(self) -> None:
        breaker = self._breaker
        assert breaker is not None
        if breaker.state is CircuitState.OPEN:
            raise CircuitOpenError(
                retry_after=breaker.snapshot().retry_after,
                name=breaker.name,
                state=CircuitState.OPEN,
            )

    async def _run_guarded(self, fn: Callable[[Slot], Awaitable[T]], slot: Slot) -> T:
        breaker = self._breaker
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
                hint = self._hint(exc)
                if hint != NOT_A_HINT:
                    self._apply_hint(hint, slot._epoch, exc)
                raise

        if self._retry is not None:
            return await self._retry.call(once)
        return await once()

    # -- the full way in and out (acquire(), and calls with shared budgets) -------------
    async def _execute_shared(self, fn: Callable[[Slot], Awaitable[T]], tokens: int) -> T:
        slot = Slot(tokens)
        await self._enter(slot)
        try:
            result = await self._run_guarded(fn, slot)
        except BaseException as exc:
            await self._leave(slot, exc, hinted=True, ran=slot._ran)
            raise
        await self._leave(slot, None, hinted=True)
        return result

    async def _enter(self, slot: Slot) -> None:
        """Admit a call: breaker, shared budgets (no local slot held), then the local queue.

        Every way in that is not :meth:`execute`'s fast path comes through here. On any
        exception (a cancellation included) the call holds nothing: its shared grants are
        given back and its local slot, if it was admitted, released.
        """
        slot._grants = None
        slot._ran = self._breaker is None
        if slot.tokens:
            self._check_tokens(slot.tokens)
        if self._closed:
            raise ThrottleClosed(name=self.name)
        if self._breaker is not None:
            self._check_breaker()
        loop = get_running_loop()
        if loop is not self._loop:
            self._bind_loop(loop)
        shared = self._shared
        if shared is not None:
            granted = await shared.reserve(slot)
            slot._grants = granted
            if self.closed:  # closed while the call waited for a shared budget
                slot._grants = None
                error = ThrottleClosed(name=self.name)
                await shared.give_back(granted, error)
                raise error
        try:
            if self._waiting or self._in_flight >= self._limit:
                await self._enqueue(slot, loop)
            elif self._simple:
                self._admit(slot, loop.time())
            elif self._try_admit(slot, loop.time()):
                await self._enqueue(slot, loop)
        except BaseException as exc:
            grants = slot._grants
            if grants:
                slot._grants = None
                assert shared is not None
                await shared.give_back(grants, exc)
            raise

    async def _leave(
        self, slot: Slot, exc: BaseException | None, *, hinted: bool, ran: bool = True
    ) -> None:
        """Finish an admitted call, then reconcile its shared grants.

        ``ran``: whether the function (or the block) was called; the grants of a call
        the breaker refused are given back, like those of a call that never got a slot.
        """
        grants = slot._grants
        try:
            if exc is None:
                self._finish_ok(slot)
            else:
                self._finish_error(slot, exc, hinted)
        except BaseException as error:  # an interrupt from a listener, the limit, ...
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

    # -- more ways in ------------------------------------------------------------------
    def acquire(self, tokens: int = 0) -> _Acquire:
        """Hold a slot for the body of ``async with`` (it runs once: no retry).

        Args:
            tokens: the estimated tokens, as for :meth:`execute`.

        Returns:
            An async context manager yielding the :class:`Slot`.

        Raises:
            ThrottleClosed: at entry, when the throttle is closed.
            TokenBudgetExceeded: at entry, when ``tokens`` exceeds a token budget.
            CircuitOpenError: at entry, when the composed breaker is open.
        """
        return _Acquire(self, tokens)

    @overload
    def wrap(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def wrap(
        self, /, *, tokens: int = 0
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]: ...

    def wrap(self, fn: Callable[..., Awaitable[Any]] | None = None, /, *, tokens: int = 0) -> Any:
        """Decorate an async function so every call runs through :meth:`execute`.

        Use it bare (``@throttle.wrap``) or with an estimate (``@throttle.wrap(tokens=500)``).

        Args:
            fn: the async function (the wrapper keeps its signature and metadata).
            tokens: the estimated tokens of each call.

        Returns:
            The wrapper, or a decorator when ``fn`` is not given.

        Raises:
            TypeError: when ``fn`` is not an async function (checked at decoration).
        """

        def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
            if not is_async_callable(func):
                raise TypeError(
                    f"Throttle.wrap() decorates async functions only, got {_describe(func)}"
                )

            @functools.wraps(func)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                return await self.execute(lambda slot: func(*args, **kwargs), tokens=tokens)

            return wrapper

        if fn is None:
            return decorate
        return decorate(fn)

    # -- manual control ------------------------------------------------------------------
    def hold(self, seconds: float) -> None:
        """Pause new dispatch for ``seconds`` without lowering the limit (running calls go on).

        A hold never shortens a pause already in place.

        Args:
            seconds: how long to pause, ``>= 0`` (``inf`` pauses until the next longer
                hold is impossible: use with care).

        Raises:
            ValueError: when ``seconds`` is negative or NaN.
        """
        value: object = seconds
        if not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise ValueError(f"seconds={seconds!r}: must be a number >= 0")
        try:
            loop = get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and loop is not self._loop:
            self._bind_loop(loop)
        self._pause(float(seconds), "hold")

    def record_failure(self, exc: BaseException | None = None) -> None:
        """Count a failure of a call made outside the throttle (for the current epoch).

        Args:
            exc: the error; a :class:`ServerBusy` (or one the ``retry_after`` extractor
                recognises) acts as a server hint.
        """
        error = exc if exc is not None else Exception("recorded failure")
        self._failed += 1
        hint = self._hint(error)
        if hint != NOT_A_HINT:
            self._apply_hint(hint, self._epoch, error)
        elif not isinstance(error, CircuitOpenError) and self._counts(error):
            self._sample(None, dropped=True)
        if self._progress:
            self._tick()

    def record_success(self) -> None:
        """Count a success of a call made outside the throttle (it may raise the limit)."""
        self._completed += 1
        if self._sample_ok:
            self._sample(None, dropped=False)
        if self._progress:
            self._tick()

    def set_concurrency(self, n: int) -> None:
        """Set the concurrency limit now (running calls are not cancelled).

        Args:
            n: the new limit, ``min_concurrency <= n <= max_concurrency``.

        Raises:
            ConfigurationError: when ``n`` is outside the bounds.
        """
        check_int("n", n, ge=self._min, le=self._max)
        old = self._limit
        setter = getattr(self._limiter, "_set", None)
        if setter is not None:
            setter(n)
        if self._aimd is not None:
            self._aimd.last_change = self._now()
        if n != old:
            self._change_manual(old, n)

    def _change_manual(self, old: int, new: int) -> None:
        self._limit = new
        self._refresh()
        if new > old and self._queue:
            self._dispatch()
        kind = "decreased" if new < old else "increased"
        interval = (self._interval, self._interval)
        self._emit(
            kind,
            {
                "concurrency": (old, new),
                "dispatch_interval": interval,
                "interval": interval,
                "reason": "manual",
                "epoch": self._epoch,
            },
        )

    def add_listener(self, callback: Callable[[ThrottleEvent], object]) -> Callable[[], None]:
        """Register a listener for :class:`ThrottleEvent` (sync, or async: scheduled as a task).

        A listener's exception is logged on ``headrace.throttle`` and never reaches a call.

        Args:
            callback: called once per event, after the state changed.

        Returns:
            A callable that removes the listener.
        """
        return self._listeners.add(callback)

    # -- shutting down -----------------------------------------------------------------
    def close(self) -> None:
        """Refuse new calls and the calls still queued (with :class:`ThrottleClosed`).

        Calls already running finish normally. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        error_name = self.name
        for future, _ in self._queue:
            if not future.done():
                future.set_exception(ThrottleClosed(name=error_name))
        self._queue.clear()
        self._waiting = 0
        if self._shared is not None:
            self._shared.close(lambda: ThrottleClosed(name=error_name))
        for timer in (self._timer, self._resume_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._resume_timer = None
        self._timer_when = math.inf
        try:
            self._emit("closed", {"in_flight": self._in_flight})
        finally:
            if not self._in_flight:
                self._set_drained()

    async def drain(self, timeout: float | None = None) -> None:
        """Close, then wait until every running call has finished (and async listeners).

        Async listeners, and refunds to shared budget stores sent without waiting, are
        awaited within the same ``timeout``; those still running when it ends are
        cancelled (that is not an error: the calls themselves are done).

        Args:
            timeout: seconds to wait at most (``>= 0``; ``inf`` is None), or None.

        Raises:
            ConfigurationError: when ``timeout`` is not None or a number ``>= 0``.
            GuardTimeout: when calls are still running after ``timeout`` (a ``TimeoutError``).
            KeyboardInterrupt: (or ``SystemExit``) raised by a store in a refund sent
                without waiting, delivered here.
        """
        limit = check_optional_number("timeout", timeout, ge=0, finite=False)
        if limit == math.inf:
            limit = None
        self.close()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        if self._in_flight:
            if loop is not self._loop:
                self._bind_loop(loop)
            waiter: asyncio.Future[None] = loop.create_future()
            self._drain_waiters.append(waiter)
            scope = asyncio.timeout_at(deadline)
            try:
                async with scope:
                    await waiter
            except TimeoutError:
                if scope.expired():
                    raise GuardTimeout(timeout=float(limit or 0.0), name=self.name) from None
                raise
            finally:
                if waiter in self._drain_waiters:
                    self._drain_waiters.remove(waiter)
        if self._shared is not None:
            await self._shared.aclose(_left(loop, deadline))
        await self._listeners.aclose(_left(loop, deadline))
        await self._on_progress.aclose(_left(loop, deadline))
        if self._shared is not None:
            self._shared.raise_interrupt()

    async def aclose(self) -> None:
        """Close and drain without a timeout (the same as leaving ``async with``)."""
        await self.drain()

    async def __aenter__(self) -> Throttle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain()

    # -- reading ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def config(self) -> ThrottleConfig:
        """The configuration the throttle was built from."""
        return self._config

    @property
    def limit(self) -> Limit:
        """The limit algorithm in use (an :class:`AIMD` unless ``limit=`` said otherwise)."""
        return self._limiter

    @property
    def retry(self) -> Retry | None:
        """The composed :class:`headrace_guards.Retry`, if any."""
        return self._retry

    @property
    def circuit_breaker(self) -> CircuitBreaker | None:
        """The composed :class:`headrace_guards.CircuitBreaker`, if any."""
        return self._breaker

    def __repr__(self) -> str:
        who = f"{self.name!r}, " if self.name else ""
        return (
            f"Throttle({who}concurrency={self._limit}/{self._max}, "
            f"in_flight={self._in_flight}, waiting={self._waiting})"
        )


async def _marked(fn: Callable[[Slot], Awaitable[T]], slot: Slot) -> T:
    """Call ``fn(slot)``, noting on the slot that it was called."""
    slot._ran = True
    return await fn(slot)


def _left(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None without one."""
    return None if deadline is None else max(0.0, deadline - loop.time())
