"""``Lifecycle``: the state behind the family's one ``aclose()`` contract."""

from __future__ import annotations

import asyncio

import pytest

from headrace_core import Closed
from headrace_core.lowlevel import Lifecycle


class GateClosed(Closed):
    pass


def test_enter_counts_and_close_refuses() -> None:
    life = Lifecycle("Worker 'a'")
    life.enter()
    life.enter()
    assert life.running == 2
    assert life.close() is True
    assert life.close() is False  # idempotent
    with pytest.raises(Closed, match="Worker 'a' is closed"):
        life.enter()
    assert life.running == 2  # a refused call is not counted
    life.leave()
    life.leave()
    assert life.running == 0
    assert "closed, 0 running" in repr(life)


def test_the_error_is_the_components_own() -> None:
    life = Lifecycle("Gate", lambda: GateClosed("gate shut"))
    life.close()
    with pytest.raises(GateClosed, match="gate shut"):
        life.enter()


async def test_wait_idle_returns_at_once_when_nothing_runs() -> None:
    life = Lifecycle("Worker")
    await life.wait_idle()
    life.close()
    await life.wait_idle()
    assert life.idle is None


async def test_every_waiter_wakes_when_the_last_call_leaves() -> None:
    life = Lifecycle("Worker")
    life.enter()
    life.enter()
    life.close()
    waiters = [asyncio.create_task(life.wait_idle()) for _ in range(3)]
    await asyncio.sleep(0)
    life.leave()
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)  # one call is still running
    life.leave()
    await asyncio.gather(*waiters)
    assert life.idle is None


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    life = Lifecycle("Worker")
    life.enter()
    first = asyncio.create_task(life.wait_idle())
    second = asyncio.create_task(life.wait_idle())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not second.done()
    life.leave()
    await second


async def test_the_inlined_way_out_wakes_waiters() -> None:
    # What hot paths write instead of leave(): decrement, then wake at zero.
    life = Lifecycle("Worker")
    life.running += 1
    waiter = asyncio.create_task(life.wait_idle())
    await asyncio.sleep(0)
    life.running -= 1
    if not life.running and life.idle:
        life.wake()
    await waiter
