"""The retry guard, on core's backoff schedules."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, final

from headrace_core import Closed, ConfigurationError
from headrace_core.backoff import Backoff, full_jitter, next_delay
from headrace_core.lowlevel import Clock, check_callable, check_int, check_optional_number, within
from headrace_guards._common import (
    ExcSpec,
    GuardBase,
    GuardEvent,
    check_clock,
    compile_spec,
    delays_of,
    error_type,
    event_logger,
    events,
    now_of,
    numeric_retry_after,
    raise_if_not_async,
)

P = ParamSpec("P")
T = TypeVar("T")

_DEFAULT_BACKOFF = full_jitter(base=0.1, factor=2, max=10)
_NOTHING: Any = object()
_OWNER = "Retry(backoff=...)"


@final
@dataclass(frozen=True, slots=True)
class RetrySnapshot:
    """Counters of a :class:`Retry`.

    Attributes:
        name: the guard's name.
        calls: calls of ``call`` (or of the decorated function).
        attempts: attempts made, first tries included.
        retries: attempts after the first.
        exhausted: calls that gave up (attempts or deadline) and re-raised or returned
            the last outcome.
    """

    name: str | None
    calls: int
    attempts: int
    retries: int
    exhausted: int


@final
class Retry(GuardBase):
    """Call again after a handled failure, sleeping a backoff delay between attempts.

    Args:
        attempts: total tries including the first (``>= 1``), or ``None`` for no limit
            (then ``deadline`` is required).
        deadline: seconds from the first attempt; a retry whose sleep would end past it
            is not made and the last error is re-raised at once. A running attempt is
            never cancelled (put a :class:`Timeout` outside the retry for that).
        backoff: the delay schedule; default ``full_jitter(base=0.1, factor=2, max=10)``.
            A schedule that runs out, or yields anything but a finite number ``>= 0``,
            raises :class:`~headrace_core.BackoffError` chaining the last error.
        retry_on: which errors are retried (an exception spec); cancel-like exceptions
            (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``) never are, even
            with ``retry_on=BaseException``, and neither is
            :class:`~headrace_core.Closed` (a closed component stays closed).
        retry_on_result: a predicate on the returned value; true means "try again". When
            attempts run out, the last value is returned.
        respect_retry_after: sleep at least an error's numeric ``retry_after`` attribute;
            an infinite one ends the retries at once.
        max_delay: a cap on every sleep (``>= 0``).
        rng: the random source of jittered schedules (seed it for repeatable runs).
        name: a name for events and snapshots.
        clock: a zero-argument callable returning seconds, for the deadline and events.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = (
        "_attempts",
        "_calls",
        "_clock",
        "_exhausted",
        "_retries",
        "_retry_on",
        "attempts",
        "backoff",
        "deadline",
        "max_delay",
        "respect_retry_after",
        "retry_on_result",
        "rng",
    )

    def __init__(
        self,
        attempts: int | None = 3,
        *,
        deadline: float | None = None,
        backoff: Backoff | None = None,
        retry_on: ExcSpec = Exception,
        retry_on_result: Callable[[Any], bool] | None = None,
        respect_retry_after: bool = True,
        max_delay: float | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.attempts = None if attempts is None else check_int("attempts", attempts, ge=1)
        self.deadline = check_optional_number("deadline", deadline, gt=0)
        if attempts is None and deadline is None:
            raise ConfigurationError.argument_error(
                "attempts", attempts, "None needs a deadline (set deadline=)"
            )
        if backoff is None:
            backoff = _DEFAULT_BACKOFF
        elif not callable(getattr(backoff, "delays", None)):
            raise ConfigurationError.argument_error(
                "backoff", backoff, "must be a backoff schedule with delays()"
            )
        self.backoff = backoff
        self._retry_on = compile_spec("retry_on", retry_on)
        check_callable("retry_on_result", retry_on_result)
        self.retry_on_result = retry_on_result
        self.respect_retry_after = bool(respect_retry_after)
        self.max_delay = check_optional_number("max_delay", max_delay, ge=0)
        if rng is not None and not isinstance(rng, random.Random):
            raise ConfigurationError.argument_error("rng", rng, "must be a random.Random")
        self.rng = rng
        self._clock = check_clock(clock)
        self._init_base(name)
        self._calls = 0
        self._attempts = 0
        self._retries = 0
        self._exhausted = 0

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts!r}, deadline={self.deadline!r}, name={self.name!r})"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``, retrying handled failures.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            The first accepted result, or the last result when ``retry_on_result`` kept
            rejecting it until the attempts ran out.

        Raises:
            Exception: the last error, the same object, when retries are exhausted (or the
                deadline or an infinite ``retry_after`` ends them) or the error is not
                retried.
            asyncio.CancelledError: a cancel propagates at once, also during a sleep.
        """
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        try:
            self._calls += 1
            self._attempts += 1
            start = now_of(self._clock) if self.deadline is not None else 0.0
            error: Exception | None
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, TypeError):
                    raise_if_not_async(fn, exc)
                if not self._retry_on(exc) or isinstance(exc, Closed):
                    raise
                error, result = exc, _NOTHING
            else:
                predicate = self.retry_on_result
                if predicate is None or not predicate(result):
                    return result
                error = None
            # Outside the ``except`` block, so later errors get no chained ``__context__``.
            return await self._again(start, error, result, fn, args, kwargs)  # type: ignore[no-any-return]
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

    async def _again(
        self,
        start: float,
        error: Exception | None,
        result: Any,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        delays = delays_of(self.backoff.delays(self.rng), _OWNER, error)
        attempt = 1
        limit = self.attempts
        predicate = self.retry_on_result
        while True:
            if limit is not None and attempt >= limit:
                return self._give_up(error, result, attempt)
            delay = next_delay(delays, owner=_OWNER, cause=error)
            if error is not None and self.respect_retry_after:
                hint = numeric_retry_after(error)
                if hint is not None:
                    if math.isinf(hint):
                        return self._give_up(error, result, attempt)
                    delay = max(delay, hint)
            if self.max_delay is not None and delay > self.max_delay:
                delay = self.max_delay
            delay = max(delay, 0.0)
            if self.deadline is not None and not within(
                now_of(self._clock) - start + delay, self.deadline
            ):
                return self._give_up(error, result, attempt)
            if event_logger.isEnabledFor(logging.DEBUG):
                self._log_retry(attempt, delay, error)
            if self._listeners:
                self._listeners.emit(
                    GuardEvent(
                        source=self._source,
                        kind="retry",
                        at=now_of(self._clock),
                        attempt=attempt,
                        delay=delay,
                        error=error,
                    )
                )
            await asyncio.sleep(delay)
            attempt += 1
            self._attempts += 1
            self._retries += 1
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, TypeError):
                    raise_if_not_async(fn, exc)
                if not self._retry_on(exc) or isinstance(exc, Closed):
                    raise
                error, result = exc, _NOTHING
                continue
            if predicate is not None and predicate(result):
                error = None
                continue
            return result

    def _log_retry(self, attempt: int, delay: float, error: Exception | None) -> None:
        cause = error_type(error) or "result rejected"
        events.debug(
            "attempt %d failed (%s), retrying in %.3fs",
            attempt,
            cause,
            delay,
            kind="Retry",
            component=self.name,
            event="retry",
            attempt=attempt,
            delay=delay,
            error_type=error_type(error),
        )

    def _give_up(self, error: Exception | None, result: Any, attempt: int) -> Any:
        self._exhausted += 1
        if event_logger.isEnabledFor(logging.INFO):
            events.info(
                "giving up after %d attempts (%s)",
                attempt,
                error_type(error) or "result rejected",
                kind="Retry",
                component=self.name,
                event="exhausted",
                attempt=attempt,
                error_type=error_type(error),
            )
        if error is not None:
            raise error
        return result

    def snapshot(self) -> RetrySnapshot:
        """Return the guard's counters (O(1), no await).

        Returns:
            A frozen :class:`RetrySnapshot`.
        """
        return RetrySnapshot(
            name=self.name,
            calls=self._calls,
            attempts=self._attempts,
            retries=self._retries,
            exhausted=self._exhausted,
        )
