"""Write packages/headrace/src/headrace/__init__.py from every sub-package's ``__all__``.

Run ``python scripts/sync_umbrella.py`` after a package's public names change;
``python scripts/sync_umbrella.py --check`` fails when the file is out of date (CI runs it
through tests/test_umbrella.py). Two packages exporting one name must export the same object.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.sync_family import ROOT, read_family

TARGET = ROOT / "packages" / "headrace" / "src" / "headrace" / "__init__.py"

HEADER = '''"""headrace: the family of small, fast, fully typed asyncio concurrency libraries.

This umbrella re-exports every public name of headrace-core, headrace-guards,
headrace-coalesce, headrace-leveled, headrace-flow and headrace-throttle, as the same
objects. ``python -m headrace`` runs a live tour of the family.

This file is written by ``scripts/sync_umbrella.py``; do not edit it by hand.
"""

'''


def landed() -> list[str]:
    """Every package but the umbrella, dependencies first, importable from this checkout."""
    present = []
    for package in read_family(ROOT):
        folder = ROOT / "packages" / package.name / "src"
        if package.module != "headrace" and (folder / package.module).is_dir():
            sys.path.insert(0, str(folder))
            present.append(package.module)
    return present


def render() -> str:
    owner: dict[str, str] = {}
    by_module: dict[str, list[str]] = {}
    for module_name in landed():
        module = importlib.import_module(module_name)
        # The order ruff's isort keeps: constants, classes, then the rest, case-insensitive.
        names = sorted(
            (n for n in module.__all__ if not n.startswith("__")),
            key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n.lower()),
        )
        for name in names:
            if name in owner:
                first = getattr(importlib.import_module(owner[name]), name)
                if first is not getattr(module, name):
                    raise SystemExit(
                        f"name clash: {name!r} is exported by {owner[name]} and {module_name} "
                        "as different objects"
                    )
                continue
            owner[name] = module_name
            by_module.setdefault(module_name, []).append(name)
    lines = ["from headrace._version import __version__ as __version__"]
    for module_name in sorted(by_module):
        lines += [f"from {module_name} import {n} as {n}" for n in by_module[module_name]]
    body = "\n".join(lines)
    # RUF022's order: SCREAMING_CASE, then CamelCase, then the rest.
    ordered = sorted(owner, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    listing = "\n".join(f'    "{n}",' for n in ordered)
    return f"{HEADER}{body}\n\n__all__ = [\n{listing}\n]\n"


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 0 if argv in (["-h"], ["--help"]) else 2
    text = render()
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python scripts/sync_umbrella.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
