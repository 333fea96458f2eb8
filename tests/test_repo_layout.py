"""The repository's layout, and its copies of the family list: a package is added in one step.

Adding a package is: create packages/<name>/, run ``python3 scripts/sync_family.py``. Tools
that take globs find it themselves; the tests here check that the globs cover every package
and that the written copies (scripts/sync_family.py) are current.
"""

from __future__ import annotations

import fnmatch
import glob
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from scripts.dev import RUNS, hatch_args
from scripts.sync_family import problems, read_family, sync

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
ROOT_CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Public submodules allowed besides each package's __init__ (ARCHITECTURE, ruling 3).
PUBLIC_SUBMODULES = {
    "headrace_core": {"testing", "backoff", "stats", "store", "otel", "prometheus", "lowlevel"},
    "headrace_guards": {"compat", "redis", "backoff"},
    "headrace_flow": {"redis"},
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


def test_written_copies_of_the_family_are_current() -> None:
    assert problems(ROOT) == []


def test_ruff_first_party_covers_every_package() -> None:
    patterns = ROOT_CONFIG["tool"]["ruff"]["lint"]["isort"]["known-first-party"]
    for package in PACKAGES:
        assert any(fnmatch.fnmatchcase(import_name(package), p) for p in patterns), package


def test_mkdocstrings_paths_cover_every_package() -> None:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    block = re.search(r"^ +paths:.*\n((?: +- .*\n)+)", text, re.M)
    assert block is not None
    found = {
        Path(hit).resolve()
        for line in block.group(1).splitlines()
        for hit in glob.glob(str(ROOT / line.strip().removeprefix("- ")))
    }
    for package in PACKAGES:
        assert (ROOT / "packages" / package / "src").resolve() in found, package


def test_hatch_workspaces_and_pyright_take_every_package_by_glob() -> None:
    envs = ROOT_CONFIG["tool"]["hatch"]["envs"]
    assert envs["default"]["workspace"]["members"] == ["packages/*"]
    assert envs["pkg"]["workspace"]["members"] == ["packages/{matrix:pkg}"]
    include = ROOT_CONFIG["tool"]["pyright"]["include"]
    assert "packages/*/src/**/*.py" in include


def test_family_order_puts_dependencies_first() -> None:
    order = [p.name for p in read_family(ROOT)]
    assert order[0] == "core"
    assert order[-1] == "headrace"
    for package in read_family(ROOT):
        for sibling in package.requires:
            assert order.index(sibling) < order.index(package.name), (package.name, sibling)


def _copy_of_the_repository(tmp_path: Path) -> Path:
    """The files scripts/sync_family.py reads and writes, copied under ``tmp_path``."""
    for path in [
        ROOT / "pyproject.toml",
        ROOT / "README.md",
        ROOT / "scripts" / "dev.py",
        *ROOT.glob(".github/workflows/*.yml"),
        *ROOT.glob("packages/*/pyproject.toml"),
        *ROOT.glob("packages/*/benchmarks/bench_*.py"),
    ]:
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return tmp_path


def _add_package(root: Path, name: str, *requires: str) -> None:
    folder = root / "packages" / name
    folder.mkdir(parents=True)
    dependencies = ", ".join(f'"headrace-{r}>=0.1,<0.2"' for r in requires)
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "headrace-{name}"\ndependencies = [{dependencies}]\n',
        encoding="utf-8",
    )


def test_adding_a_package_is_one_sync(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    assert problems(root) == []
    _add_package(root, "sluice", "core", "guards")

    before = problems(root)
    assert "pyproject.toml is out of date: run python3 scripts/sync_family.py" in before
    assert any(p.startswith(".github/workflows/release.yml is out of date") for p in before)
    assert any(p.startswith(".github/workflows/sluice.yml is out of date") for p in before)

    written = {path.relative_to(root).as_posix() for path in sync(root)}
    assert written == {
        "pyproject.toml",
        ".github/workflows/release.yml",
        ".github/workflows/sluice.yml",
    }
    # Only the README's table of packages is written by hand.
    assert problems(root) == [
        "README.md: the package table has no row for headrace-sluice (packages/sluice)"
    ]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    pkg = config["tool"]["hatch"]["envs"]["pkg"]
    assert "sluice" in pkg["matrix"][0]["pkg"]
    assert pkg["sources"]["headrace-sluice"] == "packages/sluice"
    assert "packages/sluice/src" in config["tool"]["mypy"]["mypy_path"].split(":")
    roots = [e["root"] for e in config["tool"]["pyright"]["executionEnvironments"]]
    assert "packages/sluice/tests" in roots
    assert '- "sluice-v*"' in (root / ".github/workflows/release.yml").read_text("utf-8")
    workflow = (root / ".github/workflows/sluice.yml").read_text(encoding="utf-8")
    for path in ("packages/sluice/**", "packages/core/**", "packages/guards/**"):
        assert f'- "{path}"' in workflow
    assert "packages/flow/**" not in workflow
    assert "benchmarks: false" in workflow
    assert sync(root) == []  # nothing left to write


def test_removing_a_package_removes_its_workflow(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    _add_package(root, "sluice", "core")
    sync(root)
    shutil.rmtree(root / "packages" / "sluice")
    assert ".github/workflows/sluice.yml belongs to no package any more: run " in "".join(
        problems(root)
    )
    sync(root)
    assert not (root / ".github/workflows/sluice.yml").exists()
    assert problems(root) == []


def test_every_workflow_installs_the_hatch_of_dev_py(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    workflow = root / ".github/workflows/_package.yml"
    pinned = workflow.read_text(encoding="utf-8")
    assert re.search(r"hatch==\d", pinned)
    workflow.write_text(re.sub(r"hatch==[\d.]+", "hatch==1.0.0", pinned), encoding="utf-8")
    assert problems(root) == [
        ".github/workflows/_package.yml is out of date: run python3 scripts/sync_family.py"
    ]
    sync(root)
    assert workflow.read_text(encoding="utf-8") == pinned


def test_a_dependency_cycle_is_refused(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    _add_package(root, "left", "right")
    _add_package(root, "right", "left")
    with pytest.raises(SystemExit, match=r"dependency cycle .*: left, right$"):
        read_family(root)


def test_dev_py_runs_only_environments_and_scripts_of_the_pyproject() -> None:
    envs = ROOT_CONFIG["tool"]["hatch"]["envs"]
    for command, (env, script) in RUNS.items():
        name = env.split(".")[0]
        assert name in envs, command
        assert script in envs[name]["scripts"], command
        if "{py}" in env:  # one environment per Python of the matrix
            assert "python" in envs[name]["matrix"][0], command
    assert "test" in envs["pkg"]["scripts"]


def test_every_matrix_has_the_pythons_every_package_declares() -> None:
    declared = set()
    for package in PACKAGES:
        classifiers = package_config(package)["project"]["classifiers"]  # type: ignore[index]
        declared |= {
            c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r".*Python :: 3\.\d+", c)
        }
    envs = ROOT_CONFIG["tool"]["hatch"]["envs"]
    for name in ("test", "pkg", "bench"):
        assert set(envs[name]["matrix"][0]["python"]) == declared, name


def test_dev_py_test_options() -> None:
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert hatch_args("test", ["-x", "-k", "clock"]) == [
        "run",
        f"test.py{py}:run",
        "-x",
        "-k",
        "clock",
    ]
    assert hatch_args("test", ["--all-pythons", "-x"]) == ["run", "test:run", "-x"]
    assert hatch_args("test", ["--package", "guards", "-x"]) == [
        "run",
        f"+py={py}",
        "+pkg=guards",
        "pkg:test",
        "-x",
    ]
    assert hatch_args("test", ["--all-pythons", "--package=core"]) == [
        "run",
        "+pkg=core",
        "pkg:test",
    ]
    assert hatch_args("test", ["--lf", "--all-pythons"]) == [
        "run",
        f"test.py{py}:run",
        "--lf",
        "--all-pythons",
    ]
    assert hatch_args("check", ["packages/core"]) == ["run", "lint:check", "packages/core"]
    assert hatch_args("bench", ["--quick"]) == ["run", f"bench.py{py}:run", "--quick"]


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
