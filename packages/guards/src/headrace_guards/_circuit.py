"""The circuit breaker: trip policies, slow calls, generations and half-open permits."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final

from headrace_core import CircuitOpenError, CircuitState, ConfigurationError
from headrace_core.backoff import Backoff, next_delay
from headrace_core.lowlevel import (
    Clock,
    check_callable,
    check_int,
    check_number,
    check_optional_number,
    is_async_callable,
    within,
)
from headrace_core.store import BreakerStore
from headrace_guards._circuit_store import (
    _FAILURE,
    _NEUTRAL,
    _SUCCESS,
    BreakerSnapshot,
    call_store,
    store_admit,
    store_config,
    store_end,
)
from headrace_guards._common import (
    Background,
    ExcSpec,
    GuardBase,
    GuardEvent,
    NotAsyncError,
    check_clock,
    check_store,
    compile_spec,
    delays_of,
    now_of,
    raise_if_not_async,
)
from headrace_guards._policies import Consecutive, CountWindow, Policy, TimeWindow, make_window

P = ParamSpec("P")
T = TypeVar("T")

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


@final
class CircuitBreaker(GuardBase):
    """Stop calling a failing service for a while, then probe it before closing again.

    Outcomes: a cancel-like exception or an ``ignore`` match is neutral; a ``record``
    match is a failure; any other ``Exception`` is a success; a returned value is a
    failure only when ``failure_on_result`` says so. A slow call (``slow_call_duration``)
    still returns its result. Every transition starts a new *generation*; a result of an
    older generation updates counters only.

    Args:
        name: the breaker's name (required with ``store=``).
        failure_threshold: consecutive failures that open the breaker (``>= 1``); leave it
            at its default when ``policy`` is given.
        policy: :class:`Consecutive`, :class:`CountWindow` or :class:`TimeWindow`.
        recovery_timeout: seconds OPEN lasts before a probe is admitted (finite, ``> 0``).
        half_open_max_calls: probes admitted, and successes needed to close (``>= 1``).
        half_open_timeout: HALF_OPEN with no decision for this long opens again.
        record: errors that count as failures (an exception spec).
        ignore: errors that are neutral (checked before ``record``).
        failure_on_result: a predicate on returned values; true counts as a failure.
            A ``record``, ``ignore`` or ``failure_on_result`` predicate that raises counts
            the call as a failure (any half-open permit is returned) and its error
            reaches the caller.
        slow_call_duration: calls at least this long (on the guard clock) are slow.
        slow_call_rate: a window trips when slow calls / calls reaches this, in ``(0, 1]``.
        open_backoff: when set, each re-open from HALF_OPEN lasts the schedule's next delay
            (the schedule restarts when the breaker closes). A schedule that runs out or
            yields a bad delay re-opens for ``recovery_timeout`` instead and raises
            :class:`~headrace_core.BackoffError` to the caller that re-opened it.
        store: shared state (e.g. ``headrace_guards.redis.RedisStore``); default in memory.
            The store's optional ``check_name(name)`` is called here.
        clock: a zero-argument callable returning seconds; default the loop's time.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = (
        "_background",
        "_clock",
        "_disabled",
        "_entered",
        "_failures",
        "_fast",
        "_fast_ok",
        "_forced",
        "_gen",
        "_ho_in_flight",
        "_ho_max",
        "_ho_ok",
        "_ho_since",
        "_ho_timeout",
        "_ignore",
        "_ignored",
        "_last_reason",
        "_open_backoff",
        "_open_delays",
        "_open_until",
        "_opened_at",
        "_record",
        "_rejected",
        "_result_check",
        "_slow",
        "_slow_after",
        "_slow_rate",
        "_state",
        "_store",
        "_streak",
        "_successes",
        "_threshold",
        "_window",
        "policy",
        "recovery_timeout",
    )

    def __init__(
        self,
        name: str | None = None,
        *,
        failure_threshold: int = 5,
        policy: Policy | None = None,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        half_open_timeout: float | None = None,
        record: ExcSpec = Exception,
        ignore: ExcSpec = (),
        failure_on_result: Callable[[Any], bool] | None = None,
        slow_call_duration: float | None = None,
        slow_call_rate: float = 1.0,
        open_backoff: Backoff | None = None,
        store: BreakerStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._init_base(name)
        check_int("failure_threshold", failure_threshold, ge=1)
        if policy is None:
            policy = Consecutive(failure_threshold)
        elif not isinstance(policy, Consecutive | CountWindow | TimeWindow):
            raise ConfigurationError.argument_error(
                "policy", policy, "must be Consecutive, CountWindow, TimeWindow or None"
            )
        elif failure_threshold != 5:
            raise ConfigurationError.argument_error(
                "failure_threshold",
                failure_threshold,
                "must be left at its default when policy= is given",
            )
        self.policy: Policy = policy
        self._threshold = policy.threshold if isinstance(policy, Consecutive) else 0
        self._window = make_window(policy)
        self.recovery_timeout = check_number("recovery_timeout", recovery_timeout, gt=0)
        self._ho_max = check_int("half_open_max_calls", half_open_max_calls, ge=1)
        self._ho_timeout = check_optional_number("half_open_timeout", half_open_timeout, gt=0)
        self._record = compile_spec("record", record)
        self._ignore = compile_spec("ignore", ignore)
        check_callable("failure_on_result", failure_on_result)
        self._result_check = failure_on_result
        self._slow_after = check_optional_number("slow_call_duration", slow_call_duration, gt=0)
        self._slow_rate = check_number("slow_call_rate", slow_call_rate, gt=0, le=1)
        if open_backoff is not None and not callable(getattr(open_backoff, "delays", None)):
            raise ConfigurationError.argument_error(
                "open_backoff", open_backoff, "must be a backoff schedule with delays()"
            )
        self._open_backoff = open_backoff
        self._open_delays: Iterator[float] | None = None
        self._store: BreakerStore | None = check_store(
            store, self.name, ("admit", "record", "force", "reset")
        )
        self._background = Background(self._describe())
        self._clock = check_clock(clock)
        self._state = CLOSED
        self._gen = 0
        self._fast_ok = self._window is None and self._slow_after is None and store is None
        self._fast = self._fast_ok
        self._forced = False
        self._disabled = False
        self._open_until = 0.0
        self._opened_at = 0.0
        self._ho_since = 0.0
        self._ho_in_flight = 0
        self._ho_ok = 0
        self._streak = 0
        self._successes = 0
        self._failures = 0
        self._ignored = 0
        self._slow = 0
        self._rejected = 0
        self._last_reason: str | None = None
        self._entered: dict[asyncio.Task[Any], list[tuple[int, CircuitState, bool, float]]] = {}

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.name})"

    # -- the call --------------------------------------------------------------------
    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` if the breaker admits it, and record the outcome.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            What ``fn`` returned (also when the call was slow or counted as a failure).

        Raises:
            CircuitOpenError: when the breaker is open, or its half-open probes are taken.
            Exception: the callee's own error, unchanged (after it was recorded).
        """
        if self._fast:
            # CLOSED, consecutive policy, no slow-call timing: no clock read, no lock.
            gen = self._gen
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, TypeError):
                    raise_if_not_async(fn, exc)
                self._closed_error(gen, exc)
                raise
            check = self._result_check
            if check is not None:
                try:
                    failed = bool(check(result))
                except BaseException:
                    self._closed_failure(gen)
                    raise
                if failed:
                    self._closed_failure(gen)
                    return result
            self._successes += 1
            if self._streak and gen == self._gen:
                self._streak = 0
            return result
        if self._store is not None:
            return await call_store(self, fn, args, kwargs)  # type: ignore[no-any-return]
        return await self._call_slow(fn, args, kwargs)  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call runs through the breaker.

        The closed-state fast path is inlined into the wrapper (one frame, not two).

        Args:
            fn: the coroutine function to protect.

        Returns:
            An ``async def`` with the same signature and ``functools.wraps`` metadata.

        Raises:
            TypeError: when ``fn`` is not an async function.
        """
        if not is_async_callable(fn):
            raise TypeError(f"CircuitBreaker decorates async functions only, got {fn!r}")
        call = self.call

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            if not self._fast or self._result_check is not None:
                return await call(fn, *args, **kwargs)
            gen = self._gen
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, TypeError):
                    raise_if_not_async(fn, exc)
                self._closed_error(gen, exc)
                raise
            self._successes += 1
            if self._streak and gen == self._gen:
                self._streak = 0
            return result

        return guarded

    def _closed_error(self, gen: int, exc: Exception) -> None:
        try:
            if self._ignore(exc):
                self._ignored += 1
                return
            failed = self._record(exc)
        except BaseException:
            self._closed_failure(gen, exc)  # a raising predicate: a failure
            raise
        if failed:
            self._closed_failure(gen, exc)
        else:
            self._successes += 1
            if self._streak and gen == self._gen:
                self._streak = 0

    def _closed_failure(self, gen: int, cause: BaseException | None = None) -> None:
        self._failures += 1
        if gen == self._gen:
            self._streak += 1
            if self._streak >= self._threshold:
                self._transition(OPEN, "failures", now_of(self._clock), cause=cause)

    async def _call_slow(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        start = now_of(self._clock)
        gen, state, permit = self._admit(start)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._end_error(gen, state, permit, start, fn, exc)
            raise
        self._end_result(gen, state, permit, start, result)
        return result

    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return _NEUTRAL
        if self._ignore(exc):
            self._ignored += 1
            return _NEUTRAL
        return _FAILURE if self._record(exc) else _SUCCESS

    def _end_error(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        fn: object,
        exc: BaseException,
    ) -> None:
        """Settle a call that raised ``exc``; every path returns a held permit."""
        try:
            if fn is not None and isinstance(exc, TypeError):
                raise_if_not_async(fn, exc)
            outcome = self._classify(exc)
        except NotAsyncError:
            self._settle(gen, state, permit, _NEUTRAL, start, start)
            raise
        except BaseException:
            self._end(gen, state, permit, start, _FAILURE, exc)  # a raising predicate
            raise
        self._end(gen, state, permit, start, outcome, exc)

    def _end_result(
        self, gen: int, state: CircuitState, permit: bool, start: float, result: Any
    ) -> None:
        """Settle a call that returned ``result``; every path returns a held permit."""
        check = self._result_check
        try:
            outcome = _FAILURE if check is not None and check(result) else _SUCCESS
        except BaseException as exc:
            self._end(gen, state, permit, start, _FAILURE, exc)  # a raising predicate
            raise
        self._end(gen, state, permit, start, outcome, None)

    def _end(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        outcome: int,
        cause: BaseException | None,
    ) -> None:
        try:
            end = now_of(self._clock)
        except BaseException:
            self._settle(gen, state, permit, outcome, start, start, cause)
            raise
        self._settle(gen, state, permit, outcome, start, end, cause)

    # -- admission and recording -----------------------------------------------------
    def _refresh(self, now: float) -> CircuitState:
        state = self._state
        if state is OPEN:
            if not self._forced and within(self._open_until, now):
                self._transition(HALF_OPEN, "recovery_timeout", now)
        elif state is HALF_OPEN:
            timeout = self._ho_timeout
            if timeout is not None and within(self._ho_since + timeout, now):
                self._transition(OPEN, "half_open_timeout", now)
        return self._state

    def _admit(self, now: float) -> tuple[int, CircuitState, bool]:
        state = self._refresh(now)
        if self._disabled or state is CLOSED:
            return self._gen, state, False
        if state is OPEN:
            retry_after = math.inf if self._forced else self._open_until - now
            raise self._reject(now, retry_after, OPEN)
        if self._ho_in_flight + self._ho_ok < self._ho_max:
            self._ho_in_flight += 1
            return self._gen, HALF_OPEN, True
        raise self._reject(now, 0.0, HALF_OPEN)

    def _reject(self, now: float, retry_after: float, state: CircuitState) -> CircuitOpenError:
        self._rejected += 1
        error = CircuitOpenError(retry_after=retry_after, name=self.name, state=state)
        if self._listeners:
            self._listeners.emit(
                GuardEvent(
                    source=self._source,
                    kind="rejected",
                    at=now,
                    old_state=state,
                    new_state=state,
                    error=error,
                )
            )
        return error

    def _settle(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        outcome: int,
        start: float,
        end: float,
        cause: BaseException | None = None,
    ) -> None:
        current = gen == self._gen
        if permit and current:
            self._ho_in_flight -= 1
        if outcome == _NEUTRAL:
            return
        failure = outcome == _FAILURE
        slow_after = self._slow_after
        slow = slow_after is not None and within(slow_after, end - start)
        if failure:
            self._failures += 1
        else:
            self._successes += 1
        if slow:
            self._slow += 1
        if not current or self._disabled:
            return
        if state is HALF_OPEN:
            if failure:
                self._transition(OPEN, "half_open_failure", end, cause=cause)
            elif slow:
                self._transition(OPEN, "slow", end, cause=cause)
            else:
                self._ho_ok += 1
                if self._ho_ok >= self._ho_max:
                    self._transition(CLOSED, "probes_succeeded", end)
            return
        window = self._window
        if window is None:
            if failure or slow:
                self._streak += 1
                if self._streak >= self._threshold:
                    self._transition(OPEN, "failures" if failure else "slow", end)
            else:
                self._streak = 0
            return
        window.add(failure, slow, end)
        reason = window.verdict(self._slow_rate)
        if reason is not None:
            self._transition(OPEN, reason, end)

    def _open_duration(self, cause: BaseException | None) -> float:
        """The next delay of ``open_backoff``; raises (after a restart) when it fails."""
        backoff = self._open_backoff
        assert backoff is not None
        owner = "CircuitBreaker(open_backoff=...)"
        try:
            if self._open_delays is None:
                self._open_delays = delays_of(backoff.delays(), owner, cause)
            return next_delay(self._open_delays, owner=owner, cause=cause)
        except BaseException:
            self._open_delays = None  # the next re-open starts the schedule again
            raise

    def _transition(
        self,
        new: CircuitState,
        reason: str,
        now: float,
        *,
        forced: bool = False,
        cause: BaseException | None = None,
    ) -> None:
        duration = self.recovery_timeout
        failed: BaseException | None = None
        if (
            new is OPEN
            and self._state is HALF_OPEN
            and self._open_backoff is not None
            and self._store is None  # a shared breaker's OPEN period is the store's
        ):
            try:
                duration = self._open_duration(cause)
            except BaseException as exc:  # open for recovery_timeout, then raise it
                failed = exc
        old = self._state
        self._state = new
        self._gen += 1
        self._last_reason = reason
        if new is OPEN:
            self._opened_at = now
            self._open_until = math.inf if forced else now + duration
            self._forced = forced
        elif new is HALF_OPEN:
            self._ho_since = now
            self._ho_in_flight = 0
            self._ho_ok = 0
        else:
            self._streak = 0
            if self._window is not None:
                self._window.clear()
            self._open_delays = None
            self._forced = False
        self._fast = new is CLOSED and self._fast_ok and not self._disabled
        if old is not new and self._listeners:
            self._listeners.emit(
                GuardEvent(
                    source=self._source,
                    kind="state_change",
                    at=now,
                    old_state=old,
                    new_state=new,
                    reason=reason,
                )
            )
        if failed is not None:
            raise failed

    # -- async with ------------------------------------------------------------------
    async def __aenter__(self) -> CircuitBreaker:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CircuitBreaker must be used inside a task")
        start = now_of(self._clock)
        if self._store is not None:
            gen, state = await store_admit(self, start, store_config(self))
            permit = False
        else:
            gen, state, permit = self._admit(start)
        self._entered.setdefault(task, []).append((gen, state, permit, start))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._entered.get(task) if task is not None else None
        if not stack:
            raise RuntimeError("CircuitBreaker.__aexit__ without __aenter__ in this task")
        gen, state, permit, start = stack.pop()
        if not stack:
            del self._entered[task]  # type: ignore[arg-type]
        if self._store is not None:
            await store_end(self, gen, state, start, store_config(self), exc, None)
        elif exc is None:
            self._end(gen, state, permit, start, _SUCCESS, None)
        else:
            self._end_error(gen, state, permit, start, None, exc)

    # -- reading and manual control ---------------------------------------------------
    def _now_or_none(self) -> float | None:
        try:
            return now_of(self._clock)
        except RuntimeError:
            return None

    @property
    def state(self) -> CircuitState:
        """The current state, after any lazy transition that is due now."""
        now = self._now_or_none()
        if now is not None and self._store is None:
            return self._refresh(now)
        return self._state

    @property
    def generation(self) -> int:
        """Incremented by every transition."""
        return self._gen

    def snapshot(self) -> BreakerSnapshot:
        """Return the state and counters (O(1), no await).

        Returns:
            A frozen :class:`BreakerSnapshot`.
        """
        now = self._now_or_none()
        state = self.state
        window = self._window
        if window is not None:
            if now is not None:
                window.expire(now)
            calls = window.calls
            failure_count = window.failures
            failure_rate, slow_rate = window.rates()
        else:
            calls, failure_count, failure_rate, slow_rate = 0, self._streak, 0.0, 0.0
        if state is OPEN:
            if self._forced:
                retry_after = math.inf
            else:
                retry_after = max(0.0, self._open_until - now) if now is not None else 0.0
        else:
            retry_after = 0.0
        return BreakerSnapshot(
            name=self.name,
            state=state,
            generation=self._gen,
            failure_count=failure_count,
            successes=self._successes,
            failures=self._failures,
            ignored=self._ignored,
            slow=self._slow,
            rejected=self._rejected,
            window_calls=calls,
            failure_rate=failure_rate,
            slow_rate=slow_rate,
            retry_after=retry_after,
            last_reason=self._last_reason,
            forced_open=self._forced,
            disabled=self._disabled,
            half_open_in_flight=self._ho_in_flight if state is HALF_OPEN else 0,
        )

    def get_stats(self) -> BreakerSnapshot:
        """Alias of :meth:`snapshot` (kompoz's spelling).

        Returns:
            A frozen :class:`BreakerSnapshot`.
        """
        return self.snapshot()

    def _manual_now(self) -> float:
        now = self._now_or_none()
        return 0.0 if now is None else now

    async def reset(self) -> None:
        """Close the breaker, clear its counters and windows, and clear forced-open."""
        if self._store is not None:  # the shared state first: if it fails, nothing changed
            assert self.name is not None
            await self._store.reset(self.name)
        self._forced = False
        self._successes = self._failures = self._ignored = self._slow = self._rejected = 0
        self._transition(CLOSED, "reset", self._manual_now())

    async def force_open(self) -> None:
        """Hold the breaker OPEN until :meth:`reset` (rejections carry ``retry_after=inf``)."""
        if self._store is not None:
            assert self.name is not None
            await self._store.force(self.name, OPEN, **store_config(self))
        self._transition(OPEN, "forced", self._manual_now(), forced=True)

    async def disable(self) -> None:
        """Let every call pass: counters are kept, the breaker never transitions."""
        self._disabled = True
        self._transition(CLOSED, "disabled", self._manual_now())

    async def enable(self) -> None:
        """Undo :meth:`disable`: the breaker records outcomes and transitions again."""
        self._disabled = False
        self._fast = self._state is CLOSED and self._fast_ok

    async def aclose(self) -> None:
        """Wait for pending async listeners and store records sent in the background.

        The breaker stays usable.
        """
        await self._background.aclose()
        await self._listeners.aclose()
