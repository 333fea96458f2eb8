import logging
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from headrace_core import CircuitState, ConfigurationError
from headrace_core.prometheus import Instrumentation, instrument
from headrace_core.stats import LatencyHistogram, LatencySnapshot


@dataclass(frozen=True)
class DemoSnapshot:
    name: str
    state: CircuitState
    in_flight: int
    calls: int
    rejected: int
    disabled: bool
    retry_after: float | None
    latency: LatencySnapshot
    sizes: Mapping[str, int] = field(default_factory=dict)


class Demo:
    """A stand-in for any headrace component: a snapshot() returning a frozen dataclass."""

    __module__ = "headrace_demo._demo"

    def __init__(self, name: str | None = "payments") -> None:
        self.name = name
        self.calls = 0
        self.state = CircuitState.CLOSED
        self.latency = LatencyHistogram()
        self.error: BaseException | None = None

    def snapshot(self) -> DemoSnapshot:
        if self.error is not None:
            raise self.error
        return DemoSnapshot(
            name=self.name or "",
            state=self.state,
            in_flight=2,
            calls=self.calls,
            rejected=1,
            disabled=False,
            retry_after=None,
            latency=self.latency.snapshot(),
            sizes={"a-b": 3},
        )


class Other(Demo):
    """Another kind of component of the same package."""

    __module__ = "headrace_demo._other"


Samples = dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]


def scrape(registry: CollectorRegistry) -> Samples:
    """The families of one scrape, parsed as Prometheus parses the text format."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} is split in the scrape"
        out[family.name] = (
            family.type,
            [(s.name, dict(s.labels), s.value) for s in family.samples],
        )
    return out


def value(samples: Samples, family: str, **labels: str) -> float:
    (found,) = [v for _, got, v in samples[family][1] if labels.items() <= got.items()]
    return found


def test_snapshot_is_read_at_scrape_time_as_counters_and_gauges() -> None:
    registry = CollectorRegistry()
    demo = Demo()
    live = instrument(demo, registry)
    assert isinstance(live, Instrumentation)
    assert live.labels == {"headrace_kind": "Demo", "headrace_component": "payments"}
    demo.calls = 7
    demo.latency.record(0.25)
    samples = scrape(registry)
    assert samples["headrace_demo_calls"][0] == "counter"
    assert samples["headrace_demo_calls"][1] == [
        (
            "headrace_demo_calls_total",
            {"headrace_kind": "Demo", "headrace_component": "payments"},
            7,
        )
    ]
    assert samples["headrace_demo_rejected"][0] == "counter"
    assert samples["headrace_demo_in_flight"][0] == "gauge"
    assert value(samples, "headrace_demo_in_flight") == 2
    assert value(samples, "headrace_demo_latency_p99") == pytest.approx(0.25, rel=0.05)
    assert value(samples, "headrace_demo_sizes_a_b") == 3
    assert "headrace_demo_retry_after" not in samples  # None is no number
    ((_, info, one),) = samples["headrace_demo_info"][1]
    assert one == 1
    assert info == {
        "headrace_kind": "Demo",
        "headrace_component": "payments",
        "headrace_state": "closed",
        "headrace_disabled": "false",
    }
    demo.calls = 9
    demo.state = CircuitState.OPEN
    samples = scrape(registry)
    assert value(samples, "headrace_demo_calls") == 9
    assert samples["headrace_demo_info"][1][0][1]["headrace_state"] == "open"
    live.close()


def test_names_and_kinds_are_those_of_the_otel_export() -> None:
    pytest.importorskip("opentelemetry")
    from headrace_core import otel

    class Meter:
        def __init__(self) -> None:
            self.kinds: dict[str, str] = {}

        def create_observable_counter(self, name: str, callbacks: Any) -> None:
            self.kinds[name] = "counter"

        def create_observable_gauge(self, name: str, callbacks: Any) -> None:
            self.kinds[name] = "gauge"

    meter = Meter()
    demo = Demo()
    otel.instrument(demo, meter, tracer_events=False)
    registry = CollectorRegistry()
    live = instrument(demo, registry)
    expected = {name.replace(".", "_").replace("-", "_"): k for name, k in meter.kinds.items()}
    assert {name: kind for name, (kind, _) in scrape(registry).items()} == expected
    live.close()


def test_close_removes_the_samples_and_unregisters_with_the_last_export() -> None:
    registry = CollectorRegistry()
    first = instrument(Demo("a"), registry)
    second = instrument(Demo("b"), registry)
    first.close()
    assert first.closed
    assert not second.closed
    samples = scrape(registry)
    assert [labels["headrace_component"] for _, labels, _ in samples["headrace_demo_calls"][1]] == [
        "b"
    ]
    second.close()
    second.close()  # idempotent
    assert scrape(registry) == {}
    assert list(registry.collect()) == []
    # The name is free again, and a new collector is registered.
    again = instrument(Demo("a"), registry)
    assert value(scrape(registry), "headrace_demo_in_flight", headrace_component="a") == 2
    again.close()
    assert scrape(registry) == {}


def test_default_registry_is_prometheus_clients() -> None:
    live = instrument(Demo("default-registry"))
    assert live.registry is REGISTRY
    try:
        samples = scrape(REGISTRY)
        assert value(samples, "headrace_demo_calls", headrace_component="default-registry") == 0
    finally:
        live.close()
    assert "headrace_demo_calls" not in scrape(REGISTRY)


def test_a_raising_snapshot_is_left_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    broken = Demo("broken")
    healthy = Demo("healthy")
    with_broken = instrument(broken, registry)
    with_healthy = instrument(healthy, registry)
    broken.error = RuntimeError("boom")
    with caplog.at_level(logging.ERROR, logger="headrace.core"):
        for _ in range(3):
            samples = scrape(registry)
            components = {
                labels["headrace_component"] for _, labels, _ in samples["headrace_demo_calls"][1]
            }
            assert components == {"healthy"}
    (record,) = caplog.records
    assert record.name == "headrace.core"
    assert "'broken'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    caplog.clear()
    broken.error = None
    assert value(scrape(registry), "headrace_demo_calls", headrace_component="broken") == 0
    broken.error = ValueError("again")
    with caplog.at_level(logging.ERROR, logger="headrace.core"):
        scrape(registry)
        scrape(registry)
    assert len(caplog.records) == 1  # a new failure after a recovery is logged again
    with_broken.close()
    with_healthy.close()


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate(error: type[BaseException]) -> None:
    registry = CollectorRegistry()
    demo = Demo()
    live = instrument(demo, registry)
    demo.error = error()
    with pytest.raises(error):
        generate_latest(registry)
    live.close()


def test_a_second_component_of_the_same_kind_and_name_is_refused() -> None:
    registry = CollectorRegistry()
    live = instrument(Demo("payments"), registry)
    with pytest.raises(ConfigurationError, match="Demo named 'payments' is already exported"):
        instrument(Demo("payments"), registry)
    with pytest.raises(ConfigurationError, match="name='payments'"):
        instrument(Demo("other"), registry, name="payments")
    # Told apart by a label: another name, another kind, another registry.
    renamed = instrument(Demo("payments"), registry, name="payments-2")
    other_kind = instrument(Other("payments"), registry)
    elsewhere = CollectorRegistry()
    other_registry = instrument(Demo("payments"), elsewhere)
    calls = scrape(registry)["headrace_demo_calls"][1]
    assert sorted(
        (labels["headrace_kind"], labels["headrace_component"]) for _, labels, _ in calls
    ) == [
        ("Demo", "payments"),
        ("Demo", "payments-2"),
        ("Other", "payments"),
    ]
    live.close()
    replacement = instrument(Demo("payments"), registry)  # free again once closed
    for export in (renamed, other_kind, other_registry, replacement):
        export.close()


def test_unnamed_components_are_refused_after_the_first() -> None:
    registry = CollectorRegistry()
    live = instrument(Demo(None), registry)
    assert live.labels["headrace_component"] == ""
    with pytest.raises(ConfigurationError, match="Demo without a name"):
        instrument(Demo(None), registry)
    named = instrument(Demo(None), registry, name="second")
    live.close()
    named.close()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="snapshot"):
        instrument(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name=''"):
        instrument(Demo(), CollectorRegistry(), name="")


def test_importing_core_imports_neither_prometheus_client_nor_opentelemetry() -> None:
    code = (
        "import sys, headrace_core, headrace_core.stats, headrace_core.testing,"
        " headrace_core.otel, headrace_core.lowlevel, headrace_core.backoff;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'prometheus_client', 'opentelemetry'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_module_says_which_extra_to_install_when_prometheus_client_is_missing() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import headrace_core.prometheus\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc, exc.name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'headrace-core[prometheus]'" in out
    assert out.strip().endswith("prometheus_client")
