"""Rolling-window budgets: requests per window and tokens per window, kept in O(1) amortised.

Each admitted call appends one charge ``[start, amount, in_window]`` to the deque of each
window and takes its amount from the window's room (its capacity less the charges it
holds). A charge is changed in place when the call reports its real token count.
Charges leave from the left once ``start + window`` has passed, so every charge is
appended once and removed once: the cost of a call does not depend on how many charges
the window holds.

Removal is deferred to when it matters. Amounts are never negative, so the room left by
the charges held is a lower bound of the room the window has: a call that fits it fits
the window, and the check is one integer comparison per budget. The charges that have
left the window are removed only when that bound would refuse (the call may fit once
they are gone), when the usage is read, and, to bound memory, once per ``_SWEEP``
charges added to the window (it holds at most ``_SWEEP`` charges more than at the
previous sweep). Loop time never goes back, so each decision is the one that removing
them at every call would make.

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
from headrace_core.lowlevel import TIME_TOLERANCE, check_int, check_number, safe_repr
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
# ``in_window`` turns False when the charge is removed from the window; until then a
# reconcile may change ``amount`` (a charge past its time but not yet removed is removed
# with its reconciled amount, so the running total stays exact).
Charge = list[Any]

# Charges added to a window between two sweeps of the charges that have left it. (A
# sweep costs one look at the oldest charge plus one step per charge removed; below 256
# the countdown is an int Python never allocates.)
_SWEEP = 255


@final
class _Tally:
    """The state of one window: its charges, oldest first, and the room they leave.

    Both kinds of budget keep theirs in this one class, so the code that reads and
    charges the windows of a call always meets the same type (the interpreter
    specialises it).

    Args:
        capacity: the most the window holds.
        window: the window's length in seconds.
    """

    __slots__ = ("cache", "capacity", "entries", "room", "sweep", "window")

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = capacity
        self.window = window
        self.entries: deque[Charge] = deque()
        #: ``capacity`` minus the charges held: what is left in the window, less the
        #: charges that have left it but are not removed yet (a lower bound of what is
        #: left; exact after :meth:`expire`).
        self.room = capacity
        #: Charges still to add before the next sweep.
        self.sweep = _SWEEP
        #: The last answer of :meth:`wake_time`: ``(need, len(entries), when)``.
        self.cache: tuple[int, int, float] | None = None

    def expire(self, now: float) -> None:
        """Remove the charges that have left the window at ``now``: :attr:`room` is exact."""
        entries = self.entries
        window = self.window
        horizon = now + TIME_TOLERANCE  # ``within(start + window, now)``, inlined
        while entries and entries[0][0] + window <= horizon:
            entry = entries.popleft()
            self.room += entry[1]
            entry[2] = False  # gone from the window: a late reconcile must leave it alone
            self.cache = None
        self.sweep = _SWEEP

    def fits(self, amount: int, now: float) -> bool:
        """Whether ``amount`` fits at ``now``, looking exactly (:attr:`room` said no)."""
        self.expire(now)
        return amount <= self.room

    def charge(self, amount: int, now: float) -> Charge:
        """Add a charge of ``amount`` starting at ``now`` (sweeping first when one is due)."""
        self.sweep -= 1
        if not self.sweep:
            self.expire(now)
        entry: Charge = [now, amount, True]
        self.entries.append(entry)
        self.room -= amount
        return entry

    def adjust(self, entry: Charge, amount: int) -> None:
        """Make ``entry`` a charge of ``amount`` (a charge removed from the window stays gone)."""
        if entry[2]:
            delta = amount - entry[1]
            if delta:
                entry[1] = amount
                self.room -= delta
                self.cache = None

    def wake_time(self, amount: int, now: float) -> float:
        """The earliest time at which ``amount`` fits, from the charges held (after ``expire``)."""
        entries = self.entries
        need = amount - self.room
        cache = self.cache
        if cache is not None and cache[0] == need and cache[1] == len(entries):
            return cache[2]
        freed = 0
        when = now
        for start, charged, _ in entries:
            freed += charged
            when = start + self.window
            if freed >= need:
                break
        self.cache = (need, len(entries), when)
        return when


class _Window:
    """The shared machinery of both budgets (private; the public classes are final)."""

    __slots__ = ("_tally", "name", "store")

    def __init__(
        self,
        capacity: int,
        window_seconds: float,
        name: str | None,
        store: BudgetStore | None,
        argument: str,
    ) -> None:
        capacity = check_int(argument, capacity, ge=1)
        window_seconds = check_number("window_seconds", window_seconds, gt=0)
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
        self._tally = _Tally(capacity, window_seconds)

    @property
    def capacity(self) -> int:
        """The most the window holds: requests, or tokens."""
        return self._tally.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        tally = self._tally
        tally.room += value - tally.capacity
        tally.capacity = value

    @property
    def window_seconds(self) -> float:
        """The window's length, in seconds."""
        return self._tally.window

    @window_seconds.setter
    def window_seconds(self, value: float) -> None:
        self._tally.window = value

    # The window's charges and their running total (tests read and seed them).
    @property
    def _entries(self) -> deque[Charge]:
        return self._tally.entries

    @_entries.setter
    def _entries(self, entries: deque[Charge]) -> None:
        self._tally.entries = entries

    @property
    def _used(self) -> int:
        tally = self._tally
        return tally.capacity - tally.room

    @_used.setter
    def _used(self, used: int) -> None:
        tally = self._tally
        tally.room = tally.capacity - used

    # -- accounting (all O(1) amortised) ---------------------------------------------
    def used(self, now: float) -> int:
        """Return the amount charged in the window that ends at ``now``.

        Args:
            now: the loop time.

        Returns:
            The sum of the charges that started after ``now - window_seconds``.
        """
        tally = self._tally
        tally.expire(now)
        return tally.capacity - tally.room

    def remaining(self, now: float) -> int:
        """Return how much is left in the window at ``now`` (never negative).

        Args:
            now: the loop time.

        Returns:
            ``max(0, capacity - used(now))``.
        """
        return max(0, self.capacity - self.used(now))

    def _charge(self, amount: int, now: float) -> Charge:
        return self._tally.charge(amount, now)

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
        raise ValueError(f"tokens={safe_repr(tokens)}: must be an int >= 0")
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

    __slots__ = ("_kinds", "_tallies", "_tokens", "budgets", "token_budget")

    def __init__(self, budgets: tuple[Budget, ...]) -> None:
        self.budgets = budgets
        self._tallies = tuple(b._tally for b in budgets)
        self._kinds = tuple((b._tally, isinstance(b, TokenBudget)) for b in budgets)
        # (the index of its charge, its tally) per token budget
        self._tokens = tuple(
            (i, b._tally) for i, b in enumerate(budgets) if isinstance(b, TokenBudget)
        )
        #: The first token budget, whose window the throttle's snapshot shows.
        self.token_budget = next((b for b in budgets if isinstance(b, TokenBudget)), None)

    def try_charge(self, slot: Slot, now: float) -> bool:
        """Charge ``slot``'s call in every budget if all of them allow it now.

        Returns:
            True when charged; False (nothing charged) when one budget is full.
        """
        tokens = slot.tokens
        kinds = self._kinds
        for tally, is_tokens in kinds:
            amount = tokens if is_tokens else 1
            # ``room`` is a lower bound: only when it refuses is the window looked at.
            if amount > tally.room and not tally.fits(amount, now):
                return False
        slot._charges = [
            tally.charge(tokens if is_tokens else 1, now) for tally, is_tokens in kinds
        ]
        return True

    def wake_time(self, tokens: int, now: float) -> float:
        """0.0 when a call of ``tokens`` fits every budget now, else the earliest time it may.

        Times computed from loop times meet their bounds through ``within``, so a call
        that arrives exactly one window later passes at every clock magnitude.
        """
        wake = 0.0
        for tally, is_tokens in self._kinds:
            amount = tokens if is_tokens else 1
            if amount > tally.room and not tally.fits(amount, now):
                when = tally.wake_time(amount, now)
                if when > wake:
                    wake = when
        return wake

    def record(self, tokens: int, now: float) -> None:
        """Charge ``tokens`` consumed outside a call to every token budget, starting at ``now``.

        Queued calls see the charge when they are next examined (it can only delay them).
        """
        for _, tally in self._tokens:
            tally.charge(tokens, now)

    def charge(self, slot: Slot, now: float) -> None:
        """Charge ``slot``'s call in every budget (after :meth:`wake_time` said it fits)."""
        tokens = slot.tokens
        slot._charges = [
            tally.charge(tokens if is_tokens else 1, now) for tally, is_tokens in self._kinds
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
        for i, tally in self._tokens:
            tally.adjust(charges[i], amount)

    def refund(self, slot: Slot) -> None:
        """Give back every charge of a call that was admitted but never ran."""
        charges = slot._charges
        if charges is None:
            return
        slot._charges = None
        for tally, entry in zip(self._tallies, charges, strict=True):
            tally.adjust(entry, 0)

    def token_usage(self, now: float) -> tuple[int | None, int | None]:
        """``(used, remaining)`` of the first token budget at ``now``, or ``(None, None)``."""
        budget = self.token_budget
        if budget is None:
            return None, None
        return budget.used(now), budget.remaining(now)
