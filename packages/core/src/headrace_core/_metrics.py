"""How a snapshot becomes metrics, shared by every export (OpenTelemetry, Prometheus).

A metric is named ``headrace.<package>.<field>`` (``headrace.guards.rejected``), a nested
field joined with dots (``headrace.guards.latency.p99``); a field whose last part only grows
is a counter (:data:`COUNTER_FIELDS`), any other number a gauge; booleans, enums and
strings are the labels of one ``headrace.<package>.info`` gauge. Prometheus spells the same
names with underscores (:func:`prometheus_name`), as OpenTelemetry's Prometheus exporters do.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "COUNTER_FIELDS",
    "component_name",
    "flatten",
    "is_counter",
    "labels",
    "metric_prefix",
    "numbers",
    "prometheus_label",
    "prometheus_name",
]

#: Snapshot fields that only grow: exported as counters.
COUNTER_FIELDS = frozenset(
    {
        "acquired",
        "accepted",
        "attempts",
        "calls",
        "completed",
        "discarded",
        "dispatched",
        "exhausted",
        "failed",
        "failures",
        "fallbacks",
        "filtered",
        "hedge_wins",
        "hedges",
        "ignored",
        "loads",
        "rejected",
        "retries",
        "slow",
        "successes",
        "timeouts",
        "total_batches",
        "total_calls",
        "total_items",
        "batches",
        "items",
        "hits",
        "misses",
        "succeeded",
    }
)

_NOT_IN_A_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_IN_A_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def package_of(component: object) -> str:
    """The package part of a component's metric names: ``guards`` for ``headrace_guards``."""
    module = type(component).__module__.split(".")[0]
    return module.removeprefix("headrace_") if module.startswith("headrace_") else module


def metric_prefix(component: object) -> str:
    """The prefix of every metric name of ``component``: ``headrace.<package>``."""
    return f"headrace.{package_of(component)}"


def component_name(component: object) -> str | None:
    """The component's ``name`` attribute when it is a ``str``, else None."""
    found = getattr(component, "name", None)
    return found if isinstance(found, str) else None


def is_counter(field: str) -> bool:
    """Whether the (dotted) snapshot field only grows: its last part is a counter field."""
    return field.rsplit(".", 1)[-1] in COUNTER_FIELDS


def flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Walk a dataclass (or mapping) into ``(dotted field, leaf value)`` pairs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from flatten(getattr(value, field.name), f"{prefix}{field.name}.")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}{key}.")
        return
    yield prefix.rstrip("."), value


def numbers(snapshot: Any) -> dict[str, float]:
    """The snapshot's numeric fields (not booleans, not None), by dotted field."""
    out: dict[str, float] = {}
    for name, value in flatten(snapshot):
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
    return out


def labels(snapshot: Any) -> dict[str, str | bool]:
    """The snapshot's booleans, enums (their value) and strings but ``name``: the info labels."""
    out: dict[str, str | bool] = {}
    for name, value in flatten(snapshot):
        if isinstance(value, bool):
            out[name] = value
        elif isinstance(value, enum.Enum):
            out[name] = str(value.value)
        elif isinstance(value, str) and name != "name":
            out[name] = value
    return out


def prometheus_name(name: str) -> str:
    """A dotted metric name as Prometheus spells it: ``headrace_guards_latency_p99``."""
    out = _NOT_IN_A_NAME.sub("_", name)
    return f"_{out}" if out[:1].isdigit() else out


def prometheus_label(name: str) -> str:
    """A dotted attribute name as a Prometheus label name: ``headrace_component``."""
    out = _NOT_IN_A_LABEL.sub("_", name)
    return f"_{out}" if out[:1].isdigit() else out
