"""Budgets shared between processes through a :class:`headrace_core.store.BudgetStore`.

A shared budget is reserved after the call is admitted locally (the slot is held while
the store is asked), and reconciled when the call ends. FIFO order holds within one
process; across processes, the store decides.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from headrace_throttle._budget import RequestBudget, TokenBudget

if TYPE_CHECKING:
    from headrace_throttle._types import Slot

__all__ = ["reserve_shared", "settle_shared"]

# When a store refuses without saying when to retry, look again after this share of
# the window.
_RETRY_SHARE = 0.05

Grant = tuple[TokenBudget | RequestBudget, str | None]


async def reserve_shared(
    budgets: tuple[TokenBudget | RequestBudget, ...], slot: Slot
) -> list[Grant]:
    """Reserve the call's amount in every shared budget, waiting while a store refuses.

    Args:
        budgets: the store-backed budgets.
        slot: the admitted call's slot (its ``tokens`` estimate).

    Returns:
        The grants, to hand to :func:`settle_shared` when the call ends.
    """
    loop = asyncio.get_running_loop()
    grants: list[Grant] = []
    for budget in budgets:
        store = budget.store
        assert store is not None
        assert budget.name is not None
        amount = budget._amount(slot.tokens)
        while True:
            granted, retry_at, entry = await store.reserve(
                budget.name, amount, budget.capacity, budget.window_seconds
            )
            if granted:
                grants.append((budget, entry))
                break
            delay = (
                retry_at - loop.time()
                if retry_at is not None
                else budget.window_seconds * _RETRY_SHARE
            )
            await asyncio.sleep(max(0.0, delay))
    return grants


async def settle_shared(grants: list[Grant], slot: Slot) -> None:
    """Replace the estimate of every shared token budget by the tokens the call recorded.

    Args:
        grants: what :func:`reserve_shared` returned.
        slot: the finished call's slot.
    """
    recorded = slot._recorded
    if recorded is None:
        return
    for budget, entry in grants:
        if isinstance(budget, TokenBudget) and entry is not None:
            store = budget.store
            assert store is not None
            assert budget.name is not None
            await store.adjust(budget.name, entry, recorded)
