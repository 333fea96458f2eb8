"""Every headrace code block in the docs and READMEs runs; peer code blocks parse.

A block opened with ```` ```python ```` is run as a program; ```` ```python peer ```` marks
code of another library (or a fragment that needs a user's code), which is only parsed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)


def blocks() -> list[tuple[str, str, bool]]:
    files = [*sorted(ROOT.glob("docs/**/*.md")), ROOT / "README.md"]
    files += sorted(ROOT.glob("packages/*/README.md"))
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            run = "peer" not in match.group(1).split()
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2), run))
    return found


BLOCKS = blocks()


@pytest.mark.parametrize(("where", "code", "run"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_code_block(where: str, code: str, run: bool) -> None:
    tree = ast.parse(code, filename=where)
    if run:
        namespace = {"__name__": "__main__"}
        exec(compile(tree, where, "exec"), namespace)


def test_no_example_silences_the_type_checker() -> None:
    # An example that needs "type: ignore" teaches a shape that does not type cleanly.
    silenced = [where for where, code, run in BLOCKS if run and "type: ignore" in code]
    assert silenced == []
