"""Per-item calls: the stage's deadline (``StageTimeout``) and retries (core backoff)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from headrace_core.backoff import next_delay
from headrace_core.lowlevel import being_cancelled
from headrace_flow._errors import StageTimeout
from headrace_flow._stage_run import StageRun


def make_call(st: StageRun, fn: Any) -> Any:
    """Wrap ``fn`` with the stage's timeout and retries (itself when it has neither)."""
    options = st.options
    retries = options.retries
    timeout = options.timeout
    if not retries and timeout is None:
        return fn
    retry_on = options.retry_on
    name = st.name
    schedule = options.schedule()

    async def attempt(item: Any) -> Any:
        if timeout is None:
            return await fn(item)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await fn(item)
        except TimeoutError as exc:
            if scope.expired():
                raise StageTimeout(timeout=timeout, name=name) from exc
            raise

    if not retries:
        return attempt

    async def call(item: Any) -> Any:
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
