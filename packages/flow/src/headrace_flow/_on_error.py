"""Error handler forms: ``h(event)``, ``h(item, exc)``, or a context manager factory."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

from headrace_core import ConfigurationError
from headrace_core.lowlevel import is_async_callable
from headrace_flow._errors import ErrorEvent, SourceError, TransformerError
from headrace_flow._state import Handler

#: The user's handler, of one of the forms (the boundary where user code enters).
UserHandler: TypeAlias = Callable[..., Any]


class Form(enum.Enum):
    """How a handler is called."""

    EVENT = "event"
    """``async def h(event)``."""

    PAIR = "pair"
    """``async def h(item, exc)`` (flowrhythm's README form; not called for drops)."""

    CM = "cm"
    """A no-argument factory of an async context manager giving one of the above."""


def normalize_handler(
    handler: object, argument: str = "on_error"
) -> tuple[Form, UserHandler] | None:
    """Return the handler's form and the handler, or ``None`` for no handler.

    ``argument``: the name the caller gave the handler, for the error.

    Raises:
        ConfigurationError: for anything that is none of the forms.
    """
    if handler is None:
        return None
    if not callable(handler):
        raise ConfigurationError.argument_error(argument, handler, "must be callable")
    if not is_async_callable(handler):
        try:
            inspect.signature(handler).bind()
        except (TypeError, ValueError):
            raise ConfigurationError.argument_error(
                argument,
                handler,
                "must be async def h(event), async def h(item, exc), or an async context "
                "manager factory yielding one",
            ) from None
        return (Form.CM, handler)
    return (handler_form(handler), handler)


def handler_form(handler: UserHandler) -> Form:
    """Tell the two async forms apart by the number of positional parameters."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return Form.EVENT
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return Form.PAIR if len(positional) >= 2 else Form.EVENT


def adapt(form: Form, handler: UserHandler) -> Handler:
    """Return ``handler`` as a function of the event."""
    if form is Form.EVENT:
        return handler

    async def pair(event: ErrorEvent) -> None:
        if isinstance(event, TransformerError):
            await handler(event.item, event.exception)
        elif isinstance(event, SourceError):
            await handler(None, event.exception)

    return pair
