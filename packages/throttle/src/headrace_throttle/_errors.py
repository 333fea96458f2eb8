"""The throttle's own errors (core's shared errors are re-exported as the same objects)."""

from __future__ import annotations

from typing import final

from headrace_core import CapacityExceeded, Closed, Rejected

__all__ = ["ServerBusy", "ThrottleClosed", "TokenBudgetExceeded"]


@final
class ThrottleClosed(Closed):
    """The throttle was closed: new calls, and calls still queued at ``close()``, are refused."""

    def __init__(self, message: str | None = None, *, name: str | None = None) -> None:
        self.name = name
        if message is None:
            who = f"throttle {name!r}" if name else "throttle"
            message = f"{who} is closed and accepts no new calls"
        super().__init__(message)


@final
class TokenBudgetExceeded(CapacityExceeded):
    """A call asked for more tokens than a budget can ever grant in one window.

    It could never be admitted, so it fails at once instead of waiting.

    Attributes:
        requested: the tokens the call asked for.
        capacity: the most tokens the budget allows per window.
        name: the budget's name, if it has one.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        requested: int,
        capacity: int,
        name: str | None = None,
    ) -> None:
        if message is None:
            who = f" {name!r}" if name else ""
            message = (
                f"a call needs {requested} tokens but the token budget{who} allows "
                f"at most {capacity} per window"
            )
        super().__init__(message, requested=requested, capacity=capacity, name=name)


class ServerBusy(Rejected):
    """Raise it from a throttled call when the server says "too busy" (HTTP 429 or 503).

    The throttle pauses new dispatch for ``retry_after`` seconds (the longest pause
    wins; calls already running are untouched) and lowers its concurrency once.
    Subclassing is supported, e.g. to carry the HTTP response.

    Args:
        message: the error message; a default names the pause.
        retry_after: seconds the server asked to wait (``Retry-After``), or ``None``.
        name: the service's name, for messages.
    """

    def _default_message(self) -> str:
        if self.retry_after is None:
            return "server busy"
        return f"server busy; retry after {self.retry_after:g}s"
