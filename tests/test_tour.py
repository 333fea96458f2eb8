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
    counts = await run_workers(redis_url, workers=3, seconds=seconds)
    total = sum(counts)
    assert all(n > 0 for n in counts)
    # One shared limit: together they stay near RATE per second (the workers start up to
    # ~1.5 s apart, which widens the window), far below the 3 x RATE of three own limits.
    assert total <= RATE * (seconds + 1.5) + 6
    assert total < 3 * RATE * seconds
    assert total >= RATE * seconds * 0.5
