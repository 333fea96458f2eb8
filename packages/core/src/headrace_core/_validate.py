"""Argument checks shared by every headrace package (messages in the house format)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import TypeAlias, TypeVar

from headrace_core._errors import ConfigurationError

#: A zero-argument callable returning seconds: a component's measuring clock (``clock=``).
Clock: TypeAlias = Callable[[], float]

T = TypeVar("T")

__all__ = [
    "Clock",
    "check_callable",
    "check_int",
    "check_name",
    "check_number",
    "check_optional_number",
    "is_async_callable",
]


def check_number(
    argument: str,
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = True,
    component: str | None = None,
) -> float:
    """Return ``value`` as a float, or raise ``ConfigurationError`` naming the argument.

    Args:
        argument: the argument's name.
        value: the value to check; ``bool`` is rejected, ``int`` and ``float`` accepted.
        gt: exclusive lower bound.
        ge: inclusive lower bound.
        le: inclusive upper bound.
        lt: exclusive upper bound.
        finite: reject ``inf`` and ``nan`` (``nan`` is always rejected).
        component: the named component, for the message.

    Returns:
        The value as a float.

    Raises:
        ConfigurationError: when the value is not a real number within the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError.argument_error(
            argument, value, "must be a number", component=component
        )
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ConfigurationError.argument_error(
            argument, value, "must be a finite number", component=component
        )
    failed: tuple[str, float] | None = None
    if gt is not None and not number > gt:
        failed = (">", gt)
    elif ge is not None and not number >= ge:
        failed = (">=", ge)
    elif le is not None and not number <= le:
        failed = ("<=", le)
    elif lt is not None and not number < lt:
        failed = ("<", lt)
    if failed is not None:
        raise ConfigurationError.argument_error(
            argument, value, f"must be {failed[0]} {failed[1]:g}", component=component
        )
    return number


def check_optional_number(
    argument: str,
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    finite: bool = True,
    component: str | None = None,
) -> float | None:
    """Like :func:`check_number`, but ``None`` passes through unchanged."""
    if value is None:
        return None
    return check_number(argument, value, gt=gt, ge=ge, le=le, finite=finite, component=component)


def check_int(
    argument: str,
    value: object,
    *,
    ge: int | None = None,
    le: int | None = None,
    component: str | None = None,
) -> int:
    """Return ``value`` if it is an int within the bounds, else raise ``ConfigurationError``.

    Raises:
        ConfigurationError: when the value is not an ``int`` (``bool`` excluded) in bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        reason = "must be an int" + (f" >= {ge}" if ge is not None else "")
        raise ConfigurationError.argument_error(argument, value, reason, component=component)
    if ge is not None and value < ge:
        raise ConfigurationError.argument_error(
            argument, value, f"must be an int >= {ge}", component=component
        )
    if le is not None and value > le:
        raise ConfigurationError.argument_error(
            argument, value, f"must be an int <= {le}", component=component
        )
    return value


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine, judged without calling it.

    True for an ``async def`` function or method, a ``functools.partial`` of one, and an
    object whose class defines an ``async def __call__``; False for classes, sync
    callables and non-callables. Decorator forms across headrace use it to raise
    ``TypeError`` at decoration.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if isinstance(fn, type) or inspect.isfunction(fn) or not callable(fn):
        return False
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's __call__
    return call is not None and inspect.iscoroutinefunction(call)


def check_callable(argument: str, value: T) -> T:
    """Return ``value`` when it is callable or None, else raise ``ConfigurationError``.

    Args:
        argument: the argument's name, for the message.
        value: the option to check (a callback, a predicate, a clock).

    Raises:
        ConfigurationError: ``argument=value: must be a callable or None``.
    """
    if value is not None and not callable(value):
        raise ConfigurationError.argument_error(argument, value, "must be a callable or None")
    return value


def check_name(
    name: object, argument: str = "name", *, error: type[ConfigurationError] = ConfigurationError
) -> str | None:
    """Return ``name`` when it is None or a non-empty ``str``, else raise ``ConfigurationError``.

    Args:
        name: the component's name (a key, a label in events and errors).
        argument: the argument's name, for the message.
        error: the error class (``ConfigurationTypeError`` where a compatible API's
            original raises ``TypeError``).

    Raises:
        ConfigurationError: ``name=value: must be a non-empty str or None``.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise error.argument_error(argument, name, "must be a non-empty str or None")
    return name
