"""gentlify's retry and breaker configs, and its event names for ``on_state_change``.

There is one retry and one circuit breaker in the family (``headrace_guards``); these
classes only translate gentlify's arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, final

from headrace_core import CircuitOpenError, ConfigurationError
from headrace_core.backoff import exponential, fixed, full_jitter
from headrace_core.lowlevel import check_int, check_number
from headrace_guards import CircuitBreaker, Retry
from headrace_throttle._types import ThrottleEvent

__all__ = ["CircuitBreakerConfig", "RetryConfig", "gentlify_events"]

BackoffName = Literal["fixed", "exponential", "exponential_jitter"]
_BACKOFFS = ("fixed", "exponential", "exponential_jitter")

# guards' breaker needs an OPEN period > 0; gentlify allowed 0 ("probe at once").
_SHORTEST_OPEN = 1e-9


@final
@dataclass(frozen=True, slots=True)
class RetryConfig:
    """gentlify's retry settings; the throttle turns them into a :class:`headrace_guards.Retry`.

    Args:
        max_attempts: total tries including the first, ``>= 1``.
        backoff: ``"fixed"`` (``base_delay`` every time), ``"exponential"``
            (``base_delay * 2**n``, capped at ``max_delay``) or ``"exponential_jitter"``
            (uniform between 0 and that).
        base_delay: the first delay in seconds, ``>= 0``.
        max_delay: the cap, ``>= base_delay``.
        retryable: a predicate on the error; None retries every ``Exception``.
            Cancellation is never retried, nor a ``CircuitOpenError``.

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    max_attempts: int = 3
    backoff: BackoffName = "exponential_jitter"
    base_delay: float = 1.0
    max_delay: float = 60.0
    retryable: Callable[[BaseException], bool] | None = None

    def __post_init__(self) -> None:
        check_int("max_attempts", self.max_attempts, ge=1)
        if self.backoff not in _BACKOFFS:
            raise ConfigurationError.argument_error(
                "backoff", self.backoff, f"must be one of {', '.join(map(repr, _BACKOFFS))}"
            )
        check_number("base_delay", self.base_delay, ge=0)
        check_number("max_delay", self.max_delay, ge=self.base_delay)
        if self.retryable is not None and not callable(self.retryable):
            raise ConfigurationError.argument_error(
                "retryable", self.retryable, "must be a callable or None"
            )

    def build(self, *, name: str | None = None) -> Retry:
        """Return the equivalent :class:`headrace_guards.Retry`.

        Args:
            name: the retry's name, for its events.

        Returns:
            A new ``Retry`` with core's ``fixed``, ``exponential`` or ``full_jitter``
            schedule.
        """
        base, cap = float(self.base_delay), float(self.max_delay)
        if self.backoff == "fixed":
            schedule: fixed | exponential | full_jitter = fixed(base)
        elif self.backoff == "exponential":
            schedule = exponential(base, 2.0, cap)
        else:
            schedule = full_jitter(base, 2.0, cap)
        retryable = self.retryable

        def retry_on(exc: BaseException) -> bool:
            if isinstance(exc, CircuitOpenError):
                return False
            return retryable is None or bool(retryable(exc))

        return Retry(
            self.max_attempts, backoff=schedule, retry_on=retry_on, max_delay=cap, name=name
        )


@final
@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """gentlify's breaker settings, turned into a :class:`headrace_guards.CircuitBreaker`.

    After ``consecutive_failures`` failures the breaker opens for ``open_duration``
    seconds, then admits ``half_open_max_calls`` probes; a failed probe re-opens it for
    twice as long each time, at most five times ``open_duration`` (gentlify's rule,
    through guards' ``open_backoff``).

    Args:
        consecutive_failures: failures in a row that open the breaker, ``>= 1``.
        open_duration: seconds the breaker stays open, ``>= 0``.
        half_open_max_calls: probes admitted (and successes needed to close), ``>= 1``.

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    consecutive_failures: int = 10
    open_duration: float = 30.0
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        check_int("consecutive_failures", self.consecutive_failures, ge=1)
        check_number("open_duration", self.open_duration, ge=0)
        check_int("half_open_max_calls", self.half_open_max_calls, ge=1)

    def build(
        self,
        *,
        name: str | None = None,
        ignore: Callable[[BaseException], bool] | None = None,
    ) -> CircuitBreaker:
        """Return the equivalent :class:`headrace_guards.CircuitBreaker`.

        Args:
            name: the breaker's name.
            ignore: errors that are neutral for the breaker (the throttle passes the
                complement of its ``is_failure``, so an error the throttle ignores also
                releases a half-open probe instead of wedging it).

        Returns:
            A new ``CircuitBreaker``.
        """
        duration = max(float(self.open_duration), _SHORTEST_OPEN)
        return CircuitBreaker(
            name,
            failure_threshold=self.consecutive_failures,
            recovery_timeout=duration,
            half_open_max_calls=self.half_open_max_calls,
            ignore=ignore if ignore is not None else (),
            open_backoff=exponential(duration * 2.0, 2.0, duration * 5.0),
        )


def gentlify_events(
    callback: Callable[[ThrottleEvent], object], cooling_period: float
) -> Callable[[ThrottleEvent], object]:
    """Deliver a throttle's events to a gentlify ``on_state_change`` callback, in its words.

    ``decreased`` becomes ``decelerated`` followed by ``cooling_started`` (with the
    ``cooling_period``), ``increased`` becomes ``reaccelerated``, and a ``retry`` carries
    gentlify's ``exception`` (the error's text) beside headrace's fields; the other kinds
    (``paused``, ``resumed``, ``closed``, ``drained``) keep their names. ``on_event=`` and
    ``add_listener()`` receive headrace's own names.

    Args:
        callback: the user's callback (sync, or async: its awaitables are awaited in turn).
        cooling_period: the seconds reported by ``cooling_started``.

    Returns:
        The listener to register.
    """

    def deliver(event: ThrottleEvent) -> object:
        pending = [
            result
            for result in (callback(legacy) for legacy in _in_gentlify_words(event, cooling_period))
            if inspect.isawaitable(result)
        ]
        return _all(pending) if pending else None

    deliver.__qualname__ = getattr(callback, "__qualname__", type(callback).__qualname__)
    return deliver


def _in_gentlify_words(event: ThrottleEvent, cooling_period: float) -> Iterator[ThrottleEvent]:
    kind, data = event.kind, dict(event.data)
    if kind == "retry":
        error = data.get("error")
        data["exception"] = "" if error is None else str(error)
    yield ThrottleEvent(event.kind_legacy, event.at, data, event.name)
    if kind == "decreased":
        yield ThrottleEvent(
            "cooling_started", event.at, {"cooling_period": cooling_period}, event.name
        )


async def _all(pending: list[Awaitable[Any]]) -> None:
    for awaitable in pending:
        await awaitable
