"""Test support: the virtual clock (also offered as the pytest fixture ``virtual_clock``)."""

from headrace_core._virtual_clock import VirtualClock as VirtualClock

__all__ = ["VirtualClock"]

VirtualClock.__module__ = __name__
