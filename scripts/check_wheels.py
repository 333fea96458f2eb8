"""Check what ``hatch build`` wrote: every package built, each wheel installable alone.

    python scripts/check_wheels.py DIST

run as ``hatch run lint:wheels DIST`` (the lint environment has twine). Fails unless DIST
holds a wheel and an sdist of every package of packages/, ``twine check --strict`` accepts
them all, and every wheel installs into a new environment with only the wheels of DIST
(its declared siblings; no index) and imports there. New environments are made with uv
(the one hatch runs, ``HATCH_UV``) when there is one, else with venv and pip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def normalized(name: str) -> str:
    """A distribution name as it appears in wheel and sdist file names."""
    return re.sub(r"[-_.]+", "_", name).lower()


def expected_distributions() -> list[str]:
    """The normalized distribution name of every package of packages/."""
    names = []
    for project in sorted(ROOT.glob("packages/*/pyproject.toml")):
        config = tomllib.loads(project.read_text(encoding="utf-8"))
        names.append(normalized(config["project"]["name"]))
    return names


def top_level_modules(wheel: Path) -> list[str]:
    """The importable top-level packages and modules a wheel installs."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    modules = {t for t in tops if not t.endswith((".dist-info", ".data"))}
    return sorted(m.removesuffix(".py") for m in modules)


def install_alone(wheel: Path, dist: Path) -> bool:
    """Install ``wheel`` into a new environment from ``dist`` only and import its modules."""
    modules = top_level_modules(wheel)
    uv = os.environ.get("HATCH_UV") or shutil.which("uv")
    with tempfile.TemporaryDirectory(prefix="headrace-wheel-") as tmp:
        env = Path(tmp) / "env"
        python = env / ("Scripts" if os.name == "nt" else "bin") / "python"
        source = ["--no-index", "--find-links", str(dist), str(wheel)]
        if uv:
            make = [uv, "venv", "-q", "--python", sys.executable, str(env)]
            install = [uv, "pip", "install", "-q", "--python", str(python), *source]
        else:
            make = [sys.executable, "-m", "venv", str(env)]
            install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            install += source
        probe = "; ".join(f"import {m}; print({m!r}, {m}.__version__)" for m in modules)
        return all(subprocess.call(c) == 0 for c in (make, install, [str(python), "-c", probe]))


def check(dist: Path) -> list[str]:
    """Everything wrong with the artifacts in ``dist``; empty when all is well."""
    problems = []
    artifacts = sorted(p for p in dist.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    for name in expected_distributions():
        for kind, pattern in (("wheel", f"{name}-*.whl"), ("sdist", f"{name}-*.tar.gz")):
            if not list(dist.glob(pattern)):
                problems.append(f"no {kind} of {name} in {dist}")
    twine = [sys.executable, "-m", "twine", "check", "--strict", *map(str, artifacts)]
    if not artifacts or subprocess.call(twine) != 0:
        problems.append("twine check --strict failed")
    problems += [
        f"{wheel.name} does not install or import alone"
        for wheel in artifacts
        if wheel.suffix == ".whl" and not install_alone(wheel, dist)
    ]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 0 if argv in (["-h"], ["--help"]) else 2
    problems = check(Path(argv[0]).resolve())
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
