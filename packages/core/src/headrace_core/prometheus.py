"""Prometheus for any headrace component (extra ``headrace-core[prometheus]``).

``instrument(component)`` exposes the component's ``snapshot()`` in a Prometheus registry
under the names of the OpenTelemetry export (:mod:`headrace_core.otel`), spelled as
Prometheus spells them: ``headrace.guards.rejected`` is the counter
``headrace_guards_rejected`` (sample ``headrace_guards_rejected_total``), a nested latency
summary gives one gauge per quantile (``headrace_guards_latency_p99``), and booleans and
enums are the labels of an ``headrace_<package>_info`` gauge. Every sample carries the
labels ``headrace_kind`` (the component's class, ``CircuitBreaker``) and
``headrace_component`` (its name). The snapshot is read when the registry is scraped: there
is no background task, and nothing is read between scrapes.
"""

from __future__ import annotations

try:
    import prometheus_client  # noqa: F401  # pyright: ignore[reportUnusedImport] - names the extra when missing
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ModuleNotFoundError(
        "headrace_core.prometheus needs prometheus-client: pip install 'headrace-core[prometheus]'",
        name=exc.name,
    ) from exc

import asyncio
import dataclasses
import logging
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from headrace_core import _errors, _metrics, _validate

if TYPE_CHECKING:
    from headrace_core.otel import Instrumentable

__all__ = ["Instrumentation", "instrument"]

_LOGGER = logging.getLogger("headrace.core")

# Guards every registry's collector and its exports: scrapes run on the exporter's thread.
_LOCK = threading.Lock()
# One collector per registry, holding every export to it: the components of one package
# share metric names, and a name must be one family in a scrape.
_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, _Collector] = weakref.WeakKeyDictionary()


@final
class Instrumentation:
    """A live export of one component to one registry; ``close()`` removes it.

    Attributes:
        component: the exported component.
        registry: the registry it is exported to.
        prefix: the dotted prefix of its metric names, ``headrace.<package>``.
        labels: the labels on each of its samples, ``headrace_kind`` and
            ``headrace_component``.
    """

    def __init__(
        self,
        component: Instrumentable,
        registry: CollectorRegistry,
        prefix: str,
        labels: dict[str, str],
    ) -> None:
        self.component = component
        self.registry = registry
        self.prefix = prefix
        self.labels = labels
        self._key = (prefix, labels["headrace_kind"], labels["headrace_component"])
        self._closed = False
        self._failing = False

    @property
    def closed(self) -> bool:
        """Whether the export was removed."""
        return self._closed

    def close(self) -> None:
        """Remove the component's samples from the registry (idempotent).

        The registry's collector is unregistered with its last export, and the name can be
        exported again.
        """
        with _LOCK:
            if self._closed:
                return
            self._closed = True
            collector = _COLLECTORS.get(self.registry)
            if collector is None or collector.exports.get(self._key) is not self:
                return
            del collector.exports[self._key]
            if not collector.exports:
                del _COLLECTORS[self.registry]
                self.registry.unregister(collector)

    def _collect_into(self, families: dict[str, Metric]) -> None:
        if self._closed:
            return
        try:
            snapshot = self.component.snapshot()
            if not dataclasses.is_dataclass(snapshot) or isinstance(snapshot, type):
                raise TypeError(
                    f"snapshot() returned {_errors.safe_repr(snapshot)}, not a dataclass"
                )
            numbers = _metrics.numbers(snapshot)
            info = _metrics.labels(snapshot)
        except (Exception, asyncio.CancelledError):
            # User code: one broken component leaves only its own samples out of the scrape,
            # and is logged once until its snapshot() works again. A CancelledError it
            # raises is its failure: a scrape is no task, so nobody is cancelling it.
            if not self._failing:
                self._failing = True
                _LOGGER.exception(
                    "headrace_core.prometheus: snapshot() of %s %r raised; its samples are "
                    "left out of the scrape until it works again",
                    self.labels["headrace_kind"],
                    self.labels["headrace_component"],
                )
            return
        self._failing = False
        for field, value in numbers.items():
            dotted = f"{self.prefix}.{field}"
            if _metrics.is_counter(field):
                family = _family(families, dotted, counter=True)
                family.add_sample(f"{family.name}_total", self.labels, value)
            else:
                family = _family(families, dotted, counter=False)
                family.add_sample(family.name, self.labels, value)
        labels = {
            _metrics.prometheus_label(f"headrace.{key}"): _label_value(value)
            for key, value in info.items()
        }
        family = _family(families, f"{self.prefix}.info", counter=False)
        family.add_sample(family.name, {**labels, **self.labels}, 1.0)


def _label_value(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _family(families: dict[str, Metric], dotted: str, *, counter: bool) -> Metric:
    name = _metrics.prometheus_name(dotted)
    family = families.get(name)
    if family is None:
        if counter:
            family = CounterMetricFamily(name, f"{dotted}: a count that only grows (snapshot())")
        elif dotted.endswith(".info"):
            family = GaugeMetricFamily(name, f"{dotted}: states and flags as labels (always 1)")
        else:
            family = GaugeMetricFamily(name, f"{dotted} (snapshot())")
        families[name] = family
    return family


@final
class _Collector(Collector):
    """Every export to one registry, read at scrape time."""

    def __init__(self) -> None:
        self.exports: dict[tuple[str, str, str], Instrumentation] = {}

    def describe(self) -> Iterable[Metric]:
        # The names follow the exports and their snapshots: none is reserved at register().
        return []

    def collect(self) -> Iterable[Metric]:
        with _LOCK:
            exports = list(self.exports.values())
        families: dict[str, Metric] = {}
        for export in exports:
            export._collect_into(families)
        return list(families.values())


def instrument(
    component: Instrumentable,
    registry: CollectorRegistry | None = None,
    *,
    name: str | None = None,
) -> Instrumentation:
    """Expose ``component``'s snapshot in a Prometheus registry, read at scrape time.

    Metric names are those of :func:`headrace_core.otel.instrument` with dots as
    underscores (``headrace_guards_rejected``); counters and gauges are told apart as
    there. Each sample is labelled ``headrace_kind`` (the component's class name) and
    ``headrace_component`` (its name, ``""`` when it has none).

    Two exports to one registry may not share both labels (their samples would be the same
    series): the second ``instrument()`` raises ``ConfigurationError`` naming the
    duplicate; give each its own ``name=``, or ``close()`` the first. A component whose
    ``snapshot()`` raises at scrape time is left out of that scrape (the others are not),
    and logged once on the logger ``headrace.core`` until its ``snapshot()`` works again.

    Args:
        component: any headrace component (anything with ``snapshot()`` returning a
            dataclass).
        registry: the registry to expose it in; default ``prometheus_client.REGISTRY``.
        name: the ``headrace_component`` label; default the component's ``name``
            attribute, if it has one.

    Returns:
        The live :class:`Instrumentation`; ``close()`` removes it.

    Raises:
        ModuleNotFoundError: when ``prometheus-client`` is not installed (install
            ``headrace-core[prometheus]``); raised when this module is imported.
        TypeError: when ``component`` has no ``snapshot()``.
        ConfigurationError: when ``name`` is not a non-empty ``str`` or None, or a
            component of the same class and name is already exported to ``registry``.
    """
    if not callable(getattr(component, "snapshot", None)):
        raise TypeError(
            f"instrument() needs a component with snapshot(), got {_errors.safe_repr(component)}"
        )
    _validate.check_name(name)
    if registry is None:
        registry = REGISTRY
    if name is None:
        name = _metrics.component_name(component)
    kind = type(component).__name__
    labels = {"headrace_kind": kind, "headrace_component": name or ""}
    live = Instrumentation(component, registry, _metrics.metric_prefix(component), labels)
    with _LOCK:
        collector = _COLLECTORS.get(registry)
        if collector is not None and live._key in collector.exports:
            which = f"a {kind} named {name!r}" if name else f"a {kind} without a name"
            raise _errors.ConfigurationError.argument_error(
                "name",
                name,
                f"{which} is already exported to this registry; give each its own name= "
                "or close() the other export first",
            )
        if collector is None:
            collector = _Collector()
            registry.register(collector)
            _COLLECTORS[registry] = collector
        collector.exports[live._key] = live
    return live
