"""Discover and run the tour's scenes, each on virtual time."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil

from headrace._tour._ui import Scene, TourUI
from headrace_core.testing import VirtualClock


def scenes() -> list[Scene]:
    """Every scene of the tour, in order."""
    import headrace._tour as package

    found: list[Scene] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        scene = getattr(module, "SCENE", None)
        if isinstance(scene, Scene):
            found.append(scene)
    return sorted(found, key=lambda s: (s.order, s.name))


async def run_scene(scene: Scene, ui: TourUI) -> None:
    """Run one scene inside a VirtualClock and check that it left no task behind."""
    ui.heading(scene.title)
    before = asyncio.all_tasks()
    with VirtualClock(start=0.0):
        await scene.run(ui)
    current = asyncio.current_task()
    left: set[asyncio.Task[object]] = set()
    for _ in range(5):
        left = {t for t in asyncio.all_tasks() - before if not t.done() and t is not current}
        if not left:
            return
        await asyncio.sleep(0)
    raise RuntimeError(f"scene {scene.name!r} left {len(left)} task(s) pending")


async def run_tour(selected: list[Scene], ui: TourUI) -> None:
    """Run the selected scenes one after another."""
    for scene in selected:
        await run_scene(scene, ui)
        await ui.pause(0.5)
