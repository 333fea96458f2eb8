"""The circuit breaker's snapshot type and its store-backed path (``store=``).

The store path makes one store call per state change; it is kept apart from the
in-memory breaker, whose fast path has no protocol indirection.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from headrace_core import CircuitState
from headrace_core.lowlevel import being_cancelled, within
from headrace_guards._common import NotAsyncError, now_of, raise_if_not_async
from headrace_guards._policies import Consecutive, CountWindow

if TYPE_CHECKING:
    from headrace_guards._circuit import CircuitBreaker


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


# Outcomes of one call.
_NEUTRAL = 0
_SUCCESS = 1
_FAILURE = 2

# The reason a mirrored transition (made by another worker) is reported with.
_MIRRORED = {
    CircuitState.OPEN: "failures",
    CircuitState.HALF_OPEN: "recovery_timeout",
    CircuitState.CLOSED: "probes_succeeded",
}


def store_config(breaker: CircuitBreaker) -> dict[str, Any]:
    """Return the breaker's policy as the keyword arguments every store call receives."""
    policy = breaker.policy
    config: dict[str, Any] = {
        "recovery_timeout": breaker.recovery_timeout,
        "half_open_max_calls": breaker._ho_max,
        "half_open_timeout": breaker._ho_timeout,
        "slow_call_rate": breaker._slow_rate,
    }
    if isinstance(policy, Consecutive):
        config.update(policy="consecutive", threshold=policy.threshold)
    elif isinstance(policy, CountWindow):
        config.update(
            policy="count",
            size=policy.size,
            min_calls=policy.min_calls,
            failure_rate=policy.failure_rate,
        )
    else:
        config.update(
            policy="time",
            seconds=policy.seconds,
            min_calls=policy.min_calls,
            failure_rate=policy.failure_rate,
        )
    return config


#: How long a record sent in the background may take before it is given up.
_BACKGROUND_BOUND = 30.0
_NOTHING: Any = object()


async def call_store(
    breaker: CircuitBreaker,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run one call through a store-backed breaker: ``admit``, the call, ``record``."""
    start = now_of(breaker._clock)
    config = store_config(breaker)
    gen, state = await store_admit(breaker, start, config)
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        await store_end(breaker, gen, state, start, config, exc, fn)
        raise
    await store_end(breaker, gen, state, start, config, None, None, result)
    return result


async def store_admit(
    breaker: CircuitBreaker, start: float, config: dict[str, Any]
) -> tuple[int, CircuitState]:
    """Ask the store to admit one call; return its ``(generation, state)`` or raise the rejection.

    Raises:
        CircuitOpenError: when the store refuses the call.
        TypeError: when the store's ``admit`` returned something else than
            ``(allowed, generation, state, retry_after)``.
    """
    store, name = breaker._store, breaker.name
    assert store is not None
    assert name is not None
    if breaker._disabled:
        return -1, CircuitState.CLOSED
    reply = await store.admit(name, start, **config)
    allowed, gen, state, retry_after = _admission(store, reply)
    try:
        mirror(breaker, state, start)
    except BaseException:
        if allowed:  # give the store's admission back (a probe permit, perhaps)
            _record_soon(breaker, gen, state, _NEUTRAL, 0.0, config)
        raise
    if not allowed:
        if breaker._forced:
            retry_after = math.inf
        raise breaker._reject(start, retry_after, state)
    return gen, state


def _admission(store: object, reply: object) -> tuple[bool, int, CircuitState, float]:
    if isinstance(reply, tuple) and len(reply) == 4:
        allowed, gen, state, retry_after = reply
        if (
            isinstance(gen, int)
            and isinstance(state, CircuitState)
            and isinstance(retry_after, int | float)
            and not isinstance(retry_after, bool)
            and retry_after == retry_after
        ):
            return bool(allowed), gen, state, float(retry_after)
    raise TypeError(
        f"{type(store).__name__}.admit() returned a {type(reply).__name__}, not "
        "(allowed: bool, generation: int, state: CircuitState, retry_after: float)"
    )


async def store_end(
    breaker: CircuitBreaker,
    gen: int,
    state: CircuitState,
    start: float,
    config: dict[str, Any],
    exc: BaseException | None,
    fn: object,
    result: Any = _NOTHING,
) -> None:
    """Record how one admitted call ended (an error ``exc``, or ``result``).

    A raising predicate counts the call as a failure. A neutral outcome (a cancel, an
    ``ignore`` match, a function that is not async) is sent without waiting: a
    cancelled caller never waits on the store.
    """
    try:
        if exc is not None:
            if fn is not None and isinstance(exc, TypeError):
                raise_if_not_async(fn, exc)
            outcome = breaker._classify(exc)
        else:
            check = breaker._result_check
            failed = result is not _NOTHING and check is not None and check(result)
            outcome = _FAILURE if failed else _SUCCESS
    except NotAsyncError:
        _record_soon(breaker, gen, state, _NEUTRAL, 0.0, config)
        raise
    except BaseException as raised:
        await _record(breaker, gen, _FAILURE, start, start, config, raised)
        raise
    try:
        end = now_of(breaker._clock)
    except BaseException:
        await _record(breaker, gen, outcome, start, start, config, exc)
        raise
    if outcome == _NEUTRAL:
        # Counted nowhere; while CLOSED the store has nothing to give back.
        if state is CircuitState.CLOSED:
            return
        if _unwinding(exc):
            _record_soon(breaker, gen, state, _NEUTRAL, end - start, config)
            return
    await _record(breaker, gen, outcome, start, end, config, exc)


def _unwinding(exc: BaseException | None) -> bool:
    """Whether the caller is being cancelled or interrupted (it must not wait on the store)."""
    if isinstance(exc, asyncio.CancelledError):
        return being_cancelled()
    return exc is not None and not isinstance(exc, Exception)


def _record_soon(
    breaker: CircuitBreaker,
    gen: int,
    state: CircuitState,
    outcome: int,
    duration: float,
    config: dict[str, Any],
) -> None:
    """Record a neutral outcome in the background (bounded; the caller does not wait)."""
    store, name = breaker._store, breaker.name
    assert store is not None
    assert name is not None
    if gen < 0 or state is CircuitState.CLOSED:
        return

    async def send() -> None:
        new = _state_of(store, await store.record(name, gen, "neutral", duration, **config))
        mirror(breaker, new, now_of(breaker._clock))

    breaker._background.send("record", send, _BACKGROUND_BOUND)


async def _record(
    breaker: CircuitBreaker,
    gen: int,
    outcome: int,
    start: float,
    end: float,
    config: dict[str, Any],
    cause: BaseException | None,
) -> None:
    store, name = breaker._store, breaker.name
    assert store is not None
    assert name is not None
    slow_after = breaker._slow_after
    slow = outcome != _NEUTRAL and slow_after is not None and within(slow_after, end - start)
    if outcome == _FAILURE:
        breaker._failures += 1
        label = "slow_failure" if slow else "failure"
    elif outcome == _SUCCESS:
        breaker._successes += 1
        label = "slow" if slow else "success"
    else:
        label = "neutral"
    if slow:
        breaker._slow += 1
    if gen < 0:
        return  # disabled: counters only
    reply = await store.record(name, gen, label, end - start, **config)  # type: ignore[arg-type]
    mirror(breaker, _state_of(store, reply), end, cause)


def _state_of(store: object, reply: object) -> CircuitState:
    if isinstance(reply, CircuitState):
        return reply
    raise TypeError(
        f"{type(store).__name__}.record() returned a {type(reply).__name__}, not a CircuitState"
    )


def mirror(
    breaker: CircuitBreaker,
    state: CircuitState,
    now: float,
    cause: BaseException | None = None,
) -> None:
    """Follow the store's state locally (and emit the transition) when it changed."""
    if state is not breaker._state:
        breaker._transition(state, _MIRRORED[state], now, cause=cause)
