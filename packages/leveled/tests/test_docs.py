"""Every python block of docs/leveled and the README runs as a program; peer blocks parse."""

from __future__ import annotations

import ast
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGES = [*sorted((ROOT / "docs" / "leveled").glob("*.md")), ROOT / "packages/leveled/README.md"]
FENCE = re.compile(r"^```python( peer)?\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[str, bool, str]]:
    found = []
    for page in PAGES:
        for i, match in enumerate(FENCE.finditer(page.read_text(encoding="utf-8"))):
            found.append((f"{page.name}#{i}", bool(match.group(1)), match.group(2)))
    return found


@pytest.mark.parametrize(("where", "peer", "code"), blocks(), ids=[b[0] for b in blocks()])
def test_doc_block(where: str, peer: bool, code: str, tmp_path: Path) -> None:
    ast.parse(code, filename=where)
    if peer:
        return
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")
