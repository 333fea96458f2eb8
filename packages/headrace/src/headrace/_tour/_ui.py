"""What a tour scene sees: a small UI that renders with rich when installed, else plain text."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Scene:
    """One scene of the tour: ``run(ui)`` is awaited inside an active VirtualClock."""

    name: str
    title: str
    run: Callable[[TourUI], Awaitable[None]]
    order: int = 50


class LiveTable(Protocol):
    def update(self, rows: Sequence[Sequence[object]]) -> None: ...


class Progress(Protocol):
    def update(self, completed: float, *, description: str | None = None) -> None: ...


class TourUI:
    """Output for scenes. ``pause`` paces the tour for reading (real time; none with --fast)."""

    def __init__(self, *, fast: bool = False, color: bool = True, stream: Any = None) -> None:
        self.fast = fast
        self.stream = stream if stream is not None else sys.stdout
        self._console: Any = None
        if color:
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                self._console = Console(file=self.stream, highlight=False)

    @property
    def rich(self) -> bool:
        """Whether output goes through rich."""
        return self._console is not None

    def _plain(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def heading(self, text: str) -> None:
        """Print a scene heading."""
        if self._console is not None:
            from rich.rule import Rule

            self._console.print(Rule(f"[bold cyan]{text}"))
        else:
            self._plain(f"\n=== {text} ===")

    def say(self, text: str) -> None:
        """Print a line of narration (rich markup is stripped in plain mode)."""
        if self._console is not None:
            self._console.print(text)
        else:
            from re import sub

            self._plain(sub(r"\[/?[a-z #0-9_]+\]", "", text))

    async def pause(self, seconds: float = 0.6) -> None:
        """Pause for the reader, in real time (skipped with --fast); virtual time stands still."""
        if self.fast or seconds <= 0:
            await asyncio.sleep(0)
            return
        # A real-time pause: block the loop briefly so virtual time does not move meanwhile.
        time.sleep(seconds)  # noqa: ASYNC251, TID251 - pacing for a human reader
        await asyncio.sleep(0)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Print a table."""
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title)
            for c in columns:
                table.add_column(c)
            for row in rows:
                table.add_row(*(str(x) for x in row))
            self._console.print(table)
            return
        widths = [len(c) for c in columns]
        text_rows = [[str(x) for x in row] for row in rows]
        for row in text_rows:
            widths = [max(w, len(x)) for w, x in zip(widths, row, strict=False)]
        self._plain(title)
        self._plain("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)))
        for row in text_rows:
            self._plain("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=False)))

    @contextmanager
    def live_table(self, title: str, columns: Sequence[str]) -> Iterator[LiveTable]:
        """A table redrawn in place by ``update(rows)``.

        Plain mode, and rich output that is not a terminal (a pipe, a CI log), print the
        table once at the end: a redrawn table would leave every frame in the log, and the
        next line would start on the table's bottom border.
        """
        ui = self
        last: list[Sequence[Sequence[object]]] = [[]]
        if self._console is not None and self._console.is_terminal:
            from rich.live import Live
            from rich.table import Table

            def build(rows: Sequence[Sequence[object]]) -> Table:
                table = Table(title=title)
                for c in columns:
                    table.add_column(c)
                for row in rows:
                    table.add_row(*(str(x) for x in row))
                return table

            with Live(build([]), console=self._console, refresh_per_second=20) as live:

                class _Rich:
                    def update(self, rows: Sequence[Sequence[object]]) -> None:
                        last[0] = rows
                        live.update(build(rows))

                yield _Rich()
            return

        class _Plain:
            def update(self, rows: Sequence[Sequence[object]]) -> None:
                last[0] = rows

        yield _Plain()
        ui.table(title, columns, last[0])

    @contextmanager
    def progress(self, total: float, description: str) -> Iterator[Progress]:
        """A progress bar (plain mode, or a console that is no terminal: a line per tenth)."""
        if self._console is not None and self._console.is_terminal:
            from rich.progress import Progress as RichProgress

            with RichProgress(console=self._console, transient=False) as bar:
                task = bar.add_task(description, total=total)

                class _RichBar:
                    def update(self, completed: float, *, description: str | None = None) -> None:
                        kw: dict[str, Any] = {"completed": completed}
                        if description is not None:
                            kw["description"] = description
                        bar.update(task, **kw)

                yield _RichBar()
            return
        ui = self
        state = {"tenth": -1}

        class _PlainBar:
            def update(self, completed: float, *, description: str | None = None) -> None:
                tenth = int(10 * completed / total) if total else 10
                if tenth != state["tenth"]:
                    state["tenth"] = tenth
                    ui._plain(f"  {description or ''} {completed:g}/{total:g}".rstrip())

        yield _PlainBar()
