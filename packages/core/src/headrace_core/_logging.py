"""Log records of a component's events: structured, rate-limited, free when disabled.

Every headrace package logs on ``headrace.<package>``; the ``headrace`` logger has a
``NullHandler`` (set when ``headrace_core`` is imported, and every package imports it), so
nothing is printed until the application configures logging.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, final

from headrace_core._validate import check_int, check_number

__all__ = ["EXTRA_PREFIX", "EventLog"]

#: The prefix of every key a headrace record puts in ``extra``: no such key is an
#: attribute of :class:`logging.LogRecord`, so none can clash with one.
EXTRA_PREFIX: Final = "headrace_"

_MAX_KEYS: Final = 4096
_DEBUG: Final = logging.DEBUG
_INFO: Final = logging.INFO
_WARNING: Final = logging.WARNING


@final
class _Budget:
    """The records of one (component, event) key in the current window."""

    __slots__ = ("count", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.suppressed = 0


@final
class EventLog:
    """The event records of one package, on the logger ``logger``.

    Each call logs one event of a component: ``message`` is a ``%``-format string with
    ``args`` (formatted only when a handler emits the record), prefixed with the component
    (``"Retry 'fetch': "``). The keyword fields go into ``extra`` under the
    :data:`EXTRA_PREFIX` (``kind`` becomes ``headrace_kind``, ``delay`` becomes
    ``headrace_delay``), along with ``headrace_kind``, ``headrace_component`` (the name, or
    None) and ``headrace_event`` (``event``, or ``message`` when it is not given).

    At most ``limit`` records are emitted per (component, event) key in each window of
    ``window`` seconds of the running event loop's clock; outside a running loop there is
    no clock, so a window ends after ``limit * 100`` events of the key instead. The first
    record after some were suppressed says how many in ``headrace_suppressed`` (and in its
    message).

    A call returns at once when the logger is not enabled for its level; a hot path
    should still test :meth:`enabled` (``logger.isEnabledFor``) first so that disabled
    logging costs one method call. Fields must be plain values (numbers, strings, names of
    types): use :func:`~headrace_core.lowlevel.safe_repr` for a user's object.

    Args:
        logger: the logger name, ``headrace.<package>``.
        limit: the records per key and window, ``>= 1``.
        window: the window in seconds of loop time, ``> 0``.

    Raises:
        ConfigurationError: when ``limit`` or ``window`` is out of range.
    """

    __slots__ = ("_budgets", "_limit", "_window", "logger")

    def __init__(self, logger: str, *, limit: int = 10, window: float = 60.0) -> None:
        self._limit = check_int("limit", limit, ge=1)
        self._window = check_number("window", window, gt=0)
        self.logger = logging.getLogger(logger)
        self._budgets: dict[tuple[str, str | None, str], _Budget] = {}

    def enabled(self, level: int) -> bool:
        """Whether the logger emits records of ``level`` (``logger.isEnabledFor``)."""
        return self.logger.isEnabledFor(level)

    def debug(
        self,
        message: str,
        *args: object,
        kind: str,
        component: str | None,
        event: str | None = None,
        **fields: Any,
    ) -> None:
        """Log one event at DEBUG (see the class)."""
        if self.logger.isEnabledFor(_DEBUG):
            self._log(_DEBUG, message, args, kind, component, event, fields)

    def info(
        self,
        message: str,
        *args: object,
        kind: str,
        component: str | None,
        event: str | None = None,
        **fields: Any,
    ) -> None:
        """Log one event at INFO (see the class)."""
        if self.logger.isEnabledFor(_INFO):
            self._log(_INFO, message, args, kind, component, event, fields)

    def warning(
        self,
        message: str,
        *args: object,
        kind: str,
        component: str | None,
        event: str | None = None,
        **fields: Any,
    ) -> None:
        """Log one event at WARNING (see the class)."""
        if self.logger.isEnabledFor(_WARNING):
            self._log(_WARNING, message, args, kind, component, event, fields)

    def log(
        self,
        level: int,
        message: str,
        *args: object,
        kind: str,
        component: str | None,
        event: str | None = None,
        **fields: Any,
    ) -> None:
        """Log one event at ``level`` (see the class)."""
        if self.logger.isEnabledFor(level):
            self._log(level, message, args, kind, component, event, fields)

    def _log(
        self,
        level: int,
        message: str,
        args: tuple[object, ...],
        kind: str,
        component: str | None,
        event: str | None,
        fields: dict[str, Any],
    ) -> None:
        key = (kind, component, message if event is None else event)
        suppressed = self._admit(key)
        if suppressed < 0:
            return
        extra: dict[str, Any] = {
            "headrace_kind": kind,
            "headrace_component": component,
            "headrace_event": key[2],
        }
        for field, value in fields.items():
            extra[EXTRA_PREFIX + field] = value
        who = kind if component is None else f"{kind} {component!r}"
        text = "%s: " + message
        if suppressed:
            extra["headrace_suppressed"] = suppressed
            text += f" ({suppressed} similar records suppressed)"
        self.logger.log(level, text, who, *args, extra=extra)

    def _admit(self, key: tuple[str, str | None, str]) -> int:
        """``-1`` to suppress the record of ``key``, else the count suppressed before it."""
        try:
            now: float | None = asyncio.get_running_loop().time()
        except RuntimeError:
            now = None
        budgets = self._budgets
        budget = budgets.get(key)
        if budget is None:
            if len(budgets) >= _MAX_KEYS:
                budgets.clear()
            budget = budgets[key] = _Budget(0.0 if now is None else now)
        elif now is None:
            # No clock: a window is limit * 100 events of the key.
            if budget.count + budget.suppressed >= self._limit * 100:
                budget.count = 0
        elif now < budget.start or now - budget.start >= self._window:
            budget.start = now  # a new window (or another loop's time base)
            budget.count = 0
        if budget.count >= self._limit:
            budget.suppressed += 1
            return -1
        budget.count += 1
        suppressed = budget.suppressed
        budget.suppressed = 0
        return suppressed
