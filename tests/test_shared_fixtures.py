"""The shared fixture fails a test that leaves a task pending; the bench harness reports ratios."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from pathlib import Path

import pytest

from shared.bench import Bench

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]


def test_a_leaking_test_fails(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(
        test_leak="""
import asyncio

async def test_leaks():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600))

async def test_clean():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await task

def test_sync_is_untouched():
    assert True
"""
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "shared.pytest_fixtures",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        f"--rootdir={pytester.path}",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        "-W",
        "ignore::DeprecationWarning",
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*left 1 task(s) pending*"])


def test_pytest_plugin_is_registered() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert names.get("headrace") == "headrace_core._pytest_plugin"


def test_bench_harness_table_ratios_and_json(tmp_path: Path) -> None:
    bench = Bench("demo", repeat=5)

    @bench.case("g", "headrace x", kind="headrace", ops=10)
    async def ours(n: int) -> None:
        for _ in range(n * 10):
            await asyncio.sleep(0)

    @bench.case("g", "raw", kind="raw", ops=10)
    async def raw(n: int) -> None:
        for _ in range(n * 10):
            pass

    @bench.case("g", "peer", kind="peer", ops=10, requires=("no_such_module_here",))
    async def peer(n: int) -> None:
        raise AssertionError("never runs")

    out = tmp_path / "r.json"
    result = bench.main(["--quick", "--json", str(out)])
    rows = {r.name: r for r in result.rows}
    assert rows["raw"].vs_raw == 1.0
    assert rows["headrace x"].vs_raw is not None
    assert "not installed" in rows["peer"].note
    assert result.ratios() == []
    table = result.table()
    assert "| g | headrace x | headrace |" in table
    data = json.loads(out.read_text())
    assert data["title"] == "demo"
    assert len(data["rows"]) == 3


def test_bench_rejects_too_few_repetitions() -> None:
    with pytest.raises(ValueError, match="repeat"):
        Bench("x", repeat=3)
