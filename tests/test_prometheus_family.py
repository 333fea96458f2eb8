"""Real components of the family exported to Prometheus under the OpenTelemetry export's names."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from headrace_coalesce import batch, collect
from headrace_core import otel, prometheus
from headrace_core.testing import VirtualClock
from headrace_guards import CircuitBreaker
from headrace_throttle import Throttle


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a snapshot, by dotted field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from leaves(getattr(value, field.name), f"{prefix}{field.name}.")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from leaves(item, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


def otel_kinds(reader: InMemoryMetricReader) -> dict[str, str]:
    data = reader.get_metrics_data()
    assert data is not None
    kinds = {"Sum": "counter", "Gauge": "gauge"}
    return {
        metric.name: kinds[type(metric.data).__name__]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


async def test_breaker_throttle_and_batch_function_under_the_otel_names() -> None:
    with VirtualClock():
        breaker = CircuitBreaker("payments")
        throttle = Throttle(4, name="api")

        @batch
        async def double(item: int) -> list[int]:
            return [2 * i for i in await collect(item)]

        async def fail() -> None:
            raise ConnectionError("down")

        async def work(slot: object) -> int:
            return await double(3)

        assert await breaker.call(double, 1) == 2
        with pytest.raises(ConnectionError):
            await breaker.call(fail)
        assert await asyncio.gather(*(throttle.execute(work) for _ in range(5))) == [6] * 5
        components: list[Any] = [breaker, throttle, double]

        reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[reader]).get_meter("test")
        opentelemetry_exports = [
            otel.instrument(c, meter, name=f"c{i}", tracer_events=False)
            for i, c in enumerate(components)
        ]
        registry = CollectorRegistry()
        exports = [prometheus.instrument(c, registry) for c in components]
        assert [e.labels for e in exports] == [
            {"headrace_kind": "CircuitBreaker", "headrace_component": "payments"},
            {"headrace_kind": "Throttle", "headrace_component": "api"},
            {"headrace_kind": "BatchFunction", "headrace_component": ""},
        ]

        families = {
            family.name: family
            for family in text_string_to_metric_families(generate_latest(registry).decode())
        }
        expected = {name.replace(".", "_"): kind for name, kind in otel_kinds(reader).items()}
        assert {name: family.type for name, family in families.items()} == expected
        assert {"headrace_guards_rejected", "headrace_throttle_completed"} <= families.keys()
        assert families["headrace_coalesce_calls"].type == "counter"
        assert families["headrace_throttle_in_flight"].type == "gauge"

        # Every number of every snapshot is a sample with the snapshot's value.
        for component, export in zip(components, exports, strict=True):
            snapshot = component.snapshot()
            checked = 0
            for field, value in leaves(snapshot):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                family = families[f"{export.prefix}.{field}".replace(".", "_")]
                (sample,) = [s for s in family.samples if s.labels == export.labels]
                suffix = "_total" if family.type == "counter" else ""
                assert sample.name == family.name + suffix
                assert sample.value == pytest.approx(value), field
                checked += 1
            assert checked > 3, type(component).__name__
        assert families["headrace_guards_failures"].samples[0].value == 1
        assert families["headrace_throttle_completed"].samples[0].value == 5
        assert families["headrace_coalesce_calls"].samples[0].value == 6
        (info,) = families["headrace_guards_info"].samples
        assert info.labels["headrace_state"] == "closed"

        for export in exports:
            export.close()
        for opentelemetry_export in opentelemetry_exports:
            opentelemetry_export.close()
        assert generate_latest(registry) == b""
        await throttle.aclose()
