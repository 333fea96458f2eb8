"""Server hints: how long a ``Retry-After`` value (or a ``retry_after=`` extractor) asks to wait.

A hint is accepted as seconds (an int or a float, ``>= 0``; ``inf`` pauses until a
longer hint or ``close()``), as a numeric string (``"120"``, ``"1.5"``) or as an HTTP
date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, the other legal form of ``Retry-After``).
An HTTP date is absolute, so it is turned into a wait from the wall clock's now: the
one place the throttle reads the wall clock. Anything else is not a hint.
"""

from __future__ import annotations

import math
import numbers
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["retry_after_seconds"]


def _wall_now() -> datetime:
    """The wall clock's now, in UTC (a function, so tests can pin it)."""
    return datetime.now(UTC)


def retry_after_seconds(value: object) -> float | None:
    """Return the wait ``value`` asks for, in seconds from now, or None when it is not a hint.

    Args:
        value: seconds (``int``/``float``), a numeric string, or an HTTP date string.

    Returns:
        The seconds to wait (``>= 0``; a date in the past is 0.0), or None for a value
        that is not a usable hint (NaN, negative, another type, a string that is neither
        a number nor a date).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            seconds = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if math.isnan(seconds) or seconds < 0.0:
            return None
        return seconds
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0.0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no offset given
        when = when.replace(tzinfo=UTC)
    try:
        seconds = (when - _wall_now()).total_seconds()
    except (OverflowError, ValueError):
        return None
    return max(0.0, seconds)
