"""``Throttle``: the public facade over admission, budgets, feedback and progress.

A throttle owns small collaborators and composes guards' retry and breaker through them:

- ``Admission`` (``_admission.py``): the FIFO queue, the concurrency gate, pacing and
  pauses, with the in-memory budgets as one more gate;
- ``LocalBudgets`` and ``SharedBudgets`` (``_budget.py``, ``_shared.py``): reserve,
  reconcile and refund;
- ``Feedback`` (``_feedback.py``): outcomes and server hints into limit changes;
- ``Progress`` (``_progress.py``): counters, ETA and ``on_progress``;
- ``Calls`` (``_calls.py``): a call's full way in and out (and ``acquire()``).

Every call is admitted by ``Admission.admit`` and gives its slot back with
``Admission.release``; :meth:`Throttle.execute` inlines the uncontended branch of both,
the one fast path (measured by ``benchmarks/bench_throttle.py``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
from asyncio import get_running_loop
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence, Sized
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final, overload

from headrace_core import CircuitState, GuardTimeout
from headrace_core.lowlevel import (
    Deadline,
    check_optional_number,
    is_async_callable,
    safe_repr,
)
from headrace_core.store import ThrottleStore
from headrace_guards import CircuitBreaker, GuardEvent, Retry
from headrace_throttle._admission import Admission, Pacing
from headrace_throttle._budget import LocalBudgets, RequestBudget, TokenBudget
from headrace_throttle._calls import Acquire, Calls
from headrace_throttle._compat import CircuitBreakerConfig, RetryConfig, gentlify_events
from headrace_throttle._config import ThrottleConfig, default_limit
from headrace_throttle._errors import ThrottleClosed
from headrace_throttle._feedback import Feedback
from headrace_throttle._limit import AIMD, Gradient, Limit, bind_limit
from headrace_throttle._progress import Progress
from headrace_throttle._shared import SharedBudgets
from headrace_throttle._shared_limit import SharedLimit
from headrace_throttle._types import (
    Events,
    Slot,
    ThrottleEvent,
    ThrottleSnapshot,
    ThrottleState,
    check_count,
)
from headrace_throttle._vegas import Vegas

__all__ = ["Throttle"]

P = ParamSpec("P")
T = TypeVar("T")

# The source of Throttle's default arguments: one config with every default.
_DEFAULT = ThrottleConfig()


def _any_exception(exc: BaseException) -> bool:
    # The default is_failure: every Exception is congestion (a CancelledError a callee
    # raised by itself is its failure, but not the service's congestion).
    return isinstance(exc, Exception)


@final
class Throttle:
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
        name: a name for events, errors and snapshots (required with ``store``).
        store: share the adaptive limit with every process that uses this ``name``
            through a :class:`~headrace_core.store.ThrottleStore` (e.g.
            ``headrace_guards.redis.RedisStore``): the concurrency ceiling, the AIMD
            decreases and recoveries, a server's hint to hold off and the pacing.
        total_tasks: gentlify's name for ``total`` (0 means unknown).
        failure_predicate: gentlify's name for ``is_failure``.
        on_state_change: gentlify's callback: the same events in gentlify's words
            (``decelerated`` then ``cooling_started``, ``reaccelerated``, ...).
        **unsupported: nothing else is accepted; gentlify's
            ``safe_ceiling_decay_multiplier`` raises, pointing to the migration page.

    Raises:
        ConfigurationError: naming the argument and the value, when one is invalid.
    """

    __slots__ = (
        "_admission",
        "_breaker",
        "_budgets",
        "_calls",
        "_checked",
        "_config",
        "_events",
        "_feedback",
        "_general",
        "_progress",
        "_retry",
        "_runner",
        "_shared",
        "_shared_limit",
        "name",
    )

    def __init__(
        self,
        max_concurrency: int = _DEFAULT.max_concurrency,
        *,
        initial_concurrency: int | None = _DEFAULT.initial_concurrency,
        min_concurrency: int = _DEFAULT.min_concurrency,
        failure_threshold: int = _DEFAULT.failure_threshold,
        failure_window: float = _DEFAULT.failure_window,
        decrease_factor: float = _DEFAULT.decrease_factor,
        cooling_period: float = _DEFAULT.cooling_period,
        increase_by: int = _DEFAULT.increase_by,
        min_dispatch_interval: float = _DEFAULT.min_dispatch_interval,
        max_dispatch_interval: float = _DEFAULT.max_dispatch_interval,
        jitter_fraction: float = _DEFAULT.jitter_fraction,
        rng: random.Random | None = _DEFAULT.rng,
        budgets: Sequence[TokenBudget | RequestBudget] = _DEFAULT.budgets,
        token_budget: TokenBudget | None = _DEFAULT.token_budget,
        is_failure: Callable[[BaseException], bool] | None = _DEFAULT.is_failure,
        retry_after: Callable[[BaseException], float | str | None] | None = _DEFAULT.retry_after,
        retry: Retry | RetryConfig | None = _DEFAULT.retry,
        circuit_breaker: CircuitBreaker | CircuitBreakerConfig | None = _DEFAULT.circuit_breaker,
        total: int | None = _DEFAULT.total,
        on_event: Callable[[ThrottleEvent], object] | None = _DEFAULT.on_event,
        on_progress: Callable[[ThrottleSnapshot], object] | None = _DEFAULT.on_progress,
        progress_step: float = _DEFAULT.progress_step,
        limit: AIMD | Gradient | Vegas | Limit | None = _DEFAULT.limit,
        name: str | None = _DEFAULT.name,
        store: ThrottleStore | None = _DEFAULT.store,
        total_tasks: int | None = _DEFAULT.total_tasks,
        failure_predicate: Callable[[BaseException], bool] | None = _DEFAULT.failure_predicate,
        on_state_change: Callable[[ThrottleEvent], object] | None = _DEFAULT.on_state_change,
        **unsupported: Any,
    ) -> None:
        # The parameters spell out ThrottleConfig's fields for type checkers and
        # ``inspect.signature``; their values, defaults and validation are the config's
        # (a test checks that the two lists agree).
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
        self.name = name = config.name
        self._events = events = Events(name)
        if config.on_event is not None:
            events.listeners.add(config.on_event)
        if config.on_state_change is not None:  # gentlify's callback: gentlify's words
            events.listeners.add(gentlify_events(config.on_state_change, config.cooling_period))
        high, low = config.max_concurrency, config.min_concurrency
        initial = config.initial_concurrency if config.initial_concurrency is not None else high
        limiter: Limit = config.limit if config.limit is not None else default_limit(config)
        budgets = tuple(config.budgets)
        if config.token_budget is not None:
            budgets = (*budgets, config.token_budget)
        local = tuple(b for b in budgets if b.store is None)
        shared = tuple(b for b in budgets if b.store is not None)
        self._budgets = LocalBudgets(local) if local else None
        self._shared = SharedBudgets(shared) if shared else None
        self._progress = Progress(config.resolved_total, config.progress_step, config.on_progress)
        min_interval = float(config.min_dispatch_interval)
        self._admission = admission = Admission(
            limit=initial,
            timed=not isinstance(limiter, AIMD),
            pacing=Pacing(min_interval, float(config.jitter_fraction), config.rng, events.owner),
            budgets=self._budgets,
            events=events,
            owner=f"Throttle({name!r})" if name else "Throttle",
        )
        # The limit reads the admission's clock: the loop in use, which also answers
        # outside a running loop (record_failure() before or after asyncio.run()).
        admission.limit = bind_limit(limiter, initial, low, high, clock=admission.now)
        self._feedback = feedback = Feedback(
            admission,
            events,
            limit=limiter,
            low=low,
            high=high,
            min_interval=min_interval,
            max_interval=float(config.max_dispatch_interval),
            is_failure=config.is_failure or config.failure_predicate or _any_exception,
            retry_after=config.retry_after,
            accounting=self._progress.reporting,
        )
        self._shared_limit: SharedLimit | None = None
        if config.store is not None:
            assert name is not None  # the config requires it
            feedback.share()
            self._shared_limit = SharedLimit(
                config.store, name, _shared_config(config), feedback.follow_shared
            )
        retry = config.retry
        self._retry = retry.build(name=name) if isinstance(retry, RetryConfig) else retry
        if self._retry is not None:
            self._retry.add_listener(self._forward_retry)
        breaker = config.circuit_breaker
        if isinstance(breaker, CircuitBreakerConfig):
            counts = feedback.counts_quietly
            breaker = breaker.build(name=name, ignore=lambda exc: not counts(exc))
        self._breaker = breaker
        self._calls = calls = Calls(
            admission=admission,
            budgets=budgets,
            local=self._budgets,
            shared=self._shared,
            shared_limit=self._shared_limit,
            feedback=feedback,
            progress=self._progress,
            breaker=breaker,
            retry=self._retry,
            snapshot=self.snapshot,
            name=name,
        )
        # Whether a call must be checked before admission: closed (set by close()), the
        # breaker, the shared budgets.
        self._general = self._shared is not None or self._shared_limit is not None
        self._checked = breaker is not None or self._general
        guarded = self._retry is not None or breaker is not None or self._general
        self._runner = calls.run if guarded else None

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
        if tokens and (type(tokens) is not int or tokens < 0 or tokens > self._calls.token_cap):
            self._calls.check_tokens(tokens)
        admission = self._admission
        if self._checked:
            if admission.closed:
                raise ThrottleClosed(name=self.name)
            if self._general:
                return await self._calls.execute(fn, tokens)
            if self._breaker is not None:
                self._calls.check_breaker()
        slot = Slot(tokens)
        loop = get_running_loop()
        if loop is not admission.loop:
            self._calls.bind(loop)
        if not admission.waiting and admission.simple and admission.in_flight < admission.limit:
            # The one inlined fast path, its way in: Admission.admit()'s uncontended
            # branch (no lock, no future, no task, no clock unless it is needed).
            admission.in_flight += 1
            slot._epoch = admission.epoch
            if admission.stamp:
                admission.mark_start(slot, loop.time())
        else:
            turn = admission.admit(slot)
            if turn is not None:
                try:
                    await turn
                except BaseException:
                    admission.abandon(turn, slot)
                    raise
        try:
            if self._runner is None:
                result = await fn(slot)
            else:
                result = await self._runner(fn, slot)
        except BaseException as exc:
            self._calls.finish_error(slot, exc, hinted=self._runner is not None)
            raise
        # ... and its way out: Calls.finish_ok() (Admission.release(), the counter, the
        # budgets' reconciliation, and dispatch() only when someone waits).
        admission.in_flight -= 1
        self._progress.completed += 1
        if self._budgets is not None:
            self._budgets.reconcile(slot)
        if not self._feedback.quiet:
            self._calls.account_success(slot)
        elif admission.queue or admission.closed:
            admission.dispatch()
        return result

    # -- more ways in ------------------------------------------------------------------
    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under the throttle: the guards' ``call`` protocol.

        With :meth:`snapshot` and :meth:`add_listener`, this makes a throttle a guard that
        composes in ``headrace_guards.pipeline()`` like any other
        (``pipeline(Retry(3), throttle, CircuitBreaker("svc"))``). It is
        :meth:`execute` for a callable that needs no :class:`Slot`.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            What ``fn`` returned.

        Raises:
            ThrottleClosed: the throttle is closed.
            CircuitOpenError: the composed breaker is open.
            Exception: the call's own error, unchanged.
        """
        return await self.execute(lambda _slot: fn(*args, **kwargs))

    def acquire(self, tokens: int = 0) -> Acquire:
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
        return Acquire(self._calls, self._breaker, tokens)

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
                    "Throttle.wrap() decorates async functions only, got "
                    f"{type(func).__name__} {safe_repr(func, 80)}"
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
            raise ValueError(f"seconds={safe_repr(seconds)}: must be a number >= 0")
        try:
            loop = get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and loop is not self._admission.loop:
            self._calls.bind(loop)
        self._admission.pause(float(seconds), "hold")

    def record_failure(self, exc: BaseException | None = None) -> None:
        """Count a failure of a call made outside the throttle (for the current epoch).

        Args:
            exc: the error; a :class:`ServerBusy` (or one the ``retry_after`` extractor
                recognises) acts as a server hint.
        """
        self._calls.record_failure(exc if exc is not None else Exception("recorded failure"))

    def record_success(self, duration: float | None = None, tokens_used: int = 0) -> None:
        """Count a success of a call made outside the throttle (it may raise the limit).

        It counts one completed call (``snapshot().completed``), as a call that returned.

        Args:
            duration: the call's duration in seconds, if known: the latency sample of a
                limit that learns from latency (:class:`Gradient`, :class:`Vegas`, your
                own :class:`Limit`); :class:`AIMD` ignores it.
            tokens_used: tokens the call consumed, charged now as :meth:`record_tokens`
                does (gentlify's argument).

        Raises:
            ValueError: when ``duration`` is not a finite number ``>= 0``, or
                ``tokens_used`` not an int ``>= 0`` (nothing is counted then).
        """
        if duration is not None:
            value: object = duration
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"duration={safe_repr(duration)}: must be a finite number >= 0 or None"
                )
            duration = float(duration)
        if tokens_used:
            check_count("tokens_used", tokens_used)
        self._calls.record_success(duration, tokens_used)

    def record_tokens(self, count: int) -> None:
        """Charge ``count`` tokens, consumed outside a throttled call, to the token budgets.

        The charge starts now and leaves the window ``window_seconds`` later, like a
        call's. Without a token budget nothing is counted (as in gentlify). Budgets shared
        through a ``store=`` are charged by the calls themselves (``slot.record_tokens``),
        not here.

        Args:
            count: tokens consumed, an int ``>= 0``.

        Raises:
            ValueError: when ``count`` is not an int ``>= 0``.
        """
        check_count("count", count)
        self._calls.record_tokens(count)

    def set_concurrency(self, n: int) -> None:
        """Set the concurrency limit now (running calls are not cancelled).

        Args:
            n: the new limit, ``min_concurrency <= n <= max_concurrency``.

        Raises:
            ConfigurationError: when ``n`` is outside the bounds.
        """
        self._feedback.set_concurrency(n)

    def add_listener(self, callback: Callable[[ThrottleEvent], object]) -> Callable[[], None]:
        """Register a listener for :class:`ThrottleEvent` (sync, or async: scheduled as a task).

        A listener's exception is logged on ``headrace.throttle`` and never reaches a call.

        Args:
            callback: called once per event, after the state changed.

        Returns:
            A callable that removes the listener.
        """
        return self._events.listeners.add(callback)

    def _forward_retry(self, event: GuardEvent) -> None:
        if event.kind == "retry":
            data = {"attempt": event.attempt, "delay": event.delay, "error": event.error}
            self._events.emit("retry", data, event.at)

    # -- shutting down -----------------------------------------------------------------
    def close(self) -> None:
        """Refuse new calls and the calls still queued (with :class:`ThrottleClosed`).

        Calls already running finish normally. Idempotent.
        """
        admission = self._admission
        if admission.closed:
            return
        self._checked = True  # execute() now checks closed first
        name = self.name
        admission.close(lambda: ThrottleClosed(name=name))
        if self._shared is not None:
            self._shared.close(lambda: ThrottleClosed(name=name))
        try:
            self._events.emit("closed", {"in_flight": admission.in_flight}, admission.now())
        finally:
            admission.dispatch()  # nothing in flight: drained now

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
        loop = get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        admission = self._admission
        if admission.in_flight:
            if loop is not admission.loop:
                self._calls.bind(loop)
            name = self.name
            seconds = float(limit or 0.0)
            async with Deadline.at(deadline, lambda: GuardTimeout(timeout=seconds, name=name)):
                await admission.wait_drained()
        if self._shared is not None:
            await self._shared.aclose(_left(loop, deadline))
        await self._events.listeners.aclose(_left(loop, deadline))
        await self._progress.listeners.aclose(_left(loop, deadline))
        if self._shared_limit is not None:
            await self._shared_limit.aclose(_left(loop, deadline))
        if self._shared is not None:
            self._shared.raise_interrupt()
        if self._shared_limit is not None:
            self._shared_limit.raise_interrupt()

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
    def snapshot(self) -> ThrottleSnapshot:
        """Return a frozen view of the throttle's state, counters and progress (no await).

        Returns:
            A :class:`ThrottleSnapshot`.
        """
        admission = self._admission
        now = admission.now()
        paused = admission.paused_until(now)
        high = self._config.max_concurrency
        if admission.closed:
            state = ThrottleState.DRAINING if admission.in_flight else ThrottleState.CLOSED
        elif self._breaker is not None and self._breaker.state is CircuitState.OPEN:
            state = ThrottleState.CIRCUIT_OPEN
        elif paused is not None:
            state = ThrottleState.PAUSED
        elif admission.limit < high or self._feedback.cooling:
            state = ThrottleState.COOLING
        else:
            state = ThrottleState.RUNNING
        budgets = self._budgets
        used, remaining = budgets.token_usage(now) if budgets is not None else (None, None)
        progress = self._progress
        rate, percentage, eta = progress.figures(now, admission.first_admit)
        shared_waiting = self._shared.waiting if self._shared is not None else 0
        return ThrottleSnapshot(
            concurrency=admission.limit,
            max_concurrency=high,
            in_flight=admission.in_flight,
            waiting=admission.waiting + shared_waiting,
            dispatch_interval=admission.interval,
            state=state,
            tokens_used=used,
            tokens_remaining=remaining,
            completed=progress.completed,
            failed=progress.failed,
            total=progress.total,
            percentage=percentage,
            rate=rate,
            eta_seconds=eta,
            paused_until=paused,
            epoch=admission.epoch,
            name=self.name,
            shared=None if self._shared_limit is None else self._shared_limit.snapshot(),
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._admission.closed

    @property
    def config(self) -> ThrottleConfig:
        """The configuration the throttle was built from."""
        return self._config

    @property
    def limit(self) -> Limit:
        """The limit algorithm in use (an :class:`AIMD` unless ``limit=`` said otherwise)."""
        return self._feedback.limit

    @property
    def retry(self) -> Retry | None:
        """The composed :class:`headrace_guards.Retry`, if any."""
        return self._retry

    @property
    def circuit_breaker(self) -> CircuitBreaker | None:
        """The composed :class:`headrace_guards.CircuitBreaker`, if any."""
        return self._breaker

    @property
    def _queue(self) -> Sized:
        # The admission queue, for tests that check it is left empty.
        return self._admission.queue

    def __repr__(self) -> str:
        who = f"{self.name!r}, " if self.name else ""
        admission = self._admission
        return (
            f"Throttle({who}concurrency={admission.limit}/{self._config.max_concurrency}, "
            f"in_flight={admission.in_flight}, waiting={admission.waiting})"
        )


def _left(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None without one."""
    return None if deadline is None else max(0.0, deadline - loop.time())


def _shared_config(config: ThrottleConfig) -> dict[str, Any]:
    """The settings a shared limit sends with every store call."""
    return {
        "max_concurrency": config.max_concurrency,
        "min_concurrency": config.min_concurrency,
        "initial_concurrency": config.initial_concurrency,
        "failure_threshold": config.failure_threshold,
        "failure_window": config.failure_window,
        "decrease_factor": config.decrease_factor,
        "cooling_period": config.cooling_period,
        "increase_by": config.increase_by,
        "min_dispatch_interval": config.min_dispatch_interval,
    }
