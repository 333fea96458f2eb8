"""The circuit breaker: its public face, its snapshot and its closed-state fast path.

The state itself is a backend the breaker owns (``_circuit_state.py``): the in-process
state machine, or a shared ``BreakerStore`` (``_circuit_store.py``). The closed-state
fast path reads the in-process state's fields directly; every other path calls the
backend.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, final

from headrace_core import CircuitState, ConfigurationError
from headrace_core.backoff import Backoff
from headrace_core.lowlevel import (
    Clock,
    check_callable,
    check_int,
    check_number,
    check_optional_number,
    is_async_callable,
    safe_repr,
)
from headrace_core.store import BreakerStore
from headrace_guards._circuit_state import BreakerState, MemoryState, Settings, now_or_none
from headrace_guards._circuit_store import StoreState
from headrace_guards._common import (
    Background,
    ExcSpec,
    GuardBase,
    check_clock,
    check_store,
    compile_spec,
    now_of,
)
from headrace_guards._policies import Consecutive, CountWindow, Policy, TimeWindow

P = ParamSpec("P")
T = TypeVar("T")

OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


@final
@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The state and counters of a :class:`CircuitBreaker`.

    Attributes:
        name: the breaker's name.
        state: the current state (after any due lazy transition).
        generation: incremented by every transition.
        failure_count: the current consecutive streak, or the failures in the window.
        successes: calls that counted as successes.
        failures: calls that counted as failures.
        ignored: calls whose error matched ``ignore``.
        slow: calls at least ``slow_call_duration`` long.
        rejected: calls refused without running.
        window_calls: calls in the window (0 under :class:`Consecutive`).
        failure_rate: failures / calls in the window.
        slow_rate: slow calls / calls in the window.
        retry_after: seconds until a probe is admitted (``inf`` when forced open, 0 otherwise).
        last_reason: the reason of the last transition.
        forced_open: whether ``force_open()`` holds the breaker open.
        disabled: whether ``disable()`` lets every call pass.
        half_open_in_flight: probes running now.
    """

    name: str | None
    state: CircuitState
    generation: int
    failure_count: int
    successes: int
    failures: int
    ignored: int
    slow: int
    rejected: int
    window_calls: int
    failure_rate: float
    slow_rate: float
    retry_after: float
    last_reason: str | None
    forced_open: bool
    disabled: bool
    half_open_in_flight: int


@final
class _Shared:
    """What a breaker whose state is in a store keeps as ``_local``: never on a fast path."""

    __slots__ = ()
    fast: Literal[False] = False
    checked: Literal[False] = False


_SHARED = _Shared()


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
            :class:`~headrace_core.BackoffError` to the caller that re-opened it. With a
            ``store``, its first 16 delays are walked here and shared through the store
            (a bad schedule then fails here, with ``ConfigurationError``).
        store: shared state (e.g. ``headrace_guards.redis.RedisStore``); default in memory.
            The store's optional ``check_name(name)`` is called here.
        clock: a zero-argument callable returning seconds; default the loop's time.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = (
        "_backend",
        "_background",
        "_clock",
        "_entered",
        "_local",
        "_store",
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
        self.recovery_timeout = check_number("recovery_timeout", recovery_timeout, gt=0)
        ho_max = check_int("half_open_max_calls", half_open_max_calls, ge=1)
        ho_timeout = check_optional_number("half_open_timeout", half_open_timeout, gt=0)
        record_spec = compile_spec("record", record)
        ignore_spec = compile_spec("ignore", ignore)
        check_callable("failure_on_result", failure_on_result)
        slow_after = check_optional_number("slow_call_duration", slow_call_duration, gt=0)
        slow_rate = check_number("slow_call_rate", slow_call_rate, gt=0, le=1)
        if open_backoff is not None and not callable(getattr(open_backoff, "delays", None)):
            raise ConfigurationError.argument_error(
                "open_backoff", open_backoff, "must be a backoff schedule with delays()"
            )
        self._store: BreakerStore | None = check_store(
            store, self.name, ("admit", "record", "force", "reset")
        )
        self._background = Background(self._describe(), keep_interrupts=True)
        self._clock = check_clock(clock)
        settings = Settings(
            name=self.name,
            source=self._source,
            listeners=self._listeners,
            clock=self._clock,
            policy=policy,
            recovery_timeout=self.recovery_timeout,
            half_open_max_calls=ho_max,
            half_open_timeout=ho_timeout,
            slow_call_duration=slow_after,
            slow_call_rate=slow_rate,
            open_backoff=open_backoff,
            record=record_spec,
            ignore=ignore_spec,
            failure_on_result=failure_on_result,
        )
        # _local is _backend when the state is in this process: the fast path and
        # async with use it without a protocol call (and without an await). With a store,
        # it is _SHARED, never on a fast path (so the fast path tests one flag).
        self._local: MemoryState | _Shared
        self._backend: BreakerState
        if self._store is None:
            self._backend = self._local = MemoryState(settings)
        else:
            self._local = _SHARED
            self._backend = StoreState(settings, self._store, self._background)
        self._entered: dict[asyncio.Task[Any], list[tuple[int, CircuitState, bool, float]]] = {}

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.name})"

    # Read-only views of the backend's state for introspection: no clock read, no lazy
    # transition, no event (``state`` and ``snapshot()`` are the public reads).
    @property
    def _state(self) -> CircuitState:
        return self._backend.state

    @property
    def _open_until(self) -> float:
        return self._backend.open_until

    @property
    def _ho_in_flight(self) -> int:
        return self._backend.half_open_in_flight

    @property
    def _ho_ok(self) -> int:
        local = self._local
        return local.half_open_ok if isinstance(local, MemoryState) else 0  # a store counts its own

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
        local = self._local
        if local.fast is True:  # (``is True`` narrows ``local`` to a MemoryState)
            # CLOSED, consecutive policy, no slow-call timing, no result predicate: no clock
            # read, no lock, no allocation (MemoryState describes it; aclose() turns
            # ``fast`` off for good: a closed breaker never gets here).
            gen = next(local.tickets)  # counts the call in (see MemoryState)
            try:
                # (without keyword arguments, fn(*args) spares copying an empty dict)
                result = await (fn(*args, **kwargs) if kwargs else fn(*args))  # type: ignore[call-arg]
            except BaseException as exc:
                local.fast_error(fn, gen, exc)
                raise
            local.budget -= 1
            if not local.budget:
                local.fast_success(gen)
            return result
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        try:
            if local.checked is not True:
                return await self._backend.call(fn, args, kwargs)  # type: ignore[no-any-return]
            # The same path, with a ``failure_on_result`` predicate on the value.
            gen = local.gen
            try:
                result = await (fn(*args, **kwargs) if kwargs else fn(*args))  # type: ignore[call-arg]
            except BaseException as exc:
                local.closed_raised(fn, gen, exc)
                raise
            local.closed_result(gen, result)
            return result
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

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
            raise TypeError(f"CircuitBreaker decorates async functions only, got {safe_repr(fn)}")
        local = self._local
        if not isinstance(local, MemoryState):
            return super().__call__(fn)  # no fast path to inline: every call is call()
        call = self.call

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            if not local.fast:
                return await call(fn, *args, **kwargs)
            gen = next(local.tickets)  # counts the call in (see MemoryState)
            try:
                result = await (fn(*args, **kwargs) if kwargs else fn(*args))  # type: ignore[call-arg]
            except BaseException as exc:
                local.fast_error(fn, gen, exc)
                raise
            local.budget -= 1
            if not local.budget:
                local.fast_success(gen)
            return result

        return guarded

    # -- async with ------------------------------------------------------------------
    async def __aenter__(self) -> CircuitBreaker:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CircuitBreaker must be used inside a task")
        self._life.enter()
        try:
            start = now_of(self._clock)
            local = self._local
            if isinstance(local, MemoryState):
                gen, state, permit = local.admit(start)
            else:
                gen, state, permit = await self._backend.enter(start)
        except BaseException:
            self._life.leave()
            raise
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
        local = self._local
        try:
            if isinstance(local, MemoryState):
                local.leave(gen, state, permit, start, exc)
            else:
                await self._backend.exit(gen, state, permit, start, exc)
        finally:
            self._life.leave()

    # -- reading and manual control ---------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state, after any lazy transition that is due now."""
        now = now_or_none(self._clock)
        if now is None:
            return self._backend.state
        return self._backend.refresh(now)

    @property
    def generation(self) -> int:
        """Incremented by every transition."""
        return self._backend.gen

    def snapshot(self) -> BreakerSnapshot:
        """Return the state and counters (O(1), no await).

        Returns:
            A frozen :class:`BreakerSnapshot`.
        """
        now = now_or_none(self._clock)
        state = self.state
        backend = self._backend
        calls, failure_count, failure_rate, slow_rate = backend.figures(now)
        if state is OPEN:
            if backend.forced:
                retry_after = math.inf
            else:
                retry_after = max(0.0, backend.open_until - now) if now is not None else 0.0
        else:
            retry_after = 0.0
        return BreakerSnapshot(
            name=self.name,
            state=state,
            generation=backend.gen,
            failure_count=failure_count,
            successes=backend.successes,
            failures=backend.failures,
            ignored=backend.ignored,
            slow=backend.slow,
            rejected=backend.rejected,
            window_calls=calls,
            failure_rate=failure_rate,
            slow_rate=slow_rate,
            retry_after=retry_after,
            last_reason=backend.last_reason,
            forced_open=backend.forced,
            disabled=backend.disabled,
            half_open_in_flight=backend.half_open_in_flight if state is HALF_OPEN else 0,
        )

    def get_stats(self) -> BreakerSnapshot:
        """Alias of :meth:`snapshot` (kompoz's spelling).

        Returns:
            A frozen :class:`BreakerSnapshot`.
        """
        return self.snapshot()

    async def reset(self) -> None:
        """Close the breaker, clear its counters and windows, and clear forced-open."""
        await self._backend.reset()

    async def force_open(self) -> None:
        """Hold the breaker OPEN until :meth:`reset` (rejections carry ``retry_after=inf``)."""
        await self._backend.force_open()

    async def disable(self) -> None:
        """Let every call pass: counters are kept, the breaker never transitions."""
        self._backend.disable()

    async def enable(self) -> None:
        """Undo :meth:`disable`: the breaker records outcomes and transitions again."""
        self._backend.enable()

    def _closing(self) -> None:
        local = self._local
        if isinstance(local, MemoryState):  # its fast calls in flight: the lifecycle's now
            life = self._life
            life.running += local.close_fast_path(life.leave)

    async def _closed_background(self) -> None:
        await self._background.aclose()

    def _closed_interrupt(self) -> None:
        self._background.raise_interrupt()
