#!/usr/bin/env python3
"""Run one of the hatch environments of pyproject.toml on a machine with only Python and pip.

Usage (from anywhere in the checkout; the Python you run this with is "the current Python"):

    python3 scripts/dev.py test [PYTEST ARGS]     # every test, on the current Python
    python3 scripts/dev.py test --all-pythons     # every test on 3.11, 3.12 and 3.13
    python3 scripts/dev.py test --package guards  # one package alone, with only its siblings
    python3 scripts/dev.py tour [ARGS]            # the live tour: python -m headrace ARGS
    python3 scripts/dev.py check [PATHS]          # ruff, mypy --strict, pyright, family sync
    python3 scripts/dev.py docs [ARGS]            # mkdocs build --strict
    python3 scripts/dev.py bench [ARGS]           # every benchmark, beside the peer libraries
    python3 scripts/dev.py hatch ARGS             # hatch itself, e.g. hatch env show

``--package`` and ``--all-pythons`` combine; test, tour and bench need the current Python to be
one of the matrix (3.11, 3.12, 3.13). The environments (what each installs and runs)
are defined once, in the root pyproject.toml; this script only installs hatch (pinned, into
``.venv/hatch/``, once) and runs ``hatch run <env>:<script> ARGS``. hatch keeps the
environments in ``.venv/hatch/data/`` and installs into one again only when a pyproject.toml
changed. Developers with hatch installed can run the same commands directly, for example
``hatch run test.py3.12:run`` or ``hatch run +py=3.13 +pkg=guards pkg:test``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HATCH = "hatch==1.18.2"  # the one pin; the workflows install the same (scripts/sync_family.py)
TOOL_VENV = ROOT / ".venv" / "hatch"
BIN, EXE = ("Scripts", ".exe") if os.name == "nt" else ("bin", "")
# command -> (environment, script); "{py}" is the current Python's matrix entry
RUNS = {
    "test": ("test.{py}", "run"),
    "tour": ("test.{py}", "tour"),
    "check": ("lint", "check"),
    "docs": ("docs", "build"),
    "bench": ("bench.{py}", "run"),
}


def ensure_hatch() -> Path:
    """Install the pinned hatch into .venv/hatch/ unless it is there; return its executable."""
    hatch = TOOL_VENV / BIN / f"hatch{EXE}"
    stamp = TOOL_VENV / "headrace-hatch.txt"
    if hatch.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == HATCH:
        return hatch
    where = TOOL_VENV.relative_to(ROOT)
    print(
        f"installing {HATCH} into {where} (once): it builds and runs the environments "
        "defined in pyproject.toml",
        flush=True,
    )
    python = TOOL_VENV / BIN / f"python{EXE}"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(TOOL_VENV)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.check_call([*pip, HATCH])
    stamp.write_text(HATCH, encoding="utf-8")
    return hatch


def hatch_environ() -> dict[str, str]:
    """The environment hatch runs in: its data inside the checkout, the current Python first."""
    env = dict(os.environ)
    env.setdefault("HATCH_DATA_DIR", str(TOOL_VENV / "data"))
    # Matrix environments ask for "3.12"; hatch then finds this interpreter before any other.
    # Environments that name no Python (lint, docs) are created with this one.
    current = Path(sys.executable).resolve()
    env["PATH"] = os.pathsep.join([str(current.parent), env.get("PATH", os.defpath)])
    env.setdefault("HATCH_PYTHON", str(current))
    return env


def hatch_args(command: str, args: list[str]) -> list[str]:
    """The hatch command line for one of RUNS, with the test options resolved."""
    py = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    env, script = RUNS[command]
    args = list(args)
    if command != "test":
        return ["run", f"{env.format(py=py)}:{script}", *args]
    all_pythons, package = False, None
    while args and args[0].startswith("--") and args[0] != "--":
        option = args.pop(0)
        if option == "--all-pythons":
            all_pythons = True
        elif option == "--package" and args:
            package = args.pop(0)
        elif option.startswith("--package="):
            package = option.partition("=")[2]
        else:
            args.insert(0, option)  # a pytest option
            break
    filters = [] if all_pythons else [f"+py={py[2:]}"]
    if package is not None:
        return ["run", *filters, f"+pkg={package}", "pkg:test", *args]
    target = "test" if all_pythons else env.format(py=py)
    return ["run", f"{target}:{script}", *args]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    command, args = argv[0], list(argv[1:])
    if command != "hatch" and command not in RUNS:
        print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036 (this file runs on older ones to say so)
        print("headrace needs Python 3.11 or newer", file=sys.stderr)
        return 2
    hatch = ensure_hatch()
    line = args if command == "hatch" else hatch_args(command, args)
    # `hatch` runs where it is called from (hatch build in a package folder); the rest at the root.
    cwd = Path.cwd() if command == "hatch" else ROOT
    return subprocess.call([str(hatch), *line], cwd=cwd, env=hatch_environ())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
