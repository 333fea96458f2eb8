"""Tour scene: an API request built from levels, one dependency failing, cleanup in reverse."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from headrace._tour._ui import Scene, TourUI
from headrace_leveled import Phase, Processor, ProcessorError, RunReport, Task, TaskFunction


@dataclass
class Request:
    """The context every phase of one request shares."""

    user: int
    flags_up: bool = True
    events: list[str] = field(default_factory=list)


def _step(label: str, seconds: float, result: Any = None) -> Any:
    async def run(ctx: Request) -> Any:
        await asyncio.sleep(seconds)
        ctx.events.append(label)
        return result

    return run


async def _load_flags(ctx: Request) -> dict[str, bool]:
    await asyncio.sleep(0.03)
    if not ctx.flags_up:
        raise ConnectionError("flags service refused the connection")
    return {"new_ui": True}


def _build() -> Processor[Request, str]:
    return (
        Processor.builder()
        .add_task(Task("db", _step("db open", 0.04), None, _step("db closed", 0.02)), level=0)
        .add_task(
            Task("cache", _step("cache open", 0.02), None, _step("cache closed", 0.01)), level=0
        )
        .add_task(Task("auth", _step("auth ok", 0.3), None, _step("session closed", 0.01)), level=1)
        .add_task(
            Task(
                "flags",
                TaskFunction(_load_flags, retries=2, initial_delay=0.02, jitter=False),
                None,
                _step("flags released", 0.01),
            ),
            level=1,
        )
        .add_task(Task("profile", execute=_step("profile loaded", 0.06, {"name": "Ada"})), level=2)
        .build(cleanup_timeout=1.0)
    )


_SHORT = {Phase.PRE_EXECUTE: "pre", Phase.EXECUTE: "execute", Phase.POST_EXECUTE: "post"}


def _timeline_rows(report: RunReport[Any, Any], width: int = 24) -> list[list[str]]:
    rows: list[tuple[float, list[str]]] = []
    span = report.duration or 1.0
    for task in report.tasks.values():
        for phase, pr in task.phases.items():
            a = round((pr.started - report.started) / span * width)
            b = max(a + 1, round((pr.ended - report.started) / span * width))
            bar = "·" * a + "█" * (b - a) + "·" * (width - b)
            start_ms = (pr.started - report.started) * 1000
            end_ms = (pr.ended - report.started) * 1000
            rows.append(
                (
                    pr.started,
                    [
                        str(task.name),
                        _SHORT[phase],
                        f"{start_ms:.0f}-{end_ms:.0f}",
                        str(pr.attempts),
                        pr.state.value,
                        bar,
                    ],
                )
            )
    rows.sort(key=lambda r: r[0])
    return [r[1] for r in rows]


async def run(ui: TourUI) -> None:
    """Show one request succeeding, then the same request with a failing dependency."""
    ui.say(
        "Level 0 opens the [bold]db[/bold] and the [bold]cache[/bold], level 1 runs "
        "[bold]auth[/bold] and [bold]flags[/bold], level 2 loads the [bold]profile[/bold]."
    )
    ui.say(
        "Each task's pre_execute runs level by level going up; execute runs once every "
        "pre_execute succeeded; post_execute (the cleanup) runs level by level coming down."
    )
    processor = _build()
    await ui.pause(0.8)

    ok = Request(user=42)
    report = await processor.process_tasks(ok)
    ui.say(
        f"A healthy request: results {report.results}, "
        f"{report.duration * 1000:.0f} ms of virtual time, cleanup included."
    )
    ui.say("  events: " + " → ".join(ok.events))
    await ui.pause(1.2)

    ui.say("")
    ui.say(
        "Now the [bold]flags[/bold] service refuses connections: 3 attempts (2 retries), "
        "then the run stops going up. [bold]auth[/bold] is cancelled, "
        "[bold]profile[/bold] is never reached, and every task that was entered is cleaned "
        "up, in reverse."
    )
    await ui.pause(0.8)
    bad = Request(user=7, flags_up=False)
    try:
        await processor.process_tasks(bad)
    except ProcessorError as error:
        ui.table(
            "ProcessorError: flat leaves, each attributed",
            ["task", "phase", "error"],
            [[str(f.task), f.phase.value, repr(f.error)] for f in error.failures],
        )
        await ui.pause(1.2)
        report = error.report
        ui.table(
            "Run report as a timeline (ms of virtual time)",
            ["task", "phase", "ms", "tries", "state", "timeline"],
            _timeline_rows(report),
        )
        states = ", ".join(f"{name} {t.state.value}" for name, t in report.tasks.items())
        ui.say(f"States: {states}.")
        posts = [e for e in bad.events if e.endswith(("closed", "released"))]
        ui.say("Cleanup order: " + " → ".join(posts))
        profile = report.tasks["profile"]
        assert Phase.EXECUTE not in profile.phases
    await ui.pause(1.5)


SCENE = Scene(
    name="leveled",
    title="headrace-leveled: an API request, level by level",
    run=run,
    order=40,
)
