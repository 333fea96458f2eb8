"""A user object whose ``__repr__`` raises, handed where the family refuses it.

The refusal must be the family's own clear error, never the ``__repr__``'s exception:
every message that shows a user's object goes through ``safe_repr``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from headrace_core import CapacityExceeded
from headrace_core.lowlevel import start_task
from headrace_core.testing import VirtualClock
from headrace_flow import flow, stage
from headrace_guards import CircuitBreaker, RateLimiter, Retry
from headrace_throttle import Throttle


class _Hostile:
    """Its ``__repr__`` raises; it is nothing any component accepts."""

    def __repr__(self) -> str:
        raise RuntimeError("the user's __repr__")


def hostile() -> Any:
    """A ``_Hostile``, typed ``Any``: the tests hand it where the types forbid it."""
    return _Hostile()


@pytest.mark.parametrize(
    ("refuse", "error"),
    [
        (lambda: CircuitBreaker()(hostile()), TypeError),  # not an async function
        (lambda: Retry(3)(hostile()), TypeError),
        (lambda: stage(hostile()), TypeError),
        (lambda: flow(hostile()), TypeError),
        (lambda: Throttle(2).hold(hostile()), ValueError),
    ],
    ids=["breaker", "retry", "stage", "flow", "throttle.hold"],
)
def test_a_refused_object_with_a_raising_repr_gets_the_clear_error(
    refuse: Callable[[], Any], error: type[BaseException]
) -> None:
    with pytest.raises(error, match=r"\(repr failed\)"):
        refuse()


async def test_rate_limiter_cost_and_start_task_show_a_hostile_value_safely() -> None:
    with VirtualClock():
        limiter = RateLimiter(3, 1)
        with pytest.raises(CapacityExceeded, match=r"cost=<.*Hostile object \(repr failed\)>"):
            await limiter.acquire(hostile())

        class Coro:
            """A coroutine in all but its ``__repr__``: it returns at once."""

            def send(self, value: object) -> object:
                raise StopIteration

            def close(self) -> None:
                return None

            def __repr__(self) -> str:
                raise RuntimeError("the user's __repr__")

        coro: Any = Coro()
        with pytest.raises(RuntimeError, match=r"start_task\(\): the first await of <"):
            start_task(asyncio.get_running_loop(), coro)
