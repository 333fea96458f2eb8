"""OpenTelemetry for any headrace component (extra ``headrace-core[otel]``).

``instrument(component)`` exports the component's ``snapshot()`` as observable metrics and
its events as span events on the current span. Metric names are
``headrace.<package>.<field>`` (``headrace.guards.rejected``); fields that only grow are
observable counters, other numbers observable gauges, a nested latency summary becomes one
gauge per quantile, and booleans and enums are reported as attributes of an ``info`` gauge.
Nothing is imported from OpenTelemetry until ``instrument`` is called, so the cost is zero
when it is not used.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from typing import Any, Protocol, final

from headrace_core import _errors, _metrics
from headrace_core._metrics import COUNTER_FIELDS as COUNTER_FIELDS

__all__ = ["COUNTER_FIELDS", "Instrumentable", "Instrumentation", "instrument"]


class Instrumentable(Protocol):
    """What ``instrument`` needs: a ``snapshot()``; ``add_listener`` is used when present."""

    def snapshot(self) -> Any:
        """Return a frozen dataclass of the component's state and counters."""
        ...


@final
class Instrumentation:
    """A live export of one component; ``close()`` stops it (the instruments stay registered)."""

    def __init__(self, component: Instrumentable, prefix: str, name: str | None) -> None:
        self.component = component
        self.prefix = prefix
        self.attributes: dict[str, str] = {"headrace.component": name} if name else {}
        self.instruments: list[Any] = []
        self._remove_listener: Callable[[], object] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the export was stopped."""
        return self._closed

    def close(self) -> None:
        """Stop observing the component and remove the span-event listener."""
        self._closed = True
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    def _observe(self, field: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(options: Any) -> Iterable[Any]:
            if self._closed:
                return []
            numbers = _metrics.numbers(self.component.snapshot())
            if field not in numbers:
                return []
            return [Observation(numbers[field], self.attributes)]

        return callback

    def _observe_info(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        if self._closed:
            return []
        labels = {f"headrace.{k}": v for k, v in _metrics.labels(self.component.snapshot()).items()}
        return [Observation(1, {**self.attributes, **labels})]


def instrument(
    component: Instrumentable,
    meter: Any = None,
    *,
    name: str | None = None,
    tracer_events: bool = True,
) -> Instrumentation:
    """Export ``component``'s snapshot as observable metrics and its events as span events.

    Args:
        component: any headrace component (anything with ``snapshot()``; its
            ``add_listener`` is used for span events when present).
        meter: an OpenTelemetry ``Meter``; default ``metrics.get_meter("headrace")``.
        name: the ``headrace.component`` attribute on every observation; default the
            component's ``name`` attribute, if it has one.
        tracer_events: add each event to the current span as a span event.

    Returns:
        The live :class:`Instrumentation`; ``close()`` stops it.

    Raises:
        ModuleNotFoundError: when ``opentelemetry-api`` is not installed (install
            ``headrace-core[otel]``).
        TypeError: when ``component`` has no ``snapshot()``.
    """
    if not callable(getattr(component, "snapshot", None)):
        raise TypeError(
            f"instrument() needs a component with snapshot(), got {_errors.safe_repr(component)}"
        )
    from opentelemetry import metrics

    if meter is None:
        meter = metrics.get_meter("headrace")
    if name is None:
        name = _metrics.component_name(component)
    prefix = _metrics.metric_prefix(component)
    live = Instrumentation(component, prefix, name)
    for field in _metrics.numbers(component.snapshot()):
        metric = f"{prefix}.{field}"
        if _metrics.is_counter(field):
            instrument_ = meter.create_observable_counter(metric, [live._observe(field)])
        else:
            instrument_ = meter.create_observable_gauge(metric, [live._observe(field)])
        live.instruments.append(instrument_)
    live.instruments.append(meter.create_observable_gauge(f"{prefix}.info", [live._observe_info]))
    add_listener = getattr(component, "add_listener", None)
    if tracer_events and callable(add_listener):
        from opentelemetry import trace

        def on_event(event: Any) -> None:
            span = trace.get_current_span()
            if not span.is_recording():
                return
            kind = getattr(event, "kind", None) or type(event).__name__
            attributes: dict[str, Any] = dict(live.attributes)
            if dataclasses.is_dataclass(event) and not isinstance(event, type):
                for key, value in _metrics.flatten(event):
                    if isinstance(value, bool | int | float | str):
                        attributes[f"headrace.{key}"] = value
                    elif isinstance(value, enum.Enum):
                        attributes[f"headrace.{key}"] = str(value.value)
                    elif isinstance(value, BaseException):
                        attributes[f"headrace.{key}"] = repr(value)
            span.add_event(f"{prefix}.{kind}", attributes)

        remover = add_listener(on_event)
        # A remover that is not callable cannot be called at close: keep none.
        live._remove_listener = remover if callable(remover) else None
    return live
