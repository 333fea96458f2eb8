"""``lowlevel.keep_cancel``: a client that swallows a cancellation does not lose it."""

from __future__ import annotations

import asyncio

import pytest

from headrace_core import HeadraceError
from headrace_core.lowlevel import keep_cancel


async def test_a_reply_passes_through() -> None:
    async def reply() -> int:
        return 7

    assert await keep_cancel(reply()) == 7


async def test_a_cancellation_the_client_swallowed_is_raised_again() -> None:
    started = asyncio.Event()

    async def swallowing() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "a reply read after the cancel"
        raise AssertionError("unreachable")

    task = asyncio.create_task(keep_cancel(swallowing()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_raised_in_place_of_the_cancellation_becomes_one() -> None:
    started = asyncio.Event()

    async def failing() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("connection reset while cancelled") from None

    task = asyncio.create_task(keep_cancel(failing()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stray_cancelled_error_of_the_client_is_its_failure() -> None:
    async def stray() -> None:
        raise asyncio.CancelledError

    with pytest.raises(HeadraceError, match="the Redis client raised CancelledError") as caught:
        await keep_cancel(stray(), "the Redis client")
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


async def test_an_error_of_the_client_is_raised_as_it_is() -> None:
    async def failing() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        await keep_cancel(failing())
