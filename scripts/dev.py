#!/usr/bin/env python3
"""Set up a virtual environment for this checkout and run something in it.

Needs only Python 3.11+ with pip. Usage (from anywhere in the checkout):

    python3 scripts/dev.py tour [ARGS]     # the live tour: python -m headrace ARGS
    python3 scripts/dev.py test [ARGS]     # every test: pytest ARGS
    python3 scripts/dev.py check           # ruff check, ruff format --check, mypy --strict
    python3 scripts/dev.py docs            # mkdocs build --strict
    python3 scripts/dev.py bench [ARGS]    # every benchmark, beside the peer libraries

Each command creates (once) ``.venv/<python version>/`` and installs every package of
``packages/`` in editable mode plus the tools it needs (through uv, installed into the
environment with pip), again only when a ``pyproject.toml`` changed, then runs.
``--python PATH`` picks another interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"tour": [], "test": ["test"], "check": ["lint"], "docs": ["docs"], "bench": ["bench"]}
# Peers that declare a newer Python than they need; installed without the check (bench only).
BENCH_NO_PYTHON_CHECK = ["concresce==1.0.0"]


def _run(cmd: list[str]) -> int:
    return subprocess.call(cmd, cwd=ROOT)


def _env_dir(python: str) -> Path:
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True
    ).strip()
    return ROOT / ".venv" / version


def ensure_env(python: str, command: str) -> Path:
    """Create or update the environment for ``command``; return its python."""
    env = _env_dir(python)
    bindir = env / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / "python"
    if not py.exists():
        print(f"creating {env.relative_to(ROOT)}", flush=True)
        subprocess.check_call([python, "-m", "venv", str(env)])
    if not (bindir / "uv").exists():
        subprocess.check_call(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "uv"]
        )
    packages = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
    # Install only when something the environment is built from changed since last time.
    stamp = env / f".headrace-{command}"
    wanted = _fingerprint(packages, command)
    if stamp.exists() and stamp.read_text() == wanted:
        return py
    groups = ", ".join(GROUPS[command]) or "no extra"
    print(
        f"installing {len(packages)} packages (editable) and the {groups} tools into "
        f"{env.relative_to(ROOT)}; later runs skip this until a pyproject.toml changes",
        flush=True,
    )
    uv = [str(bindir / "uv"), "pip", "install", "-q", "--python", str(py)]
    cmd = list(uv)
    for package in packages:
        extras = "[tour]" if package.name == "headrace" else ""
        cmd += ["-e", f"{package}{extras}"]
    for group in GROUPS[command]:
        cmd += ["--group", group]
    subprocess.check_call(cmd, cwd=ROOT)
    if command == "bench":
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.call([*pip, "--no-deps", "--ignore-requires-python", *BENCH_NO_PYTHON_CHECK])
    stamp.write_text(wanted)
    return py


def _fingerprint(packages: list[Path], command: str) -> str:
    """What an environment for ``command`` is built from: every pyproject.toml and the groups."""
    digest = hashlib.sha256(repr((GROUPS[command], BENCH_NO_PYTHON_CHECK)).encode())
    for path in [ROOT / "pyproject.toml", *(p / "pyproject.toml" for p in packages)]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    python = sys.executable
    if len(argv) >= 2 and argv[0] == "--python":
        python, argv = argv[1], argv[2:]
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if not argv or argv[0] not in GROUPS:
        print(__doc__)
        return 2
    command, args = argv[0], argv[1:]
    if sys.version_info < (3, 11) and python == sys.executable:
        print("headrace needs Python 3.11 or newer", file=sys.stderr)
        return 2
    py = str(ensure_env(python, command))
    if command == "tour":
        return _run([py, "-m", "headrace", *args])
    if command == "test":
        return _run([py, "-m", "pytest", *args])
    if command == "check":
        bindir = Path(py).parent
        status = _run([str(bindir / "ruff"), "check", *args])
        status |= _run([str(bindir / "ruff"), "format", "--check"])
        status |= _run([str(bindir / "mypy")])
        status |= _run([py, "scripts/sync_umbrella.py", "--check"])
        return status
    if command == "docs":
        return _run([str(Path(py).parent / "mkdocs"), "build", "--strict", *args])
    return _run([py, "-m", "headrace", "bench", *args])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
