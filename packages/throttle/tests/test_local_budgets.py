"""LocalBudgets on its own: the admission gate, charges, reconcile and refund of one call."""

from __future__ import annotations

import math

import pytest

from headrace_throttle import RequestBudget, Slot, TokenBudget, TokenBudgetExceeded
from headrace_throttle._budget import LocalBudgets, check_tokens, token_cap


def charged(budgets: LocalBudgets, tokens: int, now: float) -> Slot:
    slot = Slot(tokens)
    assert budgets.try_charge(slot, now)
    return slot


def test_a_call_is_charged_in_every_budget_or_in_none() -> None:
    rpm, tpm = RequestBudget(5, 60.0), TokenBudget(100, 60.0)
    budgets = LocalBudgets((rpm, tpm))
    charged(budgets, 60, 0.0)
    too_big = Slot(50)
    assert not budgets.try_charge(too_big, 1.0)  # 60 + 50 > 100
    assert rpm.used(1.0) == 1  # the request budget was not charged either
    assert tpm.used(1.0) == 60
    assert not hasattr(too_big, "_charges")
    charged(budgets, 40, 1.0)  # exactly at capacity fits
    assert (rpm.used(1.0), tpm.used(1.0)) == (2, 100)


def test_wake_time_is_when_enough_charges_have_expired() -> None:
    tpm = TokenBudget(100, 10.0)
    budgets = LocalBudgets((tpm,))
    charged(budgets, 30, 0.0)
    charged(budgets, 30, 2.0)
    charged(budgets, 40, 4.0)
    assert budgets.wake_time(0, 5.0) == 0.0  # used == capacity: a 0-token call fits
    assert budgets.wake_time(25, 5.0) == 10.0  # the first charge frees 30
    assert budgets.wake_time(50, 5.0) == 12.0  # the first two free 60
    assert budgets.wake_time(25, 10.0) == 0.0  # the first one has expired
    assert tpm.used(10.0) == 70


def test_a_request_budget_charges_one_per_call_whatever_the_tokens() -> None:
    rpm = RequestBudget(2, 60.0)
    budgets = LocalBudgets((rpm,))
    charged(budgets, 500, 0.0)
    charged(budgets, 0, 0.0)
    assert not budgets.try_charge(Slot(), 0.0)
    assert budgets.wake_time(7, 0.0) == 60.0
    assert budgets.token_usage(0.0) == (None, None)  # no token budget to show


def test_reconcile_replaces_the_estimate_by_what_the_call_recorded() -> None:
    rpm, tpm = RequestBudget(5, 60.0), TokenBudget(1000, 60.0)
    budgets = LocalBudgets((rpm, tpm))
    refunded = charged(budgets, 100, 0.0)
    refunded.record_tokens(30)
    budgets.reconcile(refunded)
    assert tpm.used(1.0) == 30
    extra = charged(budgets, 100, 0.0)
    extra.record_tokens(150)
    budgets.reconcile(extra)
    assert tpm.used(1.0) == 180
    untouched = charged(budgets, 100, 0.0)
    budgets.reconcile(untouched)  # nothing recorded: the estimate stays
    assert tpm.used(1.0) == 280
    assert rpm.used(1.0) == 3  # requests are not reconciled
    assert budgets.token_usage(1.0) == (280, 720)


def test_a_cancelled_call_stays_charged_at_least_its_estimate() -> None:
    tpm = TokenBudget(1000, 60.0)
    budgets = LocalBudgets((tpm,))
    small = charged(budgets, 100, 0.0)
    small.record_tokens(30)
    budgets.reconcile(small, cancelled=True)
    assert tpm.used(1.0) == 100  # the server may have counted the estimate
    big = charged(budgets, 100, 0.0)
    big.record_tokens(300)
    budgets.reconcile(big, cancelled=True)
    assert tpm.used(1.0) == 400


def test_a_charge_that_left_the_window_is_not_reconciled() -> None:
    tpm = TokenBudget(100, 10.0)
    budgets = LocalBudgets((tpm,))
    slot = charged(budgets, 50, 0.0)
    assert tpm.used(20.0) == 0  # expired
    slot.record_tokens(80)
    budgets.reconcile(slot)
    assert tpm.used(20.0) == 0  # the running total stays exact
    charged(budgets, 100, 20.0)  # the whole window is free


def test_refund_gives_every_charge_back_once() -> None:
    rpm, tpm = RequestBudget(5, 60.0), TokenBudget(100, 60.0)
    budgets = LocalBudgets((rpm, tpm))
    kept = charged(budgets, 10, 0.0)
    refunded = charged(budgets, 70, 0.0)
    budgets.refund(refunded)
    budgets.refund(refunded)  # idempotent
    assert (rpm.used(1.0), tpm.used(1.0)) == (1, 10)
    assert kept._charges is not None
    charged(budgets, 90, 1.0)  # the refunded room is usable at once


def test_the_first_token_budget_is_the_one_shown() -> None:
    first, second = TokenBudget(100, 60.0), TokenBudget(50, 60.0)
    budgets = LocalBudgets((RequestBudget(5), first, second))
    assert budgets.token_budget is first
    charged(budgets, 20, 0.0)
    assert budgets.token_usage(0.0) == (20, 80)
    assert second.used(0.0) == 20


def test_token_cap_and_check_tokens_name_the_smallest_token_budget() -> None:
    small = TokenBudget(50, name="small")
    budgets = (RequestBudget(10), TokenBudget(100, name="big"), small)
    assert token_cap(budgets) == 50
    assert token_cap((RequestBudget(10),)) == math.inf
    check_tokens(50, budgets)
    with pytest.raises(TokenBudgetExceeded, match="51") as info:
        check_tokens(51, budgets)
    assert info.value.name == "small"
    assert isinstance(info.value, ValueError)
    for bad in (-1, True, 2.5, "3"):
        with pytest.raises(ValueError, match="tokens"):
            check_tokens(bad, budgets)
    check_tokens(10**9, (RequestBudget(10),))  # no token budget: any amount
