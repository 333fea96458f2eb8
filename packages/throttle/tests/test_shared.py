"""Budgets shared through a BudgetStore (core's protocol): reserve, wait, reconcile."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass

import pytest

from headrace_core.store import BudgetStore
from headrace_core.testing import VirtualClock
from headrace_throttle import RequestBudget, Slot, Throttle, TokenBudget, TokenBudgetExceeded


@dataclass
class Entry:
    start: float
    amount: float


class LoopClockStore:
    """A BudgetStore on the loop clock, as a Redis-backed one would keep it server-side."""

    def __init__(self) -> None:
        self.windows: dict[str, deque[Entry]] = {}
        self.entries: dict[str, Entry] = {}
        self.ids = itertools.count()
        self.calls: list[str] = []

    def _used(self, name: str, window: float) -> float:
        now = asyncio.get_running_loop().time()
        entries = self.windows.setdefault(name, deque())
        while entries and entries[0].start + window <= now:
            entries.popleft()
        return sum(e.amount for e in entries)

    async def reserve(
        self, name: str, amount: float, cap: float, window: float
    ) -> tuple[bool, float | None, str | None]:
        self.calls.append(f"reserve {name} {amount}")
        now = asyncio.get_running_loop().time()
        if self._used(name, window) + amount > cap:
            oldest = self.windows[name][0]
            return False, oldest.start + window, None
        entry_id = str(next(self.ids))
        entry = Entry(now, amount)
        self.windows[name].append(entry)
        self.entries[entry_id] = entry
        return True, None, entry_id

    async def adjust(self, name: str, entry: str, amount: float) -> None:
        self.calls.append(f"adjust {name} {amount}")
        self.entries[entry].amount = amount


def test_the_test_store_follows_the_protocol() -> None:
    assert isinstance(LoopClockStore(), BudgetStore)


async def test_shared_budgets_reserve_wait_and_reconcile() -> None:
    with VirtualClock(start=0.0) as clock:
        store = LoopClockStore()
        tpm = TokenBudget(100, 60.0, name="tpm", store=store)
        rpm = RequestBudget(10, 60.0, name="rpm", store=store)
        t = Throttle(4, budgets=[tpm, rpm])
        starts: list[float] = []

        async def call(slot: Slot) -> None:
            starts.append(clock.now())
            slot.record_tokens(40)

        await asyncio.gather(*(t.execute(call, tokens=50) for _ in range(3)))
        assert starts == [0.0, 0.0, 60.0]
        assert "adjust tpm 40" in store.calls
        assert store._used("tpm", 60.0) == 40  # the first two expired; the third recorded 40
        with pytest.raises(TokenBudgetExceeded):
            await t.execute(call, tokens=101)
        assert t.snapshot().tokens_used is None  # a shared budget is read from its store


def test_a_shared_budget_needs_a_name() -> None:
    from headrace_core import ConfigurationError

    with pytest.raises(ConfigurationError, match="name"):
        TokenBudget(10, store=LoopClockStore())
