"""The package READMEs (shown on PyPI) link with absolute URLs to pages that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
LINK = re.compile(r"\]\(([^)\s]+)\)")


def urls(package: Path) -> dict[str, str]:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    return dict(project.get("urls", {}))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_readme_links_are_absolute(package: Path) -> None:
    links = LINK.findall((package / "README.md").read_text())
    relative = [link for link in links if not link.startswith(("https://", "#"))]
    assert relative == [], "relative links break on PyPI"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_readme_docs_links_name_pages_that_exist(package: Path) -> None:
    docs = urls(package).get("Documentation")
    assert docs, f"{package.name}: no Documentation in [project.urls]"
    site = docs.removesuffix(f"{package.name}/") if package.name != "headrace" else docs
    for link in LINK.findall((package / "README.md").read_text()):
        if not link.startswith(site):
            continue
        page = link[len(site) :].split("#")[0].strip("/")
        assert (
            (ROOT / "docs" / f"{page}.md").exists()
            or (ROOT / "docs" / page / "index.md").exists()
            or (page == "" and (ROOT / "docs" / "index.md").exists())
        ), f"{package.name}: {link} names no docs page"


@pytest.mark.parametrize(
    "package", [p for p in PACKAGES if (ROOT / "docs" / p.name).is_dir()], ids=lambda p: p.name
)
def test_readme_lists_every_docs_page_of_its_package(package: Path) -> None:
    docs = urls(package)["Documentation"]
    text = (package / "README.md").read_text()
    for page in sorted((ROOT / "docs" / package.name).glob("*.md")):
        url = docs if page.stem == "index" else f"{docs}{page.stem}/"
        assert f"]({url})" in text or f"]({url}#" in text, f"{package.name}: no link to {url}"
