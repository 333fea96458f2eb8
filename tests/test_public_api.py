"""Every public module has a sorted ``__all__``, and every public name is documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def public_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        top = "headrace" if package == "headrace" else f"headrace_{package}"
        names.append(top)
        module = importlib.import_module(top)
        for info in pkgutil.iter_modules(module.__path__):
            if not info.name.startswith("_"):
                names.append(f"{top}.{info.name}")
    return names


def exported(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    return [(n, getattr(module, n)) for n in module.__all__]


MODULES = public_modules()


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_sorted_and_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), name
    assert module.__doc__, f"{module_name} has no docstring"


@pytest.mark.parametrize("module_name", MODULES)
def test_public_classes_and_functions_are_listed(module_name: str) -> None:
    module = importlib.import_module(module_name)
    listed = set(module.__all__)
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if (inspect.isclass(value) or inspect.isfunction(value)) and (
            getattr(value, "__module__", "") or ""
        ).startswith(module_name.split(".")[0]):
            assert name in listed, f"{module_name}.{name} is public but not in __all__"


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_and_method_is_documented(module_name: str) -> None:
    missing = []
    for name, value in exported(module_name):
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if not inspect.getdoc(value):
            missing.append(name)
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                if attr.startswith("_"):
                    continue
                function = member.fget if isinstance(member, property) else member
                if isinstance(function, staticmethod | classmethod):
                    function = function.__func__
                if inspect.isfunction(function) and not inspect.getdoc(function):
                    missing.append(f"{name}.{attr}")
    assert missing == [], f"undocumented in {module_name}: {missing}"


@pytest.mark.parametrize("module_name", [m for m in MODULES if m != "headrace"])
def test_public_objects_show_their_public_module(module_name: str) -> None:
    wrong = []
    top = module_name.split(".")[0]
    for name, value in exported(module_name):
        if inspect.isclass(value) or inspect.isfunction(value):
            home = getattr(value, "__module__", "")
            if home.startswith(top) and "._" in f".{home.split('.', 1)[-1]}" and "._" in home:
                wrong.append(f"{name} ({home})")
    assert wrong == [], f"objects of {module_name} show a private module: {wrong}"
