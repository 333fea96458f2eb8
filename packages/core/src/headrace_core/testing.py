"""Test support: the virtual clock.

Also offered as the pytest fixture ``virtual_clock``, configured with
``@pytest.mark.virtual_clock(**options)`` (the keyword options of :class:`VirtualClock`).
"""

from headrace_core._virtual_clock import VirtualClock as VirtualClock

__all__ = ["VirtualClock"]

VirtualClock.__module__ = __name__
