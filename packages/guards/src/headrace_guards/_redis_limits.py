"""The rate-limiter and budget parts of the Redis store (both protocols name ``reserve``)."""

from __future__ import annotations

import itertools
from typing import Any, overload

from headrace_guards._redis_base import DOWN, DOWN_RETRY_AFTER, MALFORMED, Script, text
from headrace_guards._redis_breaker import BreakerPart
from headrace_guards._redis_lua import BUDGET_ADJUST, BUDGET_RESERVE, RATE_REFUND, RATE_RESERVE

__all__ = ["LimitsPart"]

_RESERVE, _REFUND = Script(RATE_RESERVE), Script(RATE_REFUND)
_B_RESERVE, _B_ADJUST = Script(BUDGET_RESERVE), Script(BUDGET_ADJUST)
_RL_FIELDS = ("tat", "pending")


class LimitsPart(BreakerPart):
    """``RateStore`` and ``BudgetStore`` on Redis (a base class of ``RedisStore``)."""

    __slots__ = ("_charge_ids", "_rates")

    def _init_limits(self) -> None:
        self._rates: dict[tuple[str, float, float, int], tuple[tuple[str, ...], str, str]] = {}
        self._charge_ids = itertools.count()

    # -- RateStore -------------------------------------------------------------------
    @overload
    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]: ...

    @overload
    async def reserve(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> tuple[bool, float]: ...

    async def reserve(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Reserve rate-limiter tokens, or an amount of a budget (both protocols say reserve).

        ``reserve(name, rate, per, burst, cost, max_wait=None) -> (reserved, wait)`` is the
        ``RateStore`` form: GCRA in one key. ``(True, wait)``: reserved, wait ``wait``
        seconds first; ``(False, wait)``: the wait would pass ``max_wait``, nothing is
        taken, and ``wait`` is the wait that would have been needed. When Redis fails,
        ``(True, 0.0)`` failing open, ``(False, 1.0)`` failing closed.

        ``reserve(name, amount, cap, window) -> (granted, retry_after, entry)`` is the
        ``BudgetStore`` form: a rolling window; on a refusal ``retry_after`` is the seconds
        from now (on the server's clock) until the request would fit, None when it never
        would (``amount > cap``); failing closed, ``(False, 1.0, None)``.

        The forms are told apart by their arguments.

        Args:
            name: the component's name.
            *args: the arguments of either form.
            **kwargs: the same, by keyword.

        Returns:
            What the form returns.
        """
        if len(args) + len(kwargs) == 3 and "rate" not in kwargs:
            return await self._reserve_budget(name, *args, **kwargs)
        keys, script_args = self._rate_args(name, *args, **kwargs)
        reservation = f"{self._token}-{next(self._charge_ids)}-{script_args[2]}"
        lost = self._take_lost("rl", name)
        try:
            reply = await self._run(_RESERVE, keys, (*script_args, reservation, *lost))
        except BaseException:
            self._lose("rl", name, [*lost, reservation])
            raise
        if reply is DOWN:
            # Redis may have made the reservation. Failing open the call goes ahead, so it
            # stands; failing closed it is taken back at the next contact.
            if self.fail_open:
                self._lose("rl", name, lost)
                return True, 0.0
            self._lose("rl", name, [*lost, reservation])
            return False, DOWN_RETRY_AFTER
        try:
            ok, wait = reply
            return bool(int(ok)), float(wait)
        except MALFORMED:
            self._lose("rl", name, [reservation])
            raise self._malformed("reserve", reply) from None

    def _rate_args(
        self,
        name: str,
        rate: float,
        per: float,
        burst: int,
        cost: int,
        max_wait: float | None = None,
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        found = self._rates.get((name, rate, per, burst))
        if found is None:
            interval = per / rate
            found = self._keys_of("rl", name, _RL_FIELDS), repr(interval), repr(burst * interval)
            self._rates[(name, rate, per, burst)] = found
        keys, interval_text, capacity_text = found
        return keys, (interval_text, capacity_text, cost, "" if max_wait is None else max_wait)

    async def refund(self, name: str, rate: float, per: float, cost: int) -> None:
        """Give back a reservation that was not used (its waiter was cancelled).

        Args:
            name: the rate limiter's name.
            rate: tokens per ``per`` seconds.
            per: the period in seconds.
            cost: the tokens reserved.
        """
        key = self._keys_of("rl", name, _RL_FIELDS)[0]
        await self._run(_REFUND, (key,), (per / rate, cost))

    # -- BudgetStore -----------------------------------------------------------------
    async def _reserve_budget(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        keys = self._keys_of("budget", name, ("charges", "amounts"))
        charge = f"{self._token}-{next(self._charge_ids)}"
        lost = self._take_lost("budget", name)
        try:
            reply = await self._run(_B_RESERVE, keys, (amount, cap, window, charge, *lost))
        except BaseException:
            self._lose("budget", name, [*lost, charge])
            raise
        if reply is DOWN:
            # Redis may have charged it. Failing open the call goes ahead, so the charge
            # stands; failing closed it is taken back at the next contact.
            if self.fail_open:
                self._lose("budget", name, lost)
                return True, None, None
            self._lose("budget", name, [*lost, charge])
            return False, DOWN_RETRY_AFTER, None
        try:
            ok, retry_text, entry = reply
            if int(ok):
                return True, None, text(entry)
            retry = text(retry_text)
            return False, float(retry) if retry else None, None
        except MALFORMED:
            self._lose("budget", name, [charge])
            raise self._malformed("reserve", reply) from None

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        """Change the amount charged for ``entry`` (a grant's estimate, reconciled).

        A charge whose window has passed is gone and stays gone. When Redis fails, the
        estimate stays charged (until the charge leaves the window).

        Args:
            name: the budget's name.
            entry: the entry a granted :meth:`reserve` returned.
            amount: the amount to charge instead.
        """
        keys = self._keys_of("budget", name, ("charges", "amounts"))
        lost = self._take_lost("budget", name)
        try:
            reply = await self._run(_B_ADJUST, keys, (amount, entry, "", *lost))
        except BaseException:
            self._lose("budget", name, lost)
            raise
        if reply is DOWN:
            self._lose("budget", name, lost)
