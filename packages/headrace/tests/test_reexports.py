"""The umbrella mirrors every sub-package's ``__all__``, as the same objects."""

from __future__ import annotations

import importlib

import pytest

import headrace

SUBPACKAGES = sorted(
    {
        getattr(headrace, name).__module__.split(".")[0]
        for name in headrace.__all__
        if hasattr(getattr(headrace, name), "__module__")
    }
    - {"headrace"}
)


def test_there_is_at_least_core() -> None:
    assert "headrace_core" in SUBPACKAGES


@pytest.mark.parametrize("module_name", SUBPACKAGES)
def test_same_objects(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(headrace, name) is getattr(module, name), name


def test_all_is_sorted_and_unique() -> None:
    assert list(headrace.__all__) == sorted(set(headrace.__all__))


def test_main_module_lists_scenes() -> None:
    from headrace.__main__ import main

    assert main(["--list"]) == 0
