import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headrace_core import CircuitState
from headrace_core.otel import instrument
from headrace_core.stats import LatencyHistogram, LatencySnapshot, Listeners


@dataclass(frozen=True)
class DemoSnapshot:
    name: str
    state: CircuitState
    in_flight: int
    calls: int
    rejected: int
    disabled: bool
    latency: LatencySnapshot


@dataclass(frozen=True)
class DemoEvent:
    source: str
    kind: str
    at: float
    error: BaseException | None = None


class Demo:
    """A stand-in for any headrace component: snapshot() and add_listener()."""

    __module__ = "headrace_guards._demo"

    def __init__(self) -> None:
        self.name = "payments"
        self.calls = 0
        self.state = CircuitState.CLOSED
        self.latency = LatencyHistogram()
        self.listeners: Listeners[DemoEvent] = Listeners("headrace.test")

    def add_listener(self, cb: Callable[[DemoEvent], object]) -> Callable[[], None]:
        return self.listeners.add(cb)

    def snapshot(self) -> DemoSnapshot:
        return DemoSnapshot(
            name=self.name,
            state=self.state,
            in_flight=2,
            calls=self.calls,
            rejected=1,
            disabled=False,
            latency=self.latency.snapshot(),
        )


def collect(reader: InMemoryMetricReader) -> dict[str, tuple[str, float, dict[str, object]]]:
    data = reader.get_metrics_data()
    out: dict[str, tuple[str, float, dict[str, object]]] = {}
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                point: Any = next(iter(metric.data.data_points))
                out[metric.name] = (type(metric.data).__name__, point.value, dict(point.attributes))
    return out


def test_snapshot_becomes_observable_metrics() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    demo = Demo()
    live = instrument(demo, meter)
    demo.calls = 7
    demo.latency.record(0.25)
    metrics = collect(reader)
    assert metrics["headrace.guards.calls"][:2] == ("Sum", 7)
    assert metrics["headrace.guards.rejected"][0] == "Sum"
    assert metrics["headrace.guards.in_flight"][:2] == ("Gauge", 2)
    assert metrics["headrace.guards.latency.p99"][1] == pytest.approx(0.25, rel=0.05)
    assert metrics["headrace.guards.calls"][2] == {"headrace.component": "payments"}
    info = metrics["headrace.guards.info"][2]
    assert info["headrace.state"] == "closed"
    assert info["headrace.disabled"] is False
    demo.state = CircuitState.OPEN
    assert collect(reader)["headrace.guards.info"][2]["headrace.state"] == "open"
    live.close()
    assert live.closed
    assert "headrace.guards.calls" not in collect(reader)


def test_events_become_span_events_on_the_current_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    reader = InMemoryMetricReader()
    demo = Demo()
    live = instrument(demo, MeterProvider(metric_readers=[reader]).get_meter("t"))
    with tracer.start_as_current_span("request"):
        demo.listeners.emit(DemoEvent("payments", "state_change", 1.5, ValueError("boom")))
    demo.listeners.emit(DemoEvent("payments", "rejected", 2.0))  # no span: dropped quietly
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "headrace.guards.state_change"
    assert event.attributes is not None
    assert event.attributes["headrace.at"] == 1.5
    assert "boom" in str(event.attributes["headrace.error"])
    live.close()
    assert len(demo.listeners) == 0
    assert trace.get_current_span().is_recording() is False


def test_component_without_snapshot_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="snapshot"):
        instrument(object())  # type: ignore[arg-type]


def test_importing_core_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, headrace_core, headrace_core.stats, headrace_core.testing;"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
