"""Run pyright (the npm package, pinned) with the settings of [tool.pyright] in pyproject.toml.

``hatch run lint:types`` runs this inside the lint environment. The first run installs
pyright into ``.venv/node/`` with npm (Node.js 18 or newer), and again only when PYRIGHT
changes. pyright resolves imports from the Python running this script, so it sees exactly
the packages of the environment.

Without arguments it prints every error in full and counts the warnings by rule (list them
with ``--level warning``); it fails only on errors. Any arguments go to pyright unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYRIGHT = "1.1.414"
PREFIX = ROOT / ".venv" / "node"


def installed_version() -> str | None:
    """The version of pyright in .venv/node/, or None."""
    manifest = PREFIX / "node_modules" / "pyright" / "package.json"
    if not manifest.is_file():
        return None
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    return version if isinstance(version, str) else None


def ensure_pyright() -> Path | None:
    """Install the pinned pyright unless it is there; return its launcher, or None."""
    launcher = PREFIX / "node_modules" / "pyright" / "index.js"
    if installed_version() == PYRIGHT:
        return launcher
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        print("pyright needs Node.js 18 or newer with npm on PATH", file=sys.stderr)
        return None
    print(f"installing pyright {PYRIGHT} into {PREFIX.relative_to(ROOT)} (once)", flush=True)
    PREFIX.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(PREFIX), "--save-exact", "--no-fund", "--no-audit"]
    command.append("--silent")
    if subprocess.call([*command, f"pyright@{PYRIGHT}"]) != 0 or installed_version() != PYRIGHT:
        print(f"could not install pyright {PYRIGHT} with npm", file=sys.stderr)
        return None
    return launcher


def summarize(report: dict[str, Any]) -> int:
    """Print the errors of pyright's JSON report and count its warnings; return the errors."""
    diagnostics = report.get("generalDiagnostics", [])
    errors = [d for d in diagnostics if d.get("severity") == "error"]
    for d in errors:
        start = d["range"]["start"]
        path = Path(d["file"])
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        where = f"{shown}:{start['line'] + 1}:{start['character'] + 1}"
        rule = f" ({d['rule']})" if d.get("rule") else ""
        print(f"{where} - error: {d['message']}{rule}")
    warnings = Counter(d.get("rule", "") for d in diagnostics if d.get("severity") == "warning")
    summary = report.get("summary", {})
    print(
        f"pyright {report.get('version', PYRIGHT)}: {len(errors)} errors in "
        f"{summary.get('filesAnalyzed', '?')} files; {sum(warnings.values())} warnings"
    )
    for rule, count in warnings.most_common():
        print(f"  {count:4d} {rule}")
    return len(errors)


def main(argv: list[str]) -> int:
    launcher = ensure_pyright()
    node = shutil.which("node")
    if launcher is None or node is None:
        return 2
    command = [node, str(launcher), "--pythonpath", sys.executable]
    if argv:
        return subprocess.call([*command, *argv], cwd=ROOT)
    run = subprocess.run([*command, "--outputjson"], cwd=ROOT, capture_output=True, text=True)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:  # pyright could not start: show what it said
        print(run.stdout + run.stderr, file=sys.stderr)
        return run.returncode or 2
    return 1 if summarize(report) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
