"""What every guard shares: the event type, exception specs, the decorator and listeners."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn, ParamSpec, TypeAlias, TypeVar, cast, final

from headrace_core import BackoffError, ConfigurationError
from headrace_core.lowlevel import (
    Clock,
    EventLog,
    Lifecycle,
    being_cancelled,
    callable_name,
    check_callable,
    check_name,
    despite_cancel,
    first_step,
    is_async_callable,
    safe_repr,
    start_task,
)
from headrace_core.stats import Listeners

P = ParamSpec("P")
T = TypeVar("T")

#: An exception filter: a type, a tuple or list of types, or a predicate on the error.
ExcSpec: TypeAlias = (
    type[BaseException]
    | tuple[type[BaseException], ...]
    | list[type[BaseException]]
    | Callable[[BaseException], bool]
)


LOGGER = "headrace.guards"

#: The guards' event records on ``headrace.guards``; a call site tests
#: ``event_logger.isEnabledFor(level)`` first, so that disabled logging costs one call.
events: Final = EventLog(LOGGER)
event_logger: Final = events.logger


def error_type(error: BaseException | None) -> str | None:
    """The qualified name of ``error``'s type, or None (never calls user code)."""
    return None if error is None else type(error).__qualname__


def log_rejection(kind: str, name: str | None, run_start: bool, **fields: Any) -> None:
    """Log one rejection (DEBUG), after a first rejection after admissions (INFO)."""
    if run_start:
        events.info(
            "started rejecting calls", kind=kind, component=name, event="rejecting", **fields
        )
    events.debug("call rejected", kind=kind, component=name, event="rejected", **fields)


@final
@dataclass(frozen=True, slots=True)
class GuardEvent:
    """One event of a guard, handed to its listeners after the state change is complete.

    Attributes:
        source: the guard's name, or its kind (``"CircuitBreaker"``) when it has none.
        kind: ``state_change``, ``rejected``, ``timeout``, ``retry``, ``hedge`` or ``fallback``.
        at: the time of the event on the guard's clock (the loop's time by default).
        old_state: the state before a ``state_change``.
        new_state: the state after a ``state_change``.
        reason: why it happened, e.g. ``"failures"`` or ``"recovery_timeout"``.
        attempt: the attempt number (retry: the attempt that just failed; hedge: the new one).
        delay: seconds slept before the next attempt (retry) or the hedge delay.
        error: the error involved, if any.
    """

    source: str
    kind: str
    at: float
    old_state: Any = None
    new_state: Any = None
    reason: str | None = None
    attempt: int | None = None
    delay: float | None = None
    error: BaseException | None = None


def _never(exc: BaseException) -> bool:
    return False


def compile_spec(argument: str, spec: object) -> Callable[[BaseException], bool]:
    """Turn an exception spec into a predicate that never matches cancel-like exceptions.

    Args:
        argument: the argument's name, for the error message.
        spec: an exception type, a tuple or list of types, or a predicate.

    Returns:
        A predicate ``(exc) -> bool``; it is False for every non-``Exception``.

    Raises:
        ConfigurationError: when ``spec`` is none of the accepted forms.
    """
    if isinstance(spec, type) and issubclass(spec, BaseException):
        types: tuple[type[BaseException], ...] = (spec,)
    elif isinstance(spec, tuple | list):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in spec):
            raise ConfigurationError.argument_error(
                argument, spec, "must be exception types or a predicate"
            )
        types = tuple(spec)
        if not types:
            return _never
    elif callable(spec) and not isinstance(spec, type):  # a class of no exception is no test
        predicate = cast("Callable[[BaseException], bool]", spec)

        def call_predicate(exc: BaseException) -> bool:
            return isinstance(exc, Exception) and bool(predicate(exc))

        return call_predicate
    else:
        raise ConfigurationError.argument_error(
            argument, spec, "must be an exception type, a tuple of types, or a predicate"
        )

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and isinstance(exc, types)

    return matches


def check_clock(clock: Any) -> Clock | None:
    """Validate a ``clock=`` argument (None or a zero-argument callable)."""
    checked: Clock | None = check_callable("clock", clock)
    return checked


def numeric_retry_after(exc: BaseException) -> float | None:
    """Return the error's ``retry_after`` when it is a real number, else None."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value:  # NaN
        return None
    try:
        return float(value)
    except OverflowError:  # an int past any float: as long as no wait can be
        return math.inf


class GuardBase:
    """The shared part of every guard: name, listeners, decorator use and ``aclose()``.

    Not public: every guard derives from it.
    """

    __slots__ = ("_life", "_listeners", "name")

    name: str | None
    _listeners: Listeners[GuardEvent]
    _life: Lifecycle

    def _init_base(self, name: str | None) -> None:
        self.name = check_name(name)
        self._listeners = Listeners(LOGGER, self._describe())
        self._life = Lifecycle(self._describe())

    def _describe(self) -> str:
        kind = type(self).__name__
        return f"{kind} {self.name!r}" if self.name else kind

    @property
    def _source(self) -> str:
        return self.name or type(self).__name__

    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:  # pragma: no cover - every guard overrides it
        """Run ``fn(*args, **kwargs)`` under the guard (an ``async def`` in every guard)."""
        raise NotImplementedError

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call runs under the guard.

        Args:
            fn: the coroutine function to protect.

        Returns:
            An ``async def`` with the same signature and ``functools.wraps`` metadata.

        Raises:
            TypeError: when ``fn`` is not an async function.
        """
        if not is_async_callable(fn):
            raise TypeError(
                f"{type(self).__name__} decorates async functions only, got {safe_repr(fn)}"
            )
        call = self.call

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await call(fn, *args, **kwargs)

        return guarded

    def add_listener(self, callback: Callable[[GuardEvent], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of this guard.

        The callback may be sync or async (an awaitable it returns is scheduled as a
        task). Its exceptions are logged on ``headrace.guards`` and swallowed.

        Args:
            callback: the listener.

        Returns:
            A callable that removes the listener.

        Raises:
            TypeError: when ``callback`` is not callable.
        """
        return self._listeners.add(callback)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: the guard refuses new calls."""
        return self._life.closed

    async def aclose(self) -> None:
        """Close the guard for good (the family's one ``aclose()``; idempotent).

        New calls, and calls still waiting for admission, raise
        :class:`~headrace_core.Closed`; calls already running are not interrupted and
        finish normally (their outcomes still count). Returns once they have ended, then
        once pending async listeners and background store calls have ended. Under a
        deadline (``asyncio.timeout``) the listeners still running are cancelled.
        ``snapshot()`` and ``add_listener()`` keep working.

        Raises:
            BaseException: a ``KeyboardInterrupt`` or ``SystemExit`` that a store call sent
                in the background raised and no caller has received yet (a bulkhead's
                lease release, a breaker's neutral record, a limiter's refund), once
                everything above has ended.
        """
        if self._life.close():
            self._closing()
        await self._life.wait_idle()
        await self._closed_background()
        await self._listeners.aclose()
        self._closed_interrupt()

    def _closing(self) -> None:
        """Refuse what waits for admission and leave fast paths (guards that have them)."""

    async def _closed_background(self) -> None:
        """Wait for calls sent to a store in the background (guards that have a store)."""

    def _closed_interrupt(self) -> None:
        """Raise an interrupt kept from the background for a caller (guards that keep one)."""


def now_of(clock: Clock | None) -> float:
    """Read ``clock``, or the running loop's time when it is None.

    Raises:
        TypeError: when a user clock returned something that is not a number.
        ValueError: when a user clock returned NaN or an infinity.
    """
    if clock is None:
        return asyncio.get_running_loop().time()
    value = clock()
    if value.__class__ is not float or value - value != 0.0:
        return checked_reading(clock, value)
    return value


def checked_reading(clock: object, value: object) -> float:
    """Validate one reading of a user clock (a finite number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"clock {callable_name(clock)} returned a {type(value).__name__}, "
            "not a number of seconds"
        )
    try:
        reading = float(value)
    except OverflowError:  # an int past any float
        reading = math.inf
    if not math.isfinite(reading):
        raise ValueError(
            f"clock {callable_name(clock)} returned {safe_repr(value)}, not a finite time"
        )
    return reading


class NotAsyncError(TypeError):
    """A guard was given a function that is not async (what it returned cannot be awaited).

    A misuse, not a failure of the guarded service: no guard retries it, falls back on it
    or records it in a breaker window.
    """


def raise_if_not_async(fn: object, exc: TypeError) -> None:
    """Turn the ``TypeError`` of awaiting what a sync ``fn`` returned into a clear one.

    Called only on the error path, in the frame that awaited ``fn(...)``: the error is
    that ``await``'s own when it was raised in that frame (no deeper traceback entry)
    and ``fn`` is not an async callable. A :class:`NotAsyncError` from an inner guard
    is raised again as it is.

    Raises:
        NotAsyncError: naming ``fn``, when ``exc`` comes from awaiting its plain result.
    """
    if isinstance(exc, NotAsyncError):
        raise exc  # from a guard inside this one: a misuse all the way out
    tb = exc.__traceback__
    if tb is None or tb.tb_next is not None or type(exc) is not TypeError:
        return
    if is_async_callable(fn):
        return
    raise NotAsyncError(
        f"{callable_name(fn)} is not an async function: a guard awaits what it returns ({exc})"
    ) from None


class Background:
    """Store calls a guard sends without making its caller wait for them.

    Each call runs in a task bounded by ``bound`` seconds, is referenced until done, and
    never raises into the loop: its outcome (``None`` or the exception it raised, even
    ``KeyboardInterrupt``) is the task's result. A caller that awaits the task (see
    :meth:`wait`) gets that exception raised in its own task; an outcome nobody awaits is
    logged, except that with ``keep_interrupts`` the first ``KeyboardInterrupt``,
    ``SystemExit`` or other non-``Exception`` (a ``CancelledError`` the store raised by
    itself aside) is kept in :attr:`interrupt` for the guard to raise in a caller (see
    :meth:`raise_interrupt`). :meth:`aclose` waits for every pending call.
    """

    __slots__ = ("_awaited", "_keep", "_logger", "_owner", "interrupt", "tasks")

    def __init__(self, owner: str, *, keep_interrupts: bool = False) -> None:
        self.tasks: set[asyncio.Task[BaseException | None]] = set()
        self._awaited: set[asyncio.Task[BaseException | None]] = set()
        self._owner = owner
        self._keep = keep_interrupts
        self._logger = logging.getLogger(LOGGER)
        #: An interrupt raised by a call nobody awaited, kept for the next caller.
        self.interrupt: BaseException | None = None

    def send(
        self, what: str, make: Callable[[], Awaitable[Any]], bound: float
    ) -> asyncio.Task[BaseException | None]:
        """Start ``make()`` in a bounded task (``what`` names it in log messages)."""
        task = start_task(asyncio.get_running_loop(), self._run(what, make, bound))
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._done, what))
        return task

    async def _run(
        self, what: str, make: Callable[[], Awaitable[Any]], bound: float
    ) -> BaseException | None:
        """The task of one call: its outcome, or its own cancellation.

        A store call is housekeeping that must happen (a lease's release, a refund). When
        the task is cancelled from outside before its first step (a shutdown sweep over
        ``asyncio.all_tasks()``), nothing was sent yet: it is sent all the same, within
        its bound, then the task ends cancelled as asked. A cancellation that interrupts
        the call leaves its effect on the store unknown: logged, as a warning.
        """
        try:
            await first_step()  # where start_task leaves it: inside the try
        except asyncio.CancelledError:
            work = functools.partial(self._bounded, what, make, bound)
            self._report(what, await despite_cancel(work, None))  # (_bounded has the bound)
            raise
        return await self._bounded(what, make, bound)

    async def _bounded(
        self, what: str, make: Callable[[], Awaitable[Any]], bound: float
    ) -> BaseException | None:
        try:
            async with asyncio.timeout(bound):
                await make()
        except asyncio.CancelledError as exc:
            if not being_cancelled():
                return exc  # the store raised CancelledError by itself
            self._logger.warning(
                "%s: %s was cancelled while it ran: it may not have reached the store "
                "(a lease is then held until its time-to-live, a charge stays)",
                self._owner,
                what,
            )
            raise
        except BaseException as exc:  # KeyboardInterrupt too: never into the loop
            return exc
        return None

    def _done(self, what: str, task: asyncio.Task[BaseException | None]) -> None:
        self.tasks.discard(task)
        if task in self._awaited:
            self._awaited.discard(task)
            return
        if not task.cancelled():
            self._report(what, task.result())

    def _report(self, what: str, error: BaseException | None) -> None:
        """Log the failure of a call nobody receives (or keep it, an interrupt)."""
        if error is None:
            return
        if (
            self._keep
            and self.interrupt is None
            and not isinstance(error, Exception | asyncio.CancelledError)
        ):
            self.interrupt = error
            return
        self._logger.warning("%s: %s failed in the background", self._owner, what, exc_info=error)

    def raise_interrupt(self) -> None:
        """Raise the kept :attr:`interrupt` (once), if there is one.

        Raises:
            BaseException: the interrupt a call nobody awaited raised.
        """
        error, self.interrupt = self.interrupt, None
        if error is not None:
            raise error

    async def wait(self, task: asyncio.Task[BaseException | None]) -> None:
        """Wait for ``task`` (shielded: a cancelled caller leaves it running, still bounded).

        Raises:
            BaseException: what the store call raised, in the caller's task.
        """
        if not task.done():
            self._awaited.add(task)
        try:
            error = await asyncio.shield(task)
        except asyncio.CancelledError:
            self._awaited.discard(task)  # nobody will see its outcome: log (or keep) it
            if task.cancelled() and not being_cancelled():
                return  # the call's task was cancelled from outside, not the caller
            raise
        if error is not None:
            raise_error(error)

    async def aclose(self) -> None:
        """Wait until every call sent so far has ended (each is bounded)."""
        while self.tasks:
            await asyncio.wait(tuple(self.tasks))


def delays_of(delays: object, owner: str, cause: BaseException | None) -> Iterator[float]:
    """Check what a backoff schedule's ``delays()`` returned: ``iter(delays)``.

    Raises:
        BackoffError: when it cannot be iterated.
    """
    try:
        return iter(delays)  # type: ignore[call-overload, no-any-return]
    except TypeError:
        raise BackoffError(
            f"{owner}: delays() returned a {type(delays).__name__}, not an iterator of delays"
        ) from cause


def raise_error(error: BaseException) -> NoReturn:
    """Raise ``error`` (a helper so that type checkers see the branch end)."""
    raise error


def check_store(store: Any, name: str | None, methods: tuple[str, ...]) -> Any:
    """Validate a ``store=`` argument and let the store vet the name, at construction.

    Args:
        store: the store, or None.
        name: the guard's name (required with a store: it is the key).
        methods: the store methods the guard calls.

    Returns:
        The store.

    Raises:
        ConfigurationError: when ``name`` is None, the store lacks a method, or the
            store's optional ``check_name(name)`` rejects the name.
    """
    if store is None:
        return None
    if name is None:
        raise ConfigurationError.argument_error(
            "name", None, "is required with store= (it is the key)"
        )
    for method in methods:
        if not callable(getattr(store, method, None)):
            raise ConfigurationError.argument_error(
                "store", type(store).__name__, f"has no {method}() method"
            )
    check = getattr(store, "check_name", None)
    if check is not None:
        check(name)
    return store
