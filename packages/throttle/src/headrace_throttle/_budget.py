"""Rolling-window budgets: requests per window and tokens per window, kept in O(1) amortised.

Each admitted call appends one charge ``[start, amount, in_window]`` to a deque and adds its amount
to a running total. Charges leave from the left once ``start + window`` has passed, so
every charge is appended once and removed once: the cost of a call does not depend on
how many charges the window holds. A charge is changed in place when the call reports
its real token count.

:class:`LocalBudgets` is a throttle's set of in-memory budgets: the gate admission
asks (does a call fit every window now, and if not, when), the charges of an admitted
call, their reconciliation when it ends and their refund when it never ran. It and the
windows are the only code that touches a window's charges and totals.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any, final

from headrace_core import ConfigurationError
from headrace_core.lowlevel import TIME_TOLERANCE, check_int, check_number, within
from headrace_core.store import BudgetStore
from headrace_throttle._errors import TokenBudgetExceeded
from headrace_throttle._types import Slot

__all__ = [
    "Budget",
    "LocalBudgets",
    "RequestBudget",
    "TokenBudget",
    "charge_amount",
    "check_tokens",
    "token_cap",
]

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

    def _adjust(self, entry: Charge, amount: int) -> None:
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


Budget = RequestBudget | TokenBudget


def charge_amount(budget: Budget, tokens: int) -> int:
    """What a call of ``tokens`` costs in ``budget``: 1 request, or its tokens."""
    return tokens if isinstance(budget, TokenBudget) else 1


def token_cap(budgets: Iterable[Budget]) -> float:
    """The most tokens one call may ask for: the smallest token budget (``inf`` if none)."""
    return min((b.capacity for b in budgets if isinstance(b, TokenBudget)), default=math.inf)


def check_tokens(tokens: object, budgets: Iterable[Budget]) -> None:
    """Refuse a ``tokens=`` argument that is not an int ``>= 0`` or that no window can hold.

    Raises:
        ValueError: when ``tokens`` is not an int ``>= 0``.
        TokenBudgetExceeded: when it exceeds a token budget's capacity (the smallest one
            is named).
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens={tokens!r}: must be an int >= 0")
    smallest = min(
        (b for b in budgets if isinstance(b, TokenBudget)),
        key=lambda b: b.capacity,
        default=None,
    )
    if smallest is not None and tokens > smallest.capacity:
        raise TokenBudgetExceeded(requested=tokens, capacity=smallest.capacity, name=smallest.name)


@final
class LocalBudgets:
    """The in-memory budgets of one throttle, all enforced at admission.

    A request budget charges 1 per call, a token budget the call's ``tokens`` estimate.
    The charges of an admitted call live on its slot (one per budget, in order) until it
    ends: :meth:`reconcile` then replaces each token estimate by what the call recorded,
    and :meth:`refund` gives every charge back for a call that never ran.

    Args:
        budgets: the budgets (none with a ``store``).
    """

    __slots__ = ("_kinds", "_tokens", "budgets", "token_budget")

    def __init__(self, budgets: tuple[Budget, ...]) -> None:
        self.budgets = budgets
        self._kinds = tuple((b, isinstance(b, TokenBudget)) for b in budgets)
        self._tokens = tuple(i for i, b in enumerate(budgets) if isinstance(b, TokenBudget))
        #: The first token budget, whose window the throttle's snapshot shows.
        self.token_budget = next((b for b in budgets if isinstance(b, TokenBudget)), None)

    def try_charge(self, slot: Slot, now: float) -> bool:
        """Charge ``slot``'s call in every budget if all of them allow it now.

        Returns:
            True when charged; False (nothing charged) when one budget is full.
        """
        tokens = slot.tokens
        kinds = self._kinds
        horizon = now + TIME_TOLERANCE  # ``within(start + window, now)``, inlined
        for budget, is_tokens in kinds:
            entries = budget._entries
            if entries and entries[0][0] + budget.window_seconds <= horizon:
                budget._expire(now)
            if budget._used + (tokens if is_tokens else 1) > budget.capacity:
                return False
        charges: list[Charge] = []
        for budget, is_tokens in kinds:
            entry: Charge = [now, tokens if is_tokens else 1, True]
            budget._entries.append(entry)
            budget._used += entry[1]
            charges.append(entry)
        slot._charges = charges
        return True

    def wake_time(self, tokens: int, now: float) -> float:
        """0.0 when a call of ``tokens`` fits every budget now, else the earliest time it may.

        Times computed from loop times meet their bounds through ``within``, so a call
        that arrives exactly one window later passes at every clock magnitude.
        """
        wake = 0.0
        for budget, is_tokens in self._kinds:
            amount = tokens if is_tokens else 1
            entries = budget._entries
            if entries and within(entries[0][0] + budget.window_seconds, now):
                budget._expire(now)
            if budget._used + amount > budget.capacity:
                when = budget._wake_time(amount, now)
                if when > wake:
                    wake = when
        return wake

    def record(self, tokens: int, now: float) -> None:
        """Charge ``tokens`` consumed outside a call to every token budget, starting at ``now``.

        Queued calls see the charge when they are next examined (it can only delay them).
        """
        budgets = self.budgets
        for i in self._tokens:
            budgets[i]._charge(tokens, now)

    def charge(self, slot: Slot, now: float) -> None:
        """Charge ``slot``'s call in every budget (after :meth:`wake_time` said it fits)."""
        tokens = slot.tokens
        slot._charges = [
            budget._charge(tokens if is_tokens else 1, now) for budget, is_tokens in self._kinds
        ]

    def reconcile(self, slot: Slot, *, cancelled: bool = False) -> None:
        """Replace the call's token estimates by the tokens it recorded (if it recorded any).

        Args:
            slot: the finished call's slot.
            cancelled: the call was cancelled while it ran: it stays charged at least its
                estimate (the server may have counted it).
        """
        charges = slot._charges
        recorded = slot._recorded
        if charges is None or recorded is None:
            return  # nothing recorded: the estimate stays charged
        amount = max(recorded, slot.tokens) if cancelled else recorded
        budgets = self.budgets
        for i in self._tokens:
            budgets[i]._adjust(charges[i], amount)

    def refund(self, slot: Slot) -> None:
        """Give back every charge of a call that was admitted but never ran."""
        charges = slot._charges
        if charges is None:
            return
        slot._charges = None
        for budget, entry in zip(self.budgets, charges, strict=True):
            budget._adjust(entry, 0)

    def token_usage(self, now: float) -> tuple[int | None, int | None]:
        """``(used, remaining)`` of the first token budget at ``now``, or ``(None, None)``."""
        budget = self.token_budget
        if budget is None:
            return None, None
        return budget.used(now), budget.remaining(now)
