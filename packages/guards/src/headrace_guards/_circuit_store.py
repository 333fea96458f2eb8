"""A circuit breaker's state kept in a shared ``BreakerStore`` (the ``store=`` path).

The store decides every transition; :class:`StoreState` makes one store call per state
change (``admit``, then ``record``) and follows the store's state locally, emitting the
transitions it learns, so that ``state`` and ``snapshot()`` read without an await.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, final

from headrace_core import CircuitState, ConfigurationError
from headrace_core.lowlevel import being_cancelled, safe_repr, within
from headrace_core.store import BreakerStore, Outcome
from headrace_guards._circuit_state import (
    CLOSED,
    FAILURE,
    HALF_OPEN,
    NEUTRAL,
    OPEN,
    SUCCESS,
    Settings,
    emit_change,
    manual_now,
    rejection,
)
from headrace_guards._common import Background, NotAsyncError, now_of, raise_if_not_async
from headrace_guards._policies import Consecutive, CountWindow

# The reason a mirrored transition (made by another worker) is reported with.
_MIRRORED = {
    OPEN: "failures",
    HALF_OPEN: "recovery_timeout",
    CLOSED: "probes_succeeded",
}

#: How long a record sent in the background may take before it is given up.
_BACKGROUND_BOUND = 30.0
#: How many re-open periods of ``open_backoff`` a store is given (the last repeats).
SHARED_REOPENS = 16
_NOTHING: Any = object()


def store_config(settings: Settings) -> dict[str, Any]:
    """Return a breaker's policy as the keyword arguments every store call receives.

    With ``open_backoff``, ``open_delays`` holds the OPEN periods of the first re-opens
    from HALF_OPEN (see :func:`open_delays`).

    Raises:
        ConfigurationError: when ``open_backoff`` fails to give its delays.
    """
    policy = settings.policy
    config: dict[str, Any] = {
        "recovery_timeout": settings.recovery_timeout,
        "half_open_max_calls": settings.half_open_max_calls,
        "half_open_timeout": settings.half_open_timeout,
        "slow_call_rate": settings.slow_call_rate,
    }
    if settings.open_backoff is not None:
        config["open_delays"] = open_delays(settings.open_backoff, settings.recovery_timeout)
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


def open_delays(backoff: Any, recovery_timeout: float) -> tuple[float, ...]:
    """The first :data:`SHARED_REOPENS` delays of ``backoff``, for a store to apply.

    A shared breaker's re-opens happen in whichever process sees the failing probe, so the
    schedule is walked once, here, and its delays travel with every store call; past the
    last one, the last repeats. A schedule that ends sooner is followed by
    ``recovery_timeout``, as a breaker in memory does when its schedule runs out.

    Raises:
        ConfigurationError: when the schedule raises, or yields something other than a
            finite number ``>= 0`` (naming ``open_backoff``).
    """
    delays: list[float] = []
    try:
        for delay in backoff.delays():
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise TypeError(f"yielded {safe_repr(delay)}, not a number of seconds")
            if not math.isfinite(delay) or delay < 0:
                raise ValueError(f"yielded {safe_repr(delay)}, not a finite number >= 0")
            delays.append(float(delay))
            if len(delays) == SHARED_REOPENS:
                return tuple(delays)
    except (Exception, asyncio.CancelledError) as exc:
        raise ConfigurationError.argument_error(
            "open_backoff", backoff, f"must give finite delays >= 0 ({type(exc).__name__}: {exc})"
        ) from exc
    return (*delays, recovery_timeout)


@final
class StoreState:
    """A breaker's state in a shared store, followed locally.

    The store holds the windows and the half-open permits, so the local figures are the
    state, the generation (local: one per transition learned), the counters and the flags.
    ``open_backoff`` travels with every store call as its first delays
    (:func:`open_delays`): the store applies them to re-opens from HALF_OPEN, shared.

    Args:
        settings: the breaker's configuration (``settings.name`` is the store key).
        store: the shared state.
        background: where records that nobody waits for are sent (the breaker's, so
            that its ``aclose()`` waits for them).
    """

    __slots__ = (
        "_background",
        "_clock",
        "_config",
        "_ignore",
        "_name",
        "_record",
        "_recovery",
        "_result_check",
        "_settings",
        "_slow_after",
        "_store",
        "disabled",
        "failures",
        "forced",
        "gen",
        "half_open_in_flight",
        "ignored",
        "last_reason",
        "open_until",
        "rejected",
        "slow",
        "state",
        "successes",
    )

    def __init__(self, settings: Settings, store: BreakerStore, background: Background) -> None:
        assert settings.name is not None  # a store-backed breaker has a name: the key
        self._settings = settings
        self._name = settings.name
        self._store = store
        self._background = background
        self._config = store_config(settings)
        self._clock = settings.clock
        self._recovery = settings.recovery_timeout
        self._slow_after = settings.slow_call_duration
        self._record = settings.record
        self._ignore = settings.ignore
        self._result_check = settings.failure_on_result
        self.state = CLOSED
        self.gen = 0
        self.forced = False
        self.disabled = False
        self.open_until = 0.0
        self.half_open_in_flight = 0  # the store holds the permits
        self.successes = 0
        self.failures = 0
        self.ignored = 0
        self.slow = 0
        self.rejected = 0
        self.last_reason: str | None = None

    # -- one call ----------------------------------------------------------------------------
    async def call(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run one call through the store: ``admit``, the call, ``record``."""
        start = now_of(self._clock)
        gen, state, _ = await self.enter(start)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._end(gen, state, start, exc, fn)
            raise
        await self._end(gen, state, start, None, None, result)
        return result

    async def enter(self, start: float) -> tuple[int, CircuitState, bool]:
        """Ask the store to admit one call: ``(generation, state, False)``.

        While disabled, the store is not asked: ``(-1, CLOSED, False)``.

        Raises:
            CircuitOpenError: when the store refuses the call.
            TypeError: when the store's ``admit`` returned something else than
                ``(allowed, generation, state, retry_after)``.
        """
        if self._background.interrupt is not None:
            self._background.raise_interrupt()  # from a neutral record nobody awaited
        if self.disabled:
            return -1, CLOSED, False
        store = self._store
        reply = await store.admit(self._name, start, **self._config)
        allowed, gen, state, retry_after = _admission(store, reply)
        try:
            self._mirror(state, start)
        except BaseException:
            if allowed:  # give the store's admission back (a probe permit, perhaps)
                self._record_soon(gen, state, 0.0)
            raise
        if not allowed:
            if self.forced:
                retry_after = math.inf
            self.rejected += 1
            raise rejection(self._settings, start, retry_after, state)
        return gen, state, False

    async def exit(
        self,
        gen: int,
        state: CircuitState,
        permit: bool,
        start: float,
        exc: BaseException | None,
    ) -> None:
        """Record how a body admitted by :meth:`enter` ended (``exc`` None: it returned)."""
        await self._end(gen, state, start, exc, None)

    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return NEUTRAL
        if self._ignore(exc):
            self.ignored += 1
            return NEUTRAL
        return FAILURE if self._record(exc) else SUCCESS

    async def _end(
        self,
        gen: int,
        state: CircuitState,
        start: float,
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
                outcome = self._classify(exc)
            else:
                check = self._result_check
                failed = result is not _NOTHING and check is not None and check(result)
                outcome = FAILURE if failed else SUCCESS
        except NotAsyncError:
            self._record_soon(gen, state, 0.0)
            raise
        except BaseException as raised:
            await self._send(gen, FAILURE, start, start, raised)
            raise
        try:
            end = now_of(self._clock)
        except BaseException:
            await self._send(gen, outcome, start, start, exc)
            raise
        if outcome == NEUTRAL:
            # Counted nowhere; while CLOSED the store has nothing to give back.
            if state is CLOSED:
                return
            if _unwinding(exc):
                self._record_soon(gen, state, end - start)
                return
        await self._send(gen, outcome, start, end, exc)

    def _record_soon(self, gen: int, state: CircuitState, duration: float) -> None:
        """Record a neutral outcome in the background (bounded; the caller does not wait)."""
        if gen < 0 or state is CLOSED:
            return
        store, name, config = self._store, self._name, self._config

        async def send() -> None:
            new = _state_of(store, await store.record(name, gen, "neutral", duration, **config))
            self._mirror(new, now_of(self._clock))

        self._background.send("record", send, _BACKGROUND_BOUND)

    async def _send(
        self, gen: int, outcome: int, start: float, end: float, cause: BaseException | None
    ) -> None:
        """Count one outcome, and record it in the store unless disabled."""
        slow_after = self._slow_after
        slow = outcome != NEUTRAL and slow_after is not None and within(slow_after, end - start)
        label: Outcome
        if outcome == FAILURE:
            self.failures += 1
            label = "slow_failure" if slow else "failure"
        elif outcome == SUCCESS:
            self.successes += 1
            label = "slow" if slow else "success"
        else:
            label = "neutral"
        if slow:
            self.slow += 1
        if gen < 0:
            return  # disabled: counters only
        store = self._store
        reply = await store.record(self._name, gen, label, end - start, **self._config)
        self._mirror(_state_of(store, reply), end)

    # -- following the store's state ---------------------------------------------------------
    def _mirror(self, state: CircuitState, now: float) -> None:
        """Follow the store's state (and emit the transition) when it changed."""
        if state is not self.state:
            self._move(state, _MIRRORED[state], now)

    def _move(self, new: CircuitState, reason: str, now: float, *, forced: bool = False) -> None:
        old = self.state
        self.state = new
        self.gen += 1
        self.last_reason = reason
        if new is OPEN:
            self.open_until = math.inf if forced else now + self._recovery
            self.forced = forced
        elif new is CLOSED:
            self.forced = False
        emit_change(self._settings, now, old, new, reason)

    def refresh(self, now: float) -> CircuitState:
        """Return the state last learned (the store makes the lazy transitions)."""
        return self.state

    def figures(self, now: float | None) -> tuple[int, int, float, float]:
        """Return ``(0, 0, 0.0, 0.0)``: the streak and the window are the store's."""
        return 0, 0, 0.0, 0.0

    # -- manual control: the store first; if it fails, nothing changed here ------------------
    async def reset(self) -> None:
        """Reset the store's breaker, then close here and clear the counters."""
        await self._store.reset(self._name)
        self.forced = False
        self.successes = self.failures = self.ignored = self.slow = self.rejected = 0
        self._move(CLOSED, "reset", manual_now(self._clock))

    async def force_open(self) -> None:
        """Force the store's breaker OPEN, then here (until :meth:`reset`)."""
        await self._store.force(self._name, OPEN, **self._config)
        self._move(OPEN, "forced", manual_now(self._clock), forced=True)

    def disable(self) -> None:
        """Let every call pass without asking the store; counters are kept."""
        self.disabled = True
        self._move(CLOSED, "disabled", manual_now(self._clock))

    def enable(self) -> None:
        """Ask the store again from the next call."""
        self.disabled = False


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


def _state_of(store: object, reply: object) -> CircuitState:
    if isinstance(reply, CircuitState):
        return reply
    raise TypeError(
        f"{type(store).__name__}.record() returned a {type(reply).__name__}, not a CircuitState"
    )


def _unwinding(exc: BaseException | None) -> bool:
    """Whether the caller is being cancelled or interrupted (it must not wait on the store)."""
    if isinstance(exc, asyncio.CancelledError):
        return being_cancelled()
    return exc is not None and not isinstance(exc, Exception)
