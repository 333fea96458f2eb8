"""Per-item calls: the stage's deadline (``StageTimeout``) and retries (core backoff)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeAlias

from headrace_core.backoff import next_delay
from headrace_core.lowlevel import Deadline, being_cancelled
from headrace_flow._errors import StageTimeout
from headrace_flow._plan import CallOptions

#: A stage's item function (the user's, or wrapped with its deadline and retries).
ItemCall: TypeAlias = Callable[[object], Awaitable[object]]


def make_call(name: str, options: CallOptions, fn: ItemCall) -> ItemCall:
    """Wrap ``fn`` with the stage's timeout and retries (itself when it has neither)."""
    retries = options.retries
    timeout = options.timeout
    if not retries and timeout is None:
        return fn
    retry_on = options.retry_on
    schedule = options.schedule()

    def expired() -> StageTimeout:
        return StageTimeout(timeout=timeout or 0.0, name=name)

    async def attempt(item: object) -> object:
        if timeout is None:
            return await fn(item)
        return await Deadline(timeout, expired).run(fn(item))

    if not retries:
        return attempt

    async def call(item: object) -> object:
        delays: Iterator[float] | None = None
        tries = 0
        while True:
            try:
                return await attempt(item)
            except (KeyboardInterrupt, SystemExit):
                raise  # never retried, whatever retry_on says
            except retry_on as exc:
                if tries >= retries:
                    raise
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    raise  # the worker is being cancelled: not the item's failure
                tries += 1
                if delays is None:
                    delays = iter(schedule.delays())
                delay = next_delay(delays, owner=f"flow stage {name!r} (backoff=...)", cause=exc)
                if delay > 0:
                    await asyncio.sleep(delay)

    return call
