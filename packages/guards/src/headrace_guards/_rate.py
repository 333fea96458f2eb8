"""The rate limiter: GCRA (a token bucket with no refill timer), costs and refunds."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypeVar, final

from headrace_core import CapacityExceeded, ConfigurationError, RateLimited
from headrace_core.lowlevel import (
    Clock,
    LoopBinding,
    check_int,
    check_number,
    check_optional_number,
    safe_repr,
    within,
)
from headrace_core.store import RateStore
from headrace_guards._common import (
    Background,
    GuardBase,
    GuardEvent,
    check_clock,
    check_store,
    checked_reading,
    event_logger,
    log_rejection,
    now_of,
    raise_if_not_async,
)

P = ParamSpec("P")
T = TypeVar("T")

#: Waits below one nanosecond are float noise, not a reason to sleep.
_EPSILON = 1e-9
#: How long a refund sent in the background may take before it is given up.
_REFUND_BOUND = 30.0


@final
@dataclass(frozen=True, slots=True)
class RateLimiterSnapshot:
    """The state and counters of a :class:`RateLimiter`.

    Attributes:
        name: the limiter's name.
        rate: tokens per ``per`` seconds.
        per: the period of ``rate`` in seconds.
        burst: the bucket's capacity in tokens.
        available: tokens available now (fractional; 0 while callers wait).
        acquired: acquisitions granted (each of any cost).
        rejected: acquisitions refused (``max_wait`` exceeded).
        waiting: callers sleeping for their reservation now.
    """

    name: str | None
    rate: float
    per: float
    burst: int
    available: float
    acquired: int
    rejected: int
    waiting: int


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@final
class RateLimiter(GuardBase):
    """Allow ``rate`` tokens per ``per`` seconds with bursts of up to ``burst`` tokens.

    GCRA: one number, the theoretical arrival time, replaces the bucket and its refill
    timer. The bucket starts full. A caller whose tokens are not available yet reserves
    them at once (first come, first served) and sleeps until they are; a cancelled
    sleeper gives its reservation back.

    Args:
        rate: tokens per period, ``> 0``.
        per: the period in seconds, ``> 0``.
        burst: the bucket's capacity, an int ``>= 1``; default ``max(1, ceil(rate))``.
        max_wait: the longest a caller may wait; past it :class:`RateLimited` is raised
            and nothing is consumed. ``None`` waits as long as needed, ``0`` never waits.
            A wait equal to ``max_wait`` is admitted, whatever the clock's magnitude.
        name: a name for events, errors and snapshots (required with ``store=``).
        store: shared state across processes; default in memory. The store's optional
            ``check_name(name)`` is called here. A waiter cancelled during its wait has
            its reservation refunded in the background.
        clock: a zero-argument callable returning seconds; default the loop's time.

    Raises:
        ConfigurationError: when an argument is invalid.
    """

    __slots__ = (
        "_acquired",
        "_background",
        "_binding",
        "_capacity",
        "_clock",
        "_interval",
        "_log_mark",
        "_loop",
        "_rejected",
        "_sleepers",
        "_store",
        "_tat",
        "_waiting",
        "burst",
        "max_wait",
        "per",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        max_wait: float | None = None,
        name: str | None = None,
        store: RateStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._init_base(name)
        self.rate = check_number("rate", rate, gt=0)
        self.per = check_number("per", per, gt=0)
        if burst is None:
            burst = max(1, math.ceil(self.rate))
        self.burst = check_int("burst", burst, ge=1)
        self.max_wait = check_optional_number("max_wait", max_wait, ge=0)
        self._store: RateStore | None = check_store(store, self.name, ("reserve", "refund"))
        self._background = Background(self._describe(), keep_interrupts=True)
        self._clock = check_clock(clock)
        self._interval = self.per / self.rate
        if not 0 < self._interval * self.burst < math.inf:  # each finite, their ratio not
            raise ConfigurationError.argument_error(
                "per", self.per, f"must make per / rate (rate={self.rate!r}) finite and non-zero"
            )
        self._capacity = self.burst * self._interval
        self._tat = -math.inf
        self._binding = LoopBinding(self._describe())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acquired = 0
        self._log_mark = -1  # _acquired at the last logged rejection
        self._rejected = 0
        self._waiting = 0
        self._sleepers: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate!r}, per={self.per!r}, burst={self.burst})"

    def _now(self) -> float:
        clock = self._clock
        if clock is not None:
            value = clock()
            if value.__class__ is not float or value - value != 0.0:
                return checked_reading(clock, value)
            return value
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._rebind()
        return loop.time()

    def _rebind(self) -> None:
        loop, _ = self._binding.check()  # RuntimeError if the old loop runs in another thread
        self._loop = loop
        self._tat = -math.inf  # a new loop has a new time base: start full

    def _check_cost(self, cost: object) -> int:
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= self.burst:
            raise CapacityExceeded(
                f"cost={safe_repr(cost)}: must be an int in 1..{self.burst}"
                + (f" (rate limiter {self.name!r})" if self.name else ""),
                requested=cost if isinstance(cost, int | float) else None,
                capacity=self.burst,
                name=self.name,
            )
        return cost

    def _reserve(self, cost: int) -> float:
        """Reserve ``cost`` tokens now; return the seconds to wait (raise past ``max_wait``)."""
        now = self._now()
        tat = self._tat
        if tat < now:
            tat = now
        new_tat = tat + cost * self._interval
        wait = new_tat - now - self._capacity
        if wait < _EPSILON:
            wait = 0.0
        elif self.max_wait is not None and not within(wait, self.max_wait):
            raise self._refuse(now, wait)
        self._tat = new_tat
        self._acquired += 1
        return wait

    def _refuse(self, now: float, wait: float) -> RateLimited:
        self._rejected += 1
        error = RateLimited(retry_after=wait, name=self.name)
        if event_logger.isEnabledFor(logging.INFO):
            run_start = self._log_mark != self._acquired
            self._log_mark = self._acquired
            log_rejection("RateLimiter", self.name, run_start, retry_after=wait)
        if self._listeners:
            self._listeners.emit(
                GuardEvent(source=self._source, kind="rejected", at=now, delay=wait, error=error)
            )
        return error

    async def _sleep(self, wait: float, cost: int) -> None:
        try:
            await self._pause(wait)
        except BaseException:
            self._tat -= cost * self._interval  # refund the unused reservation
            self._acquired -= 1  # (it counted at the reservation: it was never granted)
            raise

    async def _pause(self, wait: float) -> None:
        """Wait ``wait`` seconds for a reservation; :meth:`aclose` ends it with ``Closed``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(wait, _wake, fut)
        sleepers = self._sleepers
        sleepers.add(fut)
        self._waiting += 1
        try:
            await fut
        finally:
            handle.cancel()
            sleepers.discard(fut)
            self._waiting -= 1

    async def acquire(self, cost: int = 1) -> None:
        """Take ``cost`` tokens, sleeping until they are available.

        Args:
            cost: tokens to take, an int in ``1..burst``.

        Raises:
            CapacityExceeded: when ``cost`` is not an int in ``1..burst`` (it could never
                be served).
            RateLimited: when the wait would pass ``max_wait`` (nothing is consumed).
        """
        cost = self._check_cost(cost)
        life = self._life
        if life.closed:
            raise life.refuse()
        if self._store is not None:
            await self._store_acquire(cost)
            return
        wait = self._reserve(cost)
        if wait:
            await self._sleep(wait, cost)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Take one token, then run ``fn(*args, **kwargs)``.

        Args:
            fn: the async callable to run.
            *args: positional arguments for ``fn``.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            What ``fn`` returned.

        Raises:
            RateLimited: when the wait would pass ``max_wait``.
        """
        life = self._life
        if life.closed:
            raise life.refuse()
        life.running += 1
        try:
            if self._store is not None:
                await self._store_acquire(1)
            else:
                # The common case, inlined: a token is available now.
                now = self._now()
                tat = self._tat
                new_tat = (tat if tat > now else now) + self._interval
                if new_tat - now - self._capacity < _EPSILON:
                    self._tat = new_tat
                    self._acquired += 1
                else:
                    wait = self._reserve(1)
                    if wait:
                        await self._sleep(wait, 1)
            try:
                return await fn(*args, **kwargs)
            except TypeError as exc:
                raise_if_not_async(fn, exc)
                raise
        finally:
            life.running -= 1
            if not life.running and life.idle:
                life.wake()

    async def _store_acquire(self, cost: int) -> None:
        store, name = self._store, self.name
        assert store is not None
        assert name is not None
        if self._background.interrupt is not None:
            self._background.raise_interrupt()  # from a refund nobody awaited
        reply = await store.reserve(name, self.rate, self.per, self.burst, cost, self.max_wait)
        reserved, wait = _reservation(store, reply)
        if not reserved:
            raise self._refuse(now_of(self._clock), wait)
        self._acquired += 1
        if wait < _EPSILON:
            return
        try:
            await self._pause(wait)
        except BaseException:
            # Refunded in the background: a cancelled waiter never waits on the store.
            self._acquired -= 1
            self._background.send(
                "refunding a reservation",
                functools.partial(store.refund, name, self.rate, self.per, cost),
                _REFUND_BOUND,
            )
            raise

    def would_wait(self, cost: int = 1) -> float:
        """Return the seconds :meth:`acquire` would wait for ``cost`` now (consumes nothing).

        Args:
            cost: tokens, an int in ``1..burst``.

        Returns:
            The wait in seconds (0.0 when the tokens are available).

        Raises:
            CapacityExceeded: when ``cost`` is not an int in ``1..burst``.
        """
        cost = self._check_cost(cost)
        now = self._now()
        wait = max(self._tat, now) + cost * self._interval - now - self._capacity
        return 0.0 if wait < _EPSILON else wait

    def _closing(self) -> None:
        for fut in tuple(self._sleepers):
            if not fut.done():
                fut.set_exception(self._life.refuse())  # its reservation is refunded

    async def _closed_background(self) -> None:
        await self._background.aclose()

    def _closed_interrupt(self) -> None:
        self._background.raise_interrupt()

    async def __aenter__(self) -> RateLimiter:
        await self.acquire(1)
        self._life.running += 1  # the block runs until __aexit__
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._life.leave()

    def snapshot(self) -> RateLimiterSnapshot:
        """Return the state and counters (O(1), no await).

        Returns:
            A frozen :class:`RateLimiterSnapshot`.
        """
        try:
            now = self._now()
        except RuntimeError:
            now = None
        if now is None or self._tat <= now:
            available = float(self.burst)
        else:
            available = max(0.0, (self._capacity - (self._tat - now)) / self._interval)
        return RateLimiterSnapshot(
            name=self.name,
            rate=self.rate,
            per=self.per,
            burst=self.burst,
            available=available,
            acquired=self._acquired,
            rejected=self._rejected,
            waiting=self._waiting,
        )


def _reservation(store: object, reply: object) -> tuple[bool, float]:
    """Check a ``RateStore.reserve`` reply: ``(reserved, wait)`` with a usable wait."""
    if isinstance(reply, tuple) and len(reply) == 2:
        reserved, wait = reply
        if (
            isinstance(reserved, bool)
            and isinstance(wait, int | float)
            and not isinstance(wait, bool)
            and wait == wait
            and (math.isfinite(wait) or (not reserved and wait > 0))
        ):
            return reserved, max(0.0, float(wait))
    raise TypeError(
        f"{type(store).__name__}.reserve() returned a {type(reply).__name__}, not "
        "(reserved: bool, wait: float) with a finite wait"
    )
