"""Rolling-window budgets: requests per window and tokens per window, kept in O(1) amortised.

Each admitted call appends one charge ``[start, amount, in_window]`` to a deque and adds its amount
to a running total. Charges leave from the left once ``start + window`` has passed, so
every charge is appended once and removed once: the cost of a call does not depend on
how many charges the window holds. A charge is changed in place when the call reports
its real token count.
"""

from __future__ import annotations

from collections import deque
from typing import Any, final

from headrace_core import ConfigurationError
from headrace_core.lowlevel import TIME_TOLERANCE, check_int, check_number
from headrace_core.store import BudgetStore

__all__ = ["RequestBudget", "TokenBudget"]

# A charge is a list ``[start, amount, in_window]``: cheaper to build than an object.
# ``in_window`` turns False when the charge leaves the window; until then a reconcile
# may change ``amount`` (a charge past its time but not yet removed is removed with its
# reconciled amount, so the running total stays exact).
Charge = list[Any]


class _Window:
    """The shared machinery of both budgets (private; the public classes are final)."""

    __slots__ = ("_cache", "_entries", "_used", "capacity", "name", "store", "window_seconds")

    def __init__(
        self,
        capacity: int,
        window_seconds: float,
        name: str | None,
        store: BudgetStore | None,
        argument: str,
    ) -> None:
        self.capacity = check_int(argument, capacity, ge=1)
        self.window_seconds = check_number("window_seconds", window_seconds, gt=0)
        if name is not None and not isinstance(name, str):
            raise ConfigurationError.argument_error("name", name, "must be a str or None")
        if store is not None:
            if name is None:
                raise ConfigurationError.argument_error(
                    "name", name, "a budget with a store= needs a name (the shared key)"
                )
            if not isinstance(store, BudgetStore):
                raise ConfigurationError.argument_error(
                    "store",
                    store,
                    "must be a headrace_core.store.BudgetStore (async reserve and adjust)",
                )
            # A store that can say which names it cannot use (RedisStore) says it now,
            # when the budget is built, rather than at the first call.
            check_name = getattr(store, "check_name", None)
            if callable(check_name):
                check_name(name)
        self.name = name
        self.store = store
        self._entries: deque[Charge] = deque()
        self._used = 0
        self._cache: tuple[int, int, float] | None = None

    # -- accounting (all O(1) amortised) ---------------------------------------------
    def _expire(self, now: float) -> None:
        entries = self._entries
        window = self.window_seconds
        horizon = now + TIME_TOLERANCE  # ``within(start + window, now)``, inlined
        while entries and entries[0][0] + window <= horizon:
            entry = entries.popleft()
            self._used -= entry[1]
            entry[2] = False  # gone from the window: a late reconcile must leave it alone
            self._cache = None

    def used(self, now: float) -> int:
        """Return the amount charged in the window that ends at ``now``.

        Args:
            now: the loop time.

        Returns:
            The sum of the charges that started after ``now - window_seconds``.
        """
        self._expire(now)
        return self._used

    def remaining(self, now: float) -> int:
        """Return how much is left in the window at ``now`` (never negative).

        Args:
            now: the loop time.

        Returns:
            ``max(0, capacity - used(now))``.
        """
        return max(0, self.capacity - self.used(now))

    def _wake_time(self, amount: int, now: float) -> float:
        """The earliest time at which ``amount`` fits, from the charges held now."""
        need = self._used + amount - self.capacity
        cache = self._cache
        if cache is not None and cache[0] == need and cache[1] == len(self._entries):
            return cache[2]
        freed = 0
        when = now
        for start, charged, _ in self._entries:
            freed += charged
            when = start + self.window_seconds
            if freed >= need:
                break
        self._cache = (need, len(self._entries), when)
        return when

    def _charge(self, amount: int, now: float) -> Charge:
        entry: Charge = [now, amount, True]
        self._entries.append(entry)
        self._used += amount
        return entry

    def _adjust(self, entry: Charge, amount: int, now: float) -> None:
        # A charge that has left the window is gone: leave it (and the total) alone.
        if not entry[2]:
            return
        delta = amount - entry[1]
        if delta:
            entry[1] = amount
            self._used += delta
            self._cache = None

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}({self.capacity}, window_seconds={self.window_seconds:g})"


@final
class RequestBudget(_Window):
    """At most ``max_requests`` admissions in any rolling window of ``window_seconds``.

    Every admitted call is charged one request when it starts; the charge expires
    ``window_seconds`` later. Combine it with a :class:`TokenBudget` for an API's
    requests-per-minute and tokens-per-minute limits at once.

    Args:
        max_requests: requests allowed per window, an int ``>= 1``.
        window_seconds: the window's length, ``> 0``.
        name: a name (required with ``store=``, where it is the shared key).
        store: a :class:`headrace_core.store.BudgetStore` to share the budget between
            processes; default in memory.

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    __slots__ = ()

    def __init__(
        self,
        max_requests: int,
        window_seconds: float = 60.0,
        *,
        name: str | None = None,
        store: BudgetStore | None = None,
    ) -> None:
        super().__init__(max_requests, window_seconds, name, store, "max_requests")

    @property
    def max_requests(self) -> int:
        """Requests allowed per window."""
        return self.capacity

    def _amount(self, tokens: int) -> int:
        return 1


@final
class TokenBudget(_Window):
    """At most ``max_tokens`` tokens in any rolling window of ``window_seconds``.

    A call's ``tokens=`` estimate is charged when it is admitted (its charge starts then
    and expires ``window_seconds`` later); when the call ends, the tokens it recorded
    with ``slot.record_tokens`` replace the estimate (a refund or an extra charge),
    whether it succeeded or failed. A call is admitted only when ``used + tokens <=
    max_tokens``, so a ``tokens=0`` call waits while recorded tokens over-spend the
    window, and a call asking for more than ``max_tokens`` fails at once with
    :class:`TokenBudgetExceeded`.

    Args:
        max_tokens: tokens allowed per window, an int ``>= 1``.
        window_seconds: the window's length, ``> 0``.
        name: a name (required with ``store=``, where it is the shared key).
        store: a :class:`headrace_core.store.BudgetStore` to share the budget between
            processes; default in memory.

    Raises:
        ConfigurationError: when an argument is out of range.
    """

    __slots__ = ()

    def __init__(
        self,
        max_tokens: int,
        window_seconds: float = 60.0,
        *,
        name: str | None = None,
        store: BudgetStore | None = None,
    ) -> None:
        super().__init__(max_tokens, window_seconds, name, store, "max_tokens")

    @property
    def max_tokens(self) -> int:
        """Tokens allowed per window."""
        return self.capacity

    def _amount(self, tokens: int) -> int:
        return tokens


Budget = RequestBudget | TokenBudget
