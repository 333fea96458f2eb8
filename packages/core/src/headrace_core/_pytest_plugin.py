"""pytest plugin (entry point ``headrace``): the ``virtual_clock`` fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from headrace_core._virtual_clock import VirtualClock

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - without pytest-asyncio, async fixtures need anyio
    _async_fixture = pytest.fixture  # type: ignore[assignment]


@_async_fixture
async def virtual_clock() -> AsyncIterator[VirtualClock]:
    """An active :class:`~headrace_core.testing.VirtualClock` on the test's event loop."""
    with VirtualClock() as clock:
        yield clock
