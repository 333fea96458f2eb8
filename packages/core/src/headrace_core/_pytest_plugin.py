"""pytest plugin (entry point ``headrace``): the ``virtual_clock`` fixture and its marker.

``@pytest.mark.virtual_clock(**options)`` configures the fixture with the keyword options
:class:`~headrace_core.testing.VirtualClock` takes; an async test with the marker gets the
fixture without asking for it. Markers on a module, class and test combine option by
option, the closest winning.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace_core._errors import ConfigurationError
from headrace_core._virtual_clock import VirtualClock

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - without pytest-asyncio, async fixtures need anyio
    _async_fixture = pytest.fixture  # type: ignore[assignment]

_MARKER = "virtual_clock"
_OPTIONS = tuple(inspect.signature(VirtualClock).parameters)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): run the test with the virtual_clock fixture, configured "
        f"with VirtualClock's keyword options ({', '.join(_OPTIONS)})",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The marker alone puts an async test on virtual time: it asks for the fixture.
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and item.get_closest_marker(_MARKER) is not None
            and _MARKER not in item.fixturenames
            and inspect.iscoroutinefunction(item.obj)
        ):
            item.fixturenames.append(_MARKER)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(_MARKER) is not None and _MARKER not in getattr(
        item, "fixturenames", ()
    ):
        pytest.fail(
            f"@pytest.mark.{_MARKER} configures the virtual_clock fixture, which runs on the "
            f"test's event loop: {item.name} is not an async test and does not use it",
            pytrace=False,
        )


def _marker_options(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """Return the ``VirtualClock`` options the ``virtual_clock`` markers of ``node`` give.

    Markers closer to the test override farther ones (module, class) option by option.
    A positional argument or an option ``VirtualClock`` does not take fails the test's
    setup with a message naming the marker and the option.
    """
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers(_MARKER))):
        if marker.args:
            pytest.fail(
                f"@pytest.mark.{_MARKER} takes keyword options only "
                f"({', '.join(_OPTIONS)}), not {marker.args!r}",
                pytrace=False,
            )
        for name in marker.kwargs:
            if name not in _OPTIONS:
                pytest.fail(
                    f"@pytest.mark.{_MARKER}: unknown option {name!r}; "
                    f"VirtualClock takes {', '.join(_OPTIONS)}",
                    pytrace=False,
                )
        options.update(marker.kwargs)
    return options


def _make_clock(node: pytest.Item | pytest.Collector) -> VirtualClock:
    options = _marker_options(node)
    try:
        return VirtualClock(**options)
    except ConfigurationError as exc:
        shown = ", ".join(f"{name}={value!r}" for name, value in options.items())
        pytest.fail(f"@pytest.mark.{_MARKER}({shown}): {exc}", pytrace=False)


@_async_fixture
async def virtual_clock(request: pytest.FixtureRequest) -> AsyncIterator[VirtualClock]:
    """An active :class:`~headrace_core.testing.VirtualClock` on the test's event loop.

    Configured by ``@pytest.mark.virtual_clock(**options)`` when the test (or its class or
    module) carries it.
    """
    with _make_clock(request.node) as clock:
        yield clock
