"""Every python block of the README and of docs/coalesce runs (peer blocks only parse)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FILES = [
    ROOT / "packages" / "coalesce" / "README.md",
    *sorted((ROOT / "docs" / "coalesce").glob("*.md")),
]
BLOCK = re.compile(r"```python( peer)?\n(.*?)```", re.S)


def blocks() -> list[tuple[str, bool, str]]:
    found = []
    for path in FILES:
        for n, match in enumerate(BLOCK.finditer(path.read_text(encoding="utf-8"))):
            found.append((f"{path.name}#{n}", bool(match.group(1)), match.group(2)))
    return found


@pytest.mark.parametrize(("name", "peer", "code"), blocks(), ids=[b[0] for b in blocks()])
def test_block(name: str, peer: bool, code: str) -> None:
    if peer:
        ast.parse(code.replace("await ", ""))
        return
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    asyncio.set_event_loop(None)


def test_readme_prints_what_it_says() -> None:
    code = BLOCK.findall((ROOT / "packages" / "coalesce" / "README.md").read_text())[0][1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README", "exec"), {"__name__": "__main__"})
    assert out.getvalue().splitlines() == [
        "1 network call for 5 users",
        "[100, 250, 190, 300, 120]",
        "{5: 1}",
    ]
