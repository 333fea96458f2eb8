"""The shutdown recipe's program, run in a child process and stopped by real signals.

The program is read from docs/recipes/shutdown.md (its ```` ```python peer
title="shutdown.py" ```` block), so the page shows exactly what is tested. Every wait is
bounded: a child that hangs fails the test instead of blocking it.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "recipes" / "shutdown.md"
BLOCK = re.compile(r'^```python peer title="shutdown\.py"\n(.*?)^```', re.M | re.S)
WAIT = 5.0  # seconds any one step may take before the test fails

# The same program with asyncio's default signal handling: add_signal_handler does nothing,
# and the signals have Python's own dispositions, as when started from a terminal (a child
# inherits an ignored SIGINT from, say, a background job of a shell script, and asyncio.run
# then installs no SIGINT handler at all).
WITHOUT_HANDLERS = """\
import asyncio
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
_loop = asyncio.new_event_loop()
type(_loop).add_signal_handler = lambda self, sig, callback, *args: None
_loop.close()
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def program() -> str:
    blocks = BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "shutdown.md must hold one shutdown.py block"
    code: str = blocks[0]
    return code


class Child:
    """The program in a child process, its stdout read line by line with a timeout."""

    def __init__(self, prelude: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + program()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: str | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def next_line(self) -> str | None:
        try:
            return self.lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no output line within {WAIT} s")

    def expect(self, line: str) -> None:
        got = self.next_line()
        assert got == line, f"expected {line!r}, got {got!r}; stderr: {self.stderr()}"

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def finish(self) -> tuple[int, list[str]]:
        """Wait for the exit; return the exit status and the lines not read yet."""
        try:
            status = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the program did not exit within {WAIT} s")
        self.reader.join(timeout=WAIT)
        rest: list[str] = []
        while (line := self.next_line()) is not None:
            rest.append(line)
        return status, rest

    def stderr(self) -> str:
        """The child's stderr, once it has exited."""
        if self._stderr is None:
            if self.proc.poll() is None or self.proc.stderr is None:
                return "(still running)"
            self._stderr = self.proc.stderr.read()
        return self._stderr

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self.reader.join(timeout=WAIT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start() -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def launch(prelude: str = "") -> Child:
        child = Child(prelude)
        children.append(child)
        return child

    yield launch
    for child in children:
        child.close()


def test_ctrl_c_twice_still_runs_the_whole_cleanup(start: Callable[..., Child]) -> None:
    child = start()
    child.expect("ready")
    child.send(signal.SIGINT)
    child.expect("cleanup started")
    child.send(signal.SIGINT)  # a second Ctrl-C while post_execute runs
    child.expect("cleanup done")
    status, rest = child.finish()
    assert rest == ["stopped by SIGINT"]
    assert status == 128 + signal.SIGINT
    assert child.stderr() == ""


def test_sigterm_runs_the_cleanup(start: Callable[..., Child]) -> None:
    child = start()
    child.expect("ready")
    child.send(signal.SIGTERM)
    child.expect("cleanup started")
    status, rest = child.finish()
    assert rest == ["cleanup done", "stopped by SIGTERM"]
    assert status == 128 + signal.SIGTERM
    assert child.stderr() == ""


def test_without_the_handlers_a_second_ctrl_c_cuts_the_cleanup_short(
    start: Callable[..., Child],
) -> None:
    child = start(WITHOUT_HANDLERS)
    child.expect("ready")
    child.send(signal.SIGINT)
    child.expect("cleanup started")
    child.send(signal.SIGINT)
    status, rest = child.finish()
    assert rest == []  # no "cleanup done"
    assert status == -signal.SIGINT  # KeyboardInterrupt ended the process
    assert "KeyboardInterrupt" in child.stderr()


def test_without_the_handlers_one_ctrl_c_cleans_up_then_raises_keyboard_interrupt(
    start: Callable[..., Child],
) -> None:
    child = start(WITHOUT_HANDLERS)
    child.expect("ready")
    child.send(signal.SIGINT)
    child.expect("cleanup started")
    status, rest = child.finish()
    assert rest == ["cleanup done"]
    assert status == -signal.SIGINT
    assert "KeyboardInterrupt" in child.stderr()


def test_without_the_handlers_sigterm_skips_the_cleanup(start: Callable[..., Child]) -> None:
    child = start(WITHOUT_HANDLERS)
    child.expect("ready")
    child.send(signal.SIGTERM)
    status, rest = child.finish()
    assert rest == []  # killed at once: no cleanup at all
    assert status == -signal.SIGTERM
