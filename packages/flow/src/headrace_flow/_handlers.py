"""Error handler forms: ``h(event)``, ``h(item, exc)``, or a context manager factory."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from headrace_core import ConfigurationError
from headrace_core.lowlevel import is_async_callable
from headrace_flow._errors import SourceError, TransformerError


def normalize_handler(handler: Any) -> Any:
    """Return ``(kind, handler)``: kind is "event", "pair" or "cm"."""
    if handler is None:
        return None
    if not callable(handler):
        raise ConfigurationError.argument_error("on_error", handler, "must be callable")
    if not is_async_callable(handler):
        try:
            inspect.signature(handler).bind()
        except (TypeError, ValueError):
            raise ConfigurationError.argument_error(
                "on_error",
                handler,
                "must be async def h(event), async def h(item, exc), or an async context "
                "manager factory yielding one",
            ) from None
        return ("cm", handler)
    return (handler_form(handler), handler)


def handler_form(handler: Any) -> str:
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return "event"
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return "pair" if len(positional) >= 2 else "event"


def adapt(form: str, handler: Any) -> Callable[[Any], Awaitable[None]]:
    if form == "event":
        return handler  # type: ignore[no-any-return]

    async def pair(event: Any) -> None:
        if isinstance(event, TransformerError):
            await handler(event.item, event.exception)
        elif isinstance(event, SourceError):
            await handler(None, event.exception)

    return pair
