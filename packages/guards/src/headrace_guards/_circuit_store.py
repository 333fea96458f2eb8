"""The circuit breaker's snapshot type and its store-backed path (``store=``).

The store path makes one store call per state change; it is kept apart from the
in-memory breaker, whose fast path has no protocol indirection.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from headrace_core import CircuitState
from headrace_guards._common import now_of
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


async def call_store(
    breaker: CircuitBreaker,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run one call through a store-backed breaker: ``admit``, the call, ``record``."""
    store, name = breaker._store, breaker.name
    assert store is not None
    assert name is not None
    clock = breaker._clock
    start = now_of(clock)
    config = store_config(breaker)
    state = CircuitState.CLOSED
    if breaker._disabled:
        gen = -1
    else:
        allowed, gen, state, retry_after = await store.admit(name, start, **config)
        mirror(breaker, state, start)
        if not allowed:
            if breaker._forced:
                retry_after = math.inf
            raise breaker._reject(start, retry_after, state)
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        outcome = breaker._classify(exc)
        if outcome == _NEUTRAL and state is CircuitState.CLOSED:
            # A neutral call admitted while CLOSED changes nothing in the store: no round
            # trip (and no await while a cancellation is unwinding the caller).
            raise
        await _record(breaker, gen, outcome, start, now_of(clock), config)
        raise
    check = breaker._result_check
    outcome = _FAILURE if check is not None and check(result) else _SUCCESS
    await _record(breaker, gen, outcome, start, now_of(clock), config)
    return result


async def _record(
    breaker: CircuitBreaker,
    gen: int,
    outcome: int,
    start: float,
    end: float,
    config: dict[str, Any],
) -> None:
    store, name = breaker._store, breaker.name
    assert store is not None
    assert name is not None
    slow_after = breaker._slow_after
    slow = outcome != _NEUTRAL and slow_after is not None and end - start >= slow_after
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
    state = await store.record(name, gen, label, end - start, **config)  # type: ignore[arg-type]
    mirror(breaker, state, end)


def mirror(breaker: CircuitBreaker, state: CircuitState, now: float) -> None:
    """Follow the store's state locally (and emit the transition) when it changed."""
    if state is not breaker._state:
        breaker._transition(state, _MIRRORED[state], now)
