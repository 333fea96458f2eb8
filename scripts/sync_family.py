"""Write every static copy of the family list from packages/*, or check that they are current.

    python3 scripts/sync_family.py           # rewrite whatever is out of date, naming it
    python3 scripts/sync_family.py --check   # exit 1, naming each file, if one is out of date

The family is every folder of packages/ with a pyproject.toml. Tools that take globs read it
themselves (pytest testpaths, mypy files, ruff known-first-party, mkdocstrings paths, hatch
workspace members, pyright include). What needs a written list is written here:

- pyproject.toml, each block between ``# FAMILY begin: <block>`` and ``# FAMILY end``:
  the hatch ``pkg`` matrix, the hatch ``pkg`` sources, mypy_path, and pyright's execution
  environment for each package's typing proofs (its roots take no globs);
- .github/workflows/release.yml, block ``release-tags``: one tag pattern per package;
- .github/workflows/<package>.yml, the whole file: runs _package.yml when the package, a
  sibling it depends on (directly or not) or the shared tooling changes;
- the hatch version every workflow installs, from ``HATCH`` in scripts/dev.py.

It also checks, and never writes, that README.md's package table has a row per package.
Packages are listed dependencies first (ties by name), so the umbrella comes last.
"""

from __future__ import annotations

import heapq
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = "# Written by scripts/sync_family.py from packages/*/pyproject.toml; do not edit."
BEGIN = re.compile(r"^(?P<indent>\s*)# FAMILY begin: (?P<block>[a-z-]+)\s*$")
END = re.compile(r"^\s*# FAMILY end\s*$")


@dataclass(frozen=True)
class Package:
    """One member of the family, read from packages/<name>/pyproject.toml."""

    name: str  # the folder: guards
    dist: str  # the distribution: headrace-guards
    module: str  # the import name: headrace_guards
    requires: tuple[str, ...]  # folders of the siblings it declares as dependencies
    benchmarks: bool  # has packages/<name>/benchmarks/bench_*.py


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _read(folder: Path) -> tuple[str, str, list[str]]:
    config = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    project = config["project"]
    wheel = config.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    packages = wheel.get("wheel", {}).get("packages", [])
    default = "headrace" if folder.name == "headrace" else f"headrace_{folder.name}"
    module = Path(packages[0]).name if len(packages) == 1 else default
    requirements = [m.group(0) for r in project.get("dependencies", []) if (m := _NAME.match(r))]
    return project["name"], module, requirements


def read_family(root: Path = ROOT) -> list[Package]:
    """Every package of ``root``/packages, dependencies first, ties by folder name."""
    folders = sorted(p.parent for p in (root / "packages").glob("*/pyproject.toml"))
    raw = {folder.name: _read(folder) for folder in folders}
    by_dist = {_normalize(dist): name for name, (dist, _, _) in raw.items()}
    requires = {
        name: tuple(sorted({by_dist[n] for r in reqs if (n := _normalize(r)) in by_dist}))
        for name, (_, _, reqs) in raw.items()
    }
    waiting = {name: set(deps) for name, deps in requires.items()}
    ready = [name for name, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other, deps in waiting.items():
            if name in deps:
                deps.discard(name)
                if not deps:
                    heapq.heappush(ready, other)
    if len(order) != len(raw):
        stuck = ", ".join(sorted(set(raw) - set(order)))
        raise SystemExit(f"a dependency cycle among the siblings; in it or behind it: {stuck}")
    return [
        Package(
            name=name,
            dist=raw[name][0],
            module=raw[name][1],
            requires=requires[name],
            benchmarks=any((root / "packages" / name / "benchmarks").glob("bench_*.py")),
        )
        for name in order
    ]


def closure(package: Package, family: list[Package]) -> list[Package]:
    """The siblings ``package`` depends on, directly or through another, in family order."""
    by_name = {p.name: p for p in family}
    needed: set[str] = set()
    todo = list(package.requires)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += by_name[name].requires
    return [p for p in family if p.name in needed]


def render_block(block: str, family: list[Package]) -> list[str]:
    """The lines of one ``# FAMILY begin: <block>`` block, without its indentation."""
    if block == "pkg-matrix":
        return ["pkg = [" + ", ".join(f'"{p.name}"' for p in family) + "]"]
    if block == "pkg-sources":
        return [f'{p.dist} = "packages/{p.name}"' for p in family]
    if block == "mypy-path":
        paths = [*(f"packages/{p.name}/src" for p in family), "."]
        return [f'mypy_path = "{":".join(paths)}"']
    if block == "pyright-proofs":
        proofs = 'enableTypeIgnoreComments = false, reportUnnecessaryTypeIgnoreComment = "error"'
        return [f'{{ root = "packages/{p.name}/tests", {proofs} }},' for p in family]
    if block == "release-tags":
        return [f'- "{p.name}-v*"' for p in family]
    raise SystemExit(f"unknown FAMILY block {block!r}")


def fill_blocks(text: str, family: list[Package], where: str) -> str:
    """``text`` with every FAMILY block rewritten."""
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        out.append(lines[i])
        begin = BEGIN.match(lines[i])
        i += 1
        if begin is None:
            continue
        end = next((j for j in range(i, len(lines)) if END.match(lines[j])), None)
        if end is None:
            raise SystemExit(f"{where}: '# FAMILY begin: {begin['block']}' has no '# FAMILY end'")
        indent = begin["indent"]
        out += [f"{indent}{line}\n" for line in render_block(begin["block"], family)]
        i = end
    return "".join(out)


def render_workflow(package: Package, family: list[Package]) -> str:
    """.github/workflows/<package>.yml."""
    paths = [f"packages/{p.name}/**" for p in [package, *closure(package, family)]]
    paths += ["pyproject.toml", "conftest.py", "shared/**", "scripts/**"]
    paths += [f".github/workflows/{package.name}.yml", ".github/workflows/_package.yml"]
    listing = "".join(f'      - "{path}"\n' for path in paths)
    benchmarks = "true" if package.benchmarks else "false"
    return f"""{GENERATED}
# Checks of {package.dist}; runs when it, a sibling it depends on or the tooling changes.
name: {package.name}
on:
  push:
    branches: [main]
  pull_request:
    paths:
{listing}permissions:
  contents: read
jobs:
  package:
    uses: ./.github/workflows/_package.yml
    with:
      package: {package.name}
      benchmarks: {benchmarks}
"""


def hatch_pin(root: Path) -> str:
    """The hatch requirement scripts/dev.py installs, e.g. hatch==1.18.2."""
    text = (root / "scripts" / "dev.py").read_text(encoding="utf-8")
    found = re.search(r'^HATCH = "(hatch==[^"]+)"', text, re.MULTILINE)
    if found is None:
        raise SystemExit('scripts/dev.py: no HATCH = "hatch==..." line')
    return found.group(1)


def expected_files(root: Path = ROOT) -> dict[Path, str | None]:
    """Each file this script writes, with the text it should have (None: it should not exist)."""
    family = read_family(root)
    pin = hatch_pin(root)
    workflows = root / ".github" / "workflows"
    files: dict[Path, str | None] = {}
    for path in [root / "pyproject.toml", workflows / "release.yml"]:
        files[path] = fill_blocks(path.read_text(encoding="utf-8"), family, path.name)
    for package in family:
        files[workflows / f"{package.name}.yml"] = render_workflow(package, family)
    for path in sorted(workflows.glob("*.yml")):
        if path not in files:
            text = path.read_text(encoding="utf-8")
            # A written workflow of a package that is gone is removed; the others only get the pin.
            files[path] = None if text.startswith(GENERATED) else text
    return {
        path: None if text is None else re.sub(r"\bhatch==[0-9][0-9A-Za-z.]*", pin, text)
        for path, text in files.items()
    }


def readme_problems(root: Path, family: list[Package]) -> list[str]:
    """Packages without a row in README.md's package table (written by hand)."""
    readme = (root / "README.md").read_text(encoding="utf-8")
    return [
        f"README.md: the package table has no row for {p.dist} (packages/{p.name})"
        for p in family
        if f"](packages/{p.name})" not in readme
    ]


def problems(root: Path = ROOT) -> list[str]:
    """What is out of date; empty when every copy of the family list is current."""
    found = []
    for path, text in expected_files(root).items():
        where = path.relative_to(root)
        if text is None:
            found.append(
                f"{where} belongs to no package any more: run python3 scripts/sync_family.py"
            )
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            found.append(f"{where} is out of date: run python3 scripts/sync_family.py")
    return found + readme_problems(root, read_family(root))


def sync(root: Path = ROOT) -> list[Path]:
    """Rewrite every file that is out of date; return them."""
    changed = []
    for path, text in expected_files(root).items():
        if text is None:
            path.unlink()
            changed.append(path)
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 0 if argv in (["-h"], ["--help"]) else 2
    if argv == ["--check"]:
        found = problems()
        for problem in found:
            print(problem, file=sys.stderr)
        return 1 if found else 0
    for path in sync():
        print(f"{'wrote' if path.exists() else 'removed'} {path.relative_to(ROOT)}")
    for problem in readme_problems(ROOT, read_family()):
        print(problem, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
