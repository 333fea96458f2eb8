"""Fixtures of the guards tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[0.0, 1e3, 1e6], ids=["t0", "t1e3", "t1e6"])
def clock_start(request: pytest.FixtureRequest) -> float:
    """Where a test's virtual clock starts: decisions must not flip with its magnitude."""
    return float(request.param)
