"""kompoz shims: ``with_timeout``, ``limited`` and ``circuit_breaker`` on headrace guards."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from headrace_core import CircuitOpenError, CircuitState, ConfigurationError
from headrace_core.lowlevel import check_int, check_number
from headrace_guards._bulkhead import Bulkhead, BulkheadSnapshot
from headrace_guards._circuit import BreakerSnapshot, CircuitBreaker
from headrace_guards._common import GuardEvent
from headrace_guards._timeout import Timeout, TimeoutSnapshot

C = TypeVar("C")


class _PlainCombinator(Generic[C]):
    """The base of the shims when kompoz is not installed: ``run`` and ``__call__``."""

    async def _execute(self, ctx: C) -> tuple[bool, C]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def run(self, ctx: C) -> tuple[bool, C]:
        """Run the combinator on ``ctx``; return ``(ok, ctx)``."""
        return await self._execute(ctx)

    async def __call__(self, ctx: C) -> tuple[bool, C]:
        return await self.run(ctx)


if TYPE_CHECKING:
    _Base = _PlainCombinator
    KOMPOZ = False
else:
    try:  # With kompoz installed, the shims are kompoz async combinators (&, |, ~, ...).
        from kompoz import AsyncCombinator as _Base

        KOMPOZ = True
    except ImportError:  # pragma: no cover - depends on the environment
        _Base = _PlainCombinator
        KOMPOZ = False


def _runner(x: Any, argument: str = "x") -> Callable[[Any], Awaitable[tuple[bool, Any]]]:
    """Normalise a kompoz-style inner (``run(ctx)`` object or ``f(ctx)``) to ``(ok, ctx)``."""
    run = getattr(x, "run", None)
    target = run if callable(run) else x
    if not callable(target):
        raise ConfigurationError.argument_error(
            argument, x, "must have an async run(ctx) or be an async callable f(ctx)"
        )

    async def inner(ctx: Any) -> tuple[bool, Any]:
        result = target(ctx)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, tuple) and len(result) == 2:
            return bool(result[0]), result[1]
        return bool(result), ctx

    return inner


class AsyncTimeout(_Base[C]):
    """kompoz's ``AsyncTimeout`` on a :class:`~headrace_guards.Timeout`.

    On this shim's own timeout, ``run`` returns ``(False, on_timeout(ctx))`` (or
    ``(False, ctx)``); an inner ``TimeoutError`` propagates.

    Attributes:
        guard: the headrace :class:`~headrace_guards.Timeout`.
        timeout: the deadline in seconds.
        timed_out: whether the latest run timed out (as in kompoz; not concurrency-safe).
    """

    def __init__(
        self, inner: Any, timeout: float, on_timeout: Callable[[C], Any] | None = None
    ) -> None:
        self.inner = inner
        self._run_inner = _runner(inner)
        self.on_timeout = on_timeout
        self.timed_out = False
        self.guard = Timeout(check_number("timeout", timeout, gt=0), on_timeout=self._expired)
        self.timeout = self.guard.seconds

    async def _expired(self, ctx: C) -> tuple[bool, C]:
        self.timed_out = True
        handler = self.on_timeout
        if handler is None:
            return False, ctx
        value = handler(ctx)
        if inspect.isawaitable(value):
            value = await value
        return False, value

    async def _execute(self, ctx: C) -> tuple[bool, C]:
        self.timed_out = False
        return await self.guard.call(self._run_inner, ctx)

    def get_stats(self) -> TimeoutSnapshot:
        """Return the wrapped guard's snapshot.

        Returns:
            A :class:`~headrace_guards.TimeoutSnapshot`.
        """
        return self.guard.snapshot()

    def __repr__(self) -> str:
        return f"AsyncTimeout(timeout={self.timeout!r})"


class AsyncLimited(_Base[C]):
    """kompoz's ``AsyncLimited`` on a :class:`~headrace_guards.Bulkhead`.

    Attributes:
        guard: the headrace :class:`~headrace_guards.Bulkhead` (shared by ``name``).
        max_concurrent: the limit.
        name: the shared limiter's name.
    """

    def __init__(self, inner: Any, max_concurrent: int, name: str | None = None) -> None:
        self.inner = inner
        self._run_inner = _runner(inner)
        self.guard = Bulkhead(check_int("max_concurrent", max_concurrent, ge=1), name=name)
        self.max_concurrent = self.guard.limit
        self.name = name

    async def _execute(self, ctx: C) -> tuple[bool, C]:
        return await self.guard.call(self._run_inner, ctx)

    def get_stats(self) -> BulkheadSnapshot:
        """Return the wrapped guard's snapshot.

        Returns:
            A :class:`~headrace_guards.BulkheadSnapshot`.
        """
        return self.guard.snapshot()

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"AsyncLimited(max_concurrent={self.max_concurrent!r}{name})"


def _failed(result: tuple[bool, Any]) -> bool:
    return not result[0]


class AsyncCircuitBreaker(_Base[C]):
    """kompoz's ``AsyncCircuitBreaker`` on a :class:`~headrace_guards.CircuitBreaker`.

    As in kompoz, a ``(False, ctx)`` result and an exception (which still propagates)
    count as failures, and a rejection returns ``(False, ctx)``; rejections are counted
    in ``get_stats().rejected``.

    Attributes:
        guard: the headrace :class:`~headrace_guards.CircuitBreaker`.
        failure_threshold: consecutive failures that open the circuit.
        recovery_timeout: seconds before a probe is admitted.
        half_open_max_calls: probes admitted in HALF_OPEN.
    """

    def __init__(
        self,
        inner: Any,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        on_state_change: Callable[[CircuitState, CircuitState, BreakerSnapshot], Any] | None = None,
    ) -> None:
        self.inner = inner
        self._run_inner = _runner(inner)
        self.guard = CircuitBreaker(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            half_open_max_calls=half_open_max_calls,
            failure_on_result=_failed,
        )
        self.failure_threshold = failure_threshold
        self.recovery_timeout = self.guard.recovery_timeout
        self.half_open_max_calls = half_open_max_calls
        if on_state_change is not None:
            if not callable(on_state_change):
                raise ConfigurationError.argument_error(
                    "on_state_change", on_state_change, "must be a callable or None"
                )
            guard = self.guard

            def relay(event: GuardEvent) -> Any:
                if event.kind == "state_change":
                    return on_state_change(event.old_state, event.new_state, guard.snapshot())
                return None

            self.guard.add_listener(relay)
        self.on_state_change = on_state_change

    async def _execute(self, ctx: C) -> tuple[bool, C]:
        entered = False
        run_inner = self._run_inner

        async def inner(value: C) -> tuple[bool, C]:
            nonlocal entered
            entered = True
            return await run_inner(value)

        try:
            return await self.guard.call(inner, ctx)
        except CircuitOpenError:
            if entered:
                raise  # an inner breaker's error, not ours
            return False, ctx

    @property
    def state(self) -> CircuitState:
        """The circuit's state (headrace's :class:`~headrace_guards.CircuitState`)."""
        return self.guard.state

    def get_stats(self) -> BreakerSnapshot:
        """Return the wrapped breaker's snapshot (``failure_count`` as in kompoz).

        Returns:
            A :class:`~headrace_guards.BreakerSnapshot`.
        """
        return self.guard.snapshot()

    async def reset(self) -> None:
        """Close the circuit and clear its counters."""
        await self.guard.reset()

    def __repr__(self) -> str:
        return f"AsyncCircuitBreaker(failure_threshold={self.failure_threshold!r})"


def with_timeout(
    x: Any, *, timeout: float, on_timeout: Callable[[Any], Any] | None = None
) -> AsyncTimeout[Any]:
    """Wrap a kompoz combinator (or ``async f(ctx)``) with a timeout, as kompoz does.

    Args:
        x: an object with ``async run(ctx)``, or an async callable ``f(ctx)`` returning
            ``(ok, ctx)`` or a bool.
        timeout: seconds, finite and ``> 0``.
        on_timeout: ``ctx -> ctx`` (sync or async) called on timeout.

    Returns:
        An :class:`AsyncTimeout`; its ``run(ctx)`` returns ``(False, ...)`` on timeout.

    Raises:
        ConfigurationError: (a ``ValueError``) when an argument is invalid.
    """
    return AsyncTimeout(x, timeout, on_timeout)


def limited(x: Any, *, max_concurrent: int, name: str | None = None) -> AsyncLimited[Any]:
    """Limit concurrent runs of a kompoz combinator, as kompoz's ``limited`` does.

    Args:
        x: an object with ``async run(ctx)``, or an async callable ``f(ctx)``.
        max_concurrent: the limit, ``>= 1``.
        name: share one limit between every limiter of this name (across event loops).

    Returns:
        An :class:`AsyncLimited` on a :class:`~headrace_guards.Bulkhead`.

    Raises:
        ConfigurationError: (a ``ValueError``) when ``max_concurrent < 1`` or ``name``
            is already declared with another limit.
    """
    return AsyncLimited(x, max_concurrent, name)


def circuit_breaker(
    x: Any,
    *,
    failure_threshold: int = 5,
    recovery_timeout: float = 30.0,
    half_open_max_calls: int = 1,
    on_state_change: Callable[[CircuitState, CircuitState, BreakerSnapshot], Any] | None = None,
) -> AsyncCircuitBreaker[Any]:
    """Protect a kompoz combinator with a circuit breaker, with kompoz's semantics.

    Args:
        x: an object with ``async run(ctx)``, or an async callable ``f(ctx)``.
        failure_threshold: consecutive failures that open the circuit, ``>= 1``.
        recovery_timeout: seconds before a probe is admitted, ``> 0``.
        half_open_max_calls: probes admitted in HALF_OPEN, ``>= 1``.
        on_state_change: ``(old, new, stats)``, sync or async, isolated (its errors are
            logged, never raised into the call).

    Returns:
        An :class:`AsyncCircuitBreaker`.

    Raises:
        ConfigurationError: (a ``ValueError``) when an argument is invalid.
    """
    return AsyncCircuitBreaker(
        x, failure_threshold, recovery_timeout, half_open_max_calls, on_state_change
    )
