"""The repository's lists of packages agree, so a package is added in one step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
ROOT_CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Public submodules allowed besides each package's __init__ (ARCHITECTURE, ruling 3).
PUBLIC_SUBMODULES = {
    "headrace_core": {"testing", "backoff", "stats", "store", "otel", "lowlevel"},
    "headrace_guards": {"compat", "redis", "backoff"},
}


def import_name(package: str) -> str:
    return "headrace" if package == "headrace" else f"headrace_{package}"


def package_config(package: str) -> dict[str, object]:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text("utf-8"))


def test_core_and_umbrella_exist() -> None:
    assert {"core", "headrace"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_folder_names_are_identifiers(package: str) -> None:
    assert package.isidentifier()


def test_mypy_path_lists_every_package() -> None:
    listed = ROOT_CONFIG["tool"]["mypy"]["mypy_path"].split(":")
    for package in PACKAGES:
        assert f"packages/{package}/src" in listed


def test_hatch_matrix_and_sources_list_every_package() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    line = re.search(r"^pkg = \[(.*)\]", text, re.M)
    assert line is not None
    in_matrix = re.findall(r'"([a-z_]+)"', line.group(1))
    sources = ROOT_CONFIG["tool"]["hatch"]["envs"]["pkg"]["sources"]
    for package in PACKAGES:
        assert package in in_matrix
        dist = package_config(package)["project"]["name"]  # type: ignore[index]
        assert sources[dist] == f"packages/{package}"


def test_ruff_first_party_lists_every_package() -> None:
    first_party = ROOT_CONFIG["tool"]["ruff"]["lint"]["isort"]["known-first-party"]
    for package in PACKAGES:
        assert import_name(package) in first_party


def test_mkdocstrings_paths_list_every_package() -> None:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for package in PACKAGES:
        assert f"packages/{package}/src" in text


def test_no_init_files_in_test_folders() -> None:
    strays = list(ROOT.glob("packages/*/tests/**/__init__.py"))
    strays += list((ROOT / "tests").glob("**/__init__.py"))
    assert strays == []


@pytest.mark.parametrize("package", PACKAGES)
def test_package_files(package: str) -> None:
    folder = ROOT / "packages" / package
    name = import_name(package)
    for required in ("README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml"):
        assert (folder / required).is_file(), required
    src = folder / "src" / name
    assert (src / "py.typed").is_file()
    assert re.search(r'__version__ = "\d+\.\d+\.\d+', (src / "_version.py").read_text("utf-8"))
    assert "## Unreleased" in (folder / "CHANGELOG.md").read_text("utf-8")


@pytest.mark.parametrize("package", PACKAGES)
def test_siblings_are_version_ranges(package: str) -> None:
    project = package_config(package)["project"]
    for requirement in project["dependencies"]:  # type: ignore[index]
        if requirement.startswith("headrace"):
            assert re.fullmatch(r"headrace-[a-z]+>=\d+\.\d+,<\d+\.\d+", requirement), requirement
        else:
            pytest.fail(f"{package} has a non-sibling runtime dependency: {requirement}")


def test_core_has_no_runtime_dependency() -> None:
    assert package_config("core")["project"]["dependencies"] == []  # type: ignore[index]


@pytest.mark.parametrize("package", PACKAGES)
def test_implementation_modules_are_private(package: str) -> None:
    name = import_name(package)
    src = ROOT / "packages" / package / "src" / name
    allowed = PUBLIC_SUBMODULES.get(name, set()) | {"__init__", "__main__"}
    for path in src.iterdir():
        stem = path.stem if path.suffix == ".py" else path.name
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            assert stem.startswith("_") or stem in allowed, f"{path} should be private"


def test_umbrella_depends_on_every_package() -> None:
    deps = package_config("headrace")["project"]["dependencies"]  # type: ignore[index]
    for package in PACKAGES:
        if package != "headrace":
            dist = package_config(package)["project"]["name"]  # type: ignore[index]
            assert any(d.startswith(f"{dist}>=") for d in deps), dist


def test_a_workflow_per_package() -> None:
    workflows = ROOT / ".github" / "workflows"
    release = (workflows / "release.yml").read_text(encoding="utf-8")
    for package in PACKAGES:
        text = (workflows / f"{package}.yml").read_text(encoding="utf-8")
        assert f"packages/{package}/**" in text
        assert f"{package}-v*" in release


def test_every_docs_page_is_in_the_nav() -> None:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") : text.index("\ntheme:")]
    for page in sorted((ROOT / "docs").glob("**/*.md")):
        relative = page.relative_to(ROOT / "docs").as_posix()
        assert relative in nav, f"{relative} is not in the mkdocs.yml nav"
