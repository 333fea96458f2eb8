"""headrace-core hot-path costs: a counter, a latency sample, an event with no listener.

Run: python packages/core/benchmarks/bench_stats.py [--json out.json]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_core.stats import Counter, EwmaRate, LatencyHistogram, Listeners
from shared.bench import Bench

BENCH = Bench("core: stats hot paths")
OPS = 1000
# Long-tailed latencies in random order (sorted input would flatter the histogram).
_rng = random.Random(5)
SAMPLES = [_rng.lognormvariate(-4.0, 1.0) for _ in range(OPS)]


@BENCH.case("counter.inc", "headrace Counter.inc()", kind="headrace", ops=OPS)
async def counter_inc(n: int) -> None:
    counter = Counter()
    inc = counter.inc
    for _ in range(n):
        for _ in range(OPS):
            inc()


@BENCH.case("counter.inc", "raw attribute += 1", kind="raw", ops=OPS)
async def raw_inc(n: int) -> None:
    class Box:
        __slots__ = ("value",)

        def __init__(self) -> None:
            self.value = 0

    box = Box()
    for _ in range(n):
        for _ in range(OPS):
            box.value += 1


@BENCH.case("histogram.record", "headrace LatencyHistogram.record()", kind="headrace", ops=OPS)
async def histogram_record(n: int) -> None:
    histogram = LatencyHistogram()
    record = histogram.record
    samples = SAMPLES
    for _ in range(n):
        for s in samples:
            record(s)


@BENCH.case("histogram.record", "raw list.append", kind="raw", ops=OPS)
async def list_append(n: int) -> None:
    samples = SAMPLES
    for _ in range(n):
        out: list[float] = []
        append = out.append
        for s in samples:
            append(s)


@BENCH.case("ewma.mark", "headrace EwmaRate.mark()", kind="headrace", ops=OPS)
async def ewma_mark(n: int) -> None:
    rate = EwmaRate(tau=1.0)
    mark = rate.mark
    for _ in range(n):
        for _ in range(OPS):
            mark()


@BENCH.case("emit, no listener", "headrace Listeners.emit()", kind="headrace", ops=OPS)
async def emit_none(n: int) -> None:
    listeners: Listeners[int] = Listeners("headrace.bench")
    emit = listeners.emit
    for _ in range(n):
        for i in range(OPS):
            emit(i)


@BENCH.case("emit, no listener", "headrace `if listeners:` guard", kind="headrace", ops=OPS)
async def emit_guarded(n: int) -> None:
    listeners: Listeners[int] = Listeners("headrace.bench")
    for _ in range(n):
        for i in range(OPS):
            if listeners:
                listeners.emit(i)


@BENCH.case("emit, no listener", "headrace `if listeners.active:` guard", kind="headrace", ops=OPS)
async def emit_active(n: int) -> None:
    listeners: Listeners[int] = Listeners("headrace.bench")
    for _ in range(n):
        for i in range(OPS):
            if listeners.active:
                listeners.emit(i)


@BENCH.case("emit, no listener", "raw empty loop", kind="raw", ops=OPS)
async def empty_loop(n: int) -> None:
    for _ in range(n):
        for _i in range(OPS):
            pass


if __name__ == "__main__":
    BENCH.main()
