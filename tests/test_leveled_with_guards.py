"""headrace-leveled runs headrace-guards' objects through ``TaskFunction(guards=...)``.

leveled does not depend on guards (the ``guards=`` protocol needs no import); these tests
prove the two compose when both are installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace_core.backoff import fixed
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker, CircuitOpenError, Retry, Timeout
from headrace_leveled import Phase, Processor, ProcessorError, Task, TaskFunction


async def test_guards_timeout_and_retry_around_a_phase() -> None:
    attempts: list[float] = []

    async def slow_then_ok(ctx: Any) -> str:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            await asyncio.sleep(100)
        return "ok"

    tf = TaskFunction(slow_then_ok, guards=[Retry(attempts=2, backoff=fixed(0)), Timeout(5)])
    with VirtualClock():
        report = (
            await Processor.builder().add_task(Task("A", execute=tf)).build().process_tasks(None)
        )
    assert report.results == {"A": "ok"}
    assert attempts[1] - attempts[0] == 5


async def test_an_open_breaker_fails_the_phase_without_calling_it() -> None:
    calls: list[int] = []

    async def failing(ctx: Any) -> None:
        calls.append(1)
        raise ConnectionError("down")

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    tf = TaskFunction(failing, guards=[breaker])
    processor = Processor.builder().add_task(Task("A", execute=tf)).build()
    with VirtualClock():
        with pytest.raises(ProcessorError) as first:
            await processor.process_tasks(None)
        with pytest.raises(ProcessorError) as second:
            await processor.process_tasks(None)
    assert isinstance(first.value.exceptions[0], ConnectionError)
    assert isinstance(second.value.exceptions[0], CircuitOpenError)
    assert calls == [1]
    assert second.value.report.tasks["A"].phases[Phase.EXECUTE].attempts == 1
