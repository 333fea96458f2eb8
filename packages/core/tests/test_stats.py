import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace_core import ConfigurationError
from headrace_core.stats import Counter, EwmaRate, Gauge, LatencyHistogram, LatencySnapshot
from headrace_core.testing import VirtualClock


def test_counter_and_gauge() -> None:
    c = Counter()
    c.inc()
    c.inc(4)
    assert c.value == 5
    assert int(c) == 5
    g = Gauge()
    g.inc(3)
    g.dec(2)
    g.set(10)
    g.set(1)
    assert g.value == 1
    assert g.peak == 10


def test_histogram_empty_snapshot() -> None:
    snap = LatencyHistogram().snapshot()
    assert snap == LatencySnapshot(count=0, mean=0.0, min=0.0, p50=0.0, p90=0.0, p99=0.0, max=0.0)


def test_histogram_quantiles_are_close() -> None:
    h = LatencyHistogram()
    for i in range(1, 1001):
        h.record(i / 1000)
    snap = h.snapshot()
    assert snap.count == 1000
    assert snap.mean == pytest.approx(0.5005)
    assert snap.min == 0.001
    assert snap.max == 1.0
    assert snap.p50 == pytest.approx(0.5, rel=0.04)
    assert snap.p90 == pytest.approx(0.9, rel=0.04)
    assert snap.p99 == pytest.approx(0.99, rel=0.04)
    assert h.quantile(0) == 0.001
    assert h.quantile(1) == 1.0
    with pytest.raises(ValueError, match="q="):
        h.quantile(1.5)


@given(st.lists(st.floats(1e-7, 1e5), min_size=1, max_size=300), st.floats(0.01, 0.99))
def test_property_quantile_within_relative_error(samples: list[float], q: float) -> None:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    got = h.quantile(q)
    ordered = sorted(samples)
    rank = math.ceil(q * len(ordered)) - 1
    exact = ordered[max(0, rank)]
    assert min(samples) <= got <= max(samples)
    assert got == pytest.approx(exact, rel=0.04)


def test_histogram_memory_is_bounded() -> None:
    h = LatencyHistogram()
    for i in range(200_000):
        h.record((i % 9973) * 1e-6 + (i % 7) * 10.0)
    assert h.buckets < 1000
    assert len(h._buffer) < 2048
    assert h.count == 200_000


def test_histogram_merge_and_reset() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for _ in range(100):
        a.record(0.001)
        b.record(1.0)
    a.merge(b)
    assert a.count == 200
    assert a.max == 1.0
    assert a.min == 0.001
    assert a.quantile(0.25) == pytest.approx(0.001, rel=0.04)
    assert a.quantile(0.75) == pytest.approx(1.0, rel=0.04)
    a.reset()
    assert a.count == 0
    assert a.snapshot().max == 0.0


def test_histogram_clamps_negative_and_zero() -> None:
    h = LatencyHistogram()
    h.record(-1)
    h.record(0)
    assert h.snapshot().max == 0.0
    assert h.quantile(0.5) == 0.0


async def test_ewma_rate_tracks_a_steady_stream_on_virtual_time() -> None:
    with VirtualClock():
        rate = EwmaRate(tau=1.0)
        assert rate.rate() == 0.0
        for _ in range(1000):
            rate.mark()
            await asyncio.sleep(0.01)  # 100 events per second
        assert rate.rate() == pytest.approx(100, rel=0.05)
        await asyncio.sleep(5)
        assert rate.rate() < 100 * math.exp(-4.9)


def test_ewma_with_injected_clock() -> None:
    now = [0.0]
    rate = EwmaRate(tau=2.0, clock=lambda: now[0])
    rate.mark(10)
    assert rate.rate() == pytest.approx(5.0)
    now[0] = 2.0
    assert rate.rate() == pytest.approx(5.0 / math.e)
    with pytest.raises(ConfigurationError, match="tau"):
        EwmaRate(tau=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_nan_or_infinite_sample_is_ignored_and_corrupts_nothing(bad: float) -> None:
    h = LatencyHistogram()
    for x in (0.1, bad, 0.3, bad, 0.2):
        h.record(x)
    snap = h.snapshot()
    assert snap.count == 3
    assert snap.max == 0.3
    assert snap.mean == pytest.approx(0.2)
    assert snap.p50 == pytest.approx(0.2, rel=0.1)
    h.record(math.inf)
    h.record(-math.inf)
    assert h.snapshot().count == 3
