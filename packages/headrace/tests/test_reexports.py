"""The umbrella mirrors every sub-package's ``__all__``, as the same objects."""

from __future__ import annotations

import importlib

import pytest

import headrace

SUBPACKAGES = sorted(
    {
        module.split(".")[0]
        for name in headrace.__all__
        if isinstance(module := getattr(getattr(headrace, name), "__module__", None), str)
        and module.startswith("headrace_")
    }
)


def test_there_is_at_least_core() -> None:
    assert "headrace_core" in SUBPACKAGES


@pytest.mark.parametrize("module_name", SUBPACKAGES)
def test_same_objects(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(headrace, name) is getattr(module, name), name


def test_all_is_sorted_and_unique() -> None:
    # ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest.
    def key(n: str) -> tuple[int, str]:
        return (0 if n.isupper() else 1 if n[0].isupper() else 2, n)

    assert list(headrace.__all__) == sorted(set(headrace.__all__), key=key)


def test_main_module_lists_scenes() -> None:
    from headrace.__main__ import main

    assert main(["--list"]) == 0
