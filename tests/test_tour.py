"""``python -m headrace``: the tour runs on virtual time, scene by scene, and exits 0."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from headrace._tour._runner import run_scene, scenes
from headrace._tour._ui import TourUI


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_list_names_every_scene() -> None:
    result = run_module("--list")
    assert result.returncode == 0
    for scene in scenes():
        assert scene.name in result.stdout


def test_whole_tour_fast_plain_text() -> None:
    result = run_module("--fast", "--no-color")
    assert result.returncode == 0, result.stderr
    for scene in scenes():
        assert scene.title in result.stdout
    assert "\x1b[" not in result.stdout


def test_piped_rich_output_keeps_tables_and_text_on_their_own_lines() -> None:
    pytest.importorskip("rich")
    result = run_module("--fast")  # rich, but stdout is a pipe: no live redraws
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    borders = [line for line in lines if "┘" in line]
    assert borders, "expected at least one table in the tour"
    for line in borders:
        assert line.rstrip().endswith("┘"), f"text joined to a table border: {line!r}"


def test_help_names_the_bench_command() -> None:
    result = run_module("--help")
    assert result.returncode == 0
    assert "bench" in result.stdout


def test_unknown_scene_is_a_usage_error() -> None:
    result = run_module("--scene", "nope")
    assert result.returncode == 2
    assert "unknown scene" in result.stderr


@pytest.mark.parametrize("scene", scenes(), ids=lambda s: s.name)
async def test_each_scene_runs_and_leaves_no_task(scene: object) -> None:
    out = io.StringIO()
    ui = TourUI(fast=True, color=False, stream=out)
    await run_scene(scene, ui)  # type: ignore[arg-type]
    assert out.getvalue().strip()


def test_rich_output_when_color() -> None:
    pytest.importorskip("rich")
    out = io.StringIO()
    ui = TourUI(fast=True, color=True, stream=out)
    assert ui.rich
    ui.table("t", ["a"], [[1]])
    assert "a" in out.getvalue()


@pytest.mark.redis
async def test_shared_scene_three_processes_share_one_rate(redis_url: str) -> None:
    from headrace._tour.shared import RATE, run_workers

    seconds = 2.0
    results = await run_workers(redis_url, workers=3, seconds=seconds)
    counts = [calls for calls, _, _ in results]
    total = sum(counts)
    span = max(end for _, _, end in results) - min(start for _, start, _ in results)
    assert all(n > 0 for n in counts)
    assert seconds <= span < seconds + 5
    # One shared limit: over the time any worker ran, at most RATE per second plus the
    # burst of 1 (and one call of slack for the clocks of three processes), far below the
    # 3 x RATE of three limits of their own.
    assert total <= RATE * span + 2
    assert total < 3 * RATE * seconds
    assert total >= RATE * seconds * 0.5


async def test_streams_scene_shares_a_stream_and_redelivers_what_a_stop_left(
    redis_url: str,
) -> None:
    from headrace._tour.streams import ORDERS, share

    result = await share(redis_url)
    assert result["total"] == ORDERS  # every order processed
    assert result["alpha"] > 0
    assert result["beta"] >= 8
    assert result["pending"] > 0  # beta was stopped mid-item
    assert result["redelivered"] == result["pending"]  # and took them first on its restart
