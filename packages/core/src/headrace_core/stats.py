"""Stats building blocks: counters, gauges, rates, latency histograms and listener registries."""

from headrace_core._listeners import Listener as Listener
from headrace_core._listeners import Listeners as Listeners
from headrace_core._stats import Counter as Counter
from headrace_core._stats import EwmaRate as EwmaRate
from headrace_core._stats import Gauge as Gauge
from headrace_core._stats import LatencyHistogram as LatencyHistogram
from headrace_core._stats import LatencySnapshot as LatencySnapshot
from headrace_core._stats import loop_time as loop_time

__all__ = [
    "Counter",
    "EwmaRate",
    "Gauge",
    "LatencyHistogram",
    "LatencySnapshot",
    "Listener",
    "Listeners",
    "loop_time",
]

for _obj in (Counter, EwmaRate, Gauge, LatencyHistogram, LatencySnapshot, Listeners, loop_time):
    _obj.__module__ = __name__
del _obj
