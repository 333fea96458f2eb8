"""Routing a bulk result back to its callers: the shape check, the lookups, the two errors."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, final

from headrace_core import HeadraceError

__all__ = [
    "BatchRoutingError",
    "MissingResult",
    "as_error",
    "describe",
    "is_sequence",
    "lookup",
    "unhashable",
]


def describe(obj: object) -> str:
    """``repr(obj)``, or a stand-in naming its type when the object's ``__repr__`` fails.

    A message that shows a user's object must never replace the error it reports.
    """
    try:
        return repr(obj)
    except (Exception, asyncio.CancelledError):
        return f"<{type(obj).__qualname__} object (repr failed)>"


@final
class BatchRoutingError(HeadraceError, TypeError):
    """A bulk call returned something that cannot be routed back to its callers.

    Raised in every caller of the batch when the result is neither a ``Sequence`` nor a
    ``Mapping``, or when a ``Sequence`` does not have exactly one value per item sent.
    """


@final
class MissingResult(HeadraceError, KeyError):
    """A ``Mapping`` returned by a bulk call lacks the key of one caller's item.

    Raised in that caller only; the other callers get their values.

    Attributes:
        key: the key that was looked up (``key(item)``, or the item itself).
    """

    def __init__(self, key: Hashable, message: str | None = None) -> None:
        self.key = key
        self._message = message
        super().__init__(key)

    def __str__(self) -> str:
        # built when shown, not when routed: the key's __repr__ is the user's code
        if self._message is not None:
            return self._message
        return f"no result for key {describe(self.key)}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self._message))


_TEXT = (str, bytes, bytearray, memoryview)


def is_sequence(result: object, expected: int, name: str) -> bool:
    """Return True for a routable ``Sequence``, False for a ``Mapping``.

    Raises:
        BatchRoutingError: when ``result`` is neither (text is not a result sequence), or
            when a ``Sequence`` does not hold exactly ``expected`` values.
    """
    kind = type(result)
    if kind is list or kind is tuple:
        pass
    elif isinstance(result, Mapping):
        return False
    elif not isinstance(result, Sequence) or isinstance(result, _TEXT):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: no warning about it after this error
            raise BatchRoutingError(f"{name} returned a coroutine: an await is missing")
        raise BatchRoutingError(
            f"{name} returned {kind.__name__}; return a Sequence with one value per item "
            "(in the order of collect()) or a Mapping keyed by item"
        )
    size = len(result)  # type: ignore[arg-type]
    if size != expected:
        raise BatchRoutingError(
            f"{name} returned {size} result(s) for {expected} item(s); "
            "a Sequence result needs exactly one value per item"
        )
    return True


def as_error(value: BaseException) -> BaseException:
    """Return an exception that a future can carry (``StopIteration`` cannot)."""
    if isinstance(value, StopIteration):
        error = RuntimeError(f"bulk result was a StopIteration: {describe(value)}")
        error.__cause__ = value
        return error
    return value


def lookup(result: Mapping[Any, Any], key: Any) -> Any:
    """Return ``result[key]`` or the error that the caller of ``key`` must raise.

    A lookup that raises (a missing key, an unhashable key, a ``__getitem__``, ``__hash__``
    or ``__eq__`` of the user's that fails) is that caller's error only.
    """
    try:
        return result[key]
    except KeyError:
        return MissingResult(key)
    except TypeError as exc:
        try:
            hash(key)
        except TypeError:
            error = BatchRoutingError(
                f"an item key of type {type(key).__qualname__} is unhashable, so a Mapping "
                "result cannot be looked up; pass key= to @batch or return a Sequence"
            )
            error.__cause__ = exc
            return error
        except Exception:  # the key's own __hash__ failed: the lookup's error stands
            return exc
        return exc
    except Exception as exc:
        return exc


def unhashable(message: str, cause: BaseException) -> TypeError:
    """A ``TypeError`` for a key that cannot be hashed, chaining the original error."""
    error = TypeError(message)
    error.__cause__ = cause
    return error
