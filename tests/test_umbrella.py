"""The umbrella re-exports every public name of every package, as the same object."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import headrace

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    f"headrace_{p.name}"
    for p in sorted((ROOT / "packages").iterdir())
    if (p / "pyproject.toml").exists() and p.name != "headrace"
]


@pytest.mark.parametrize("module_name", SUBPACKAGES)
def test_every_name_is_the_same_object(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        if name.startswith("__"):
            continue
        assert name in headrace.__all__, f"{module_name}.{name} is not re-exported"
        assert getattr(headrace, name) is getattr(module, name), name


def test_umbrella_adds_nothing() -> None:
    union = set()
    for module_name in SUBPACKAGES:
        union |= set(importlib.import_module(module_name).__all__)
    assert set(headrace.__all__) == union


def test_umbrella_file_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/sync_umbrella.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_version() -> None:
    assert isinstance(headrace.__version__, str)
