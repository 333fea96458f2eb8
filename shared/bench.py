"""The benchmark harness every package uses.

One process, one event loop. Each *case* is an ``async def run(n: int) -> None`` that
performs ``n`` repetitions of one workload of ``ops`` operations. The harness calibrates
``n`` so a sample lasts about ``target_seconds``, warms every case up, then takes
``repeat`` (>= 5) samples per case with the cases of a group interleaved, and reports the
median in microseconds per operation, the ratio to the group's raw-asyncio case (and to
its floor, when the group has one), and headrace's ratio to each peer.

A benchmark module (``packages/<pkg>/benchmarks/bench_*.py``) defines ``BENCH = Bench(...)``
and registers cases with ``@BENCH.case(group, name, kind=..., ops=..., requires=...)``.
Run one with ``python packages/<pkg>/benchmarks/bench_x.py [--json out.json] [--quick]``,
or all of them with ``python -m headrace bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["headrace", "peer", "raw", "floor"]
RunFn = Callable[[int], Awaitable[None]]


@dataclass
class Case:
    group: str
    name: str
    run: RunFn
    kind: Kind
    ops: int
    requires: tuple[str, ...]

    def available(self) -> str | None:
        """None when every required module imports, else the missing module's name."""
        for module in self.requires:
            try:
                if importlib.util.find_spec(module) is None:
                    return module
            except (ImportError, ValueError):
                return module
        return None


@dataclass
class Row:
    group: str
    name: str
    kind: str
    us_per_op: float
    samples: list[float] = field(default_factory=list)
    vs_raw: float | None = None
    vs_floor: float | None = None
    note: str = ""


@dataclass
class Result:
    title: str
    rows: list[Row]
    python: str = field(default_factory=lambda: sys.version.split()[0])

    def group_rows(self, group: str) -> list[Row]:
        return [r for r in self.rows if r.group == group]

    def ratios(self) -> list[tuple[str, str, str, float]]:
        """(group, headrace case, peer case, headrace time / peer time) for every pair."""
        out: list[tuple[str, str, str, float]] = []
        groups = dict.fromkeys(r.group for r in self.rows)
        for group in groups:
            rows = [r for r in self.group_rows(group) if not r.note]
            out.extend(
                (group, ours.name, peer.name, ours.us_per_op / peer.us_per_op)
                for ours in rows
                if ours.kind == "headrace"
                for peer in rows
                if peer.kind == "peer"
            )
        return out

    def table(self) -> str:
        lines = [f"## {self.title} (Python {self.python})", ""]
        lines.append("| group | implementation | kind | µs/op | × raw | × floor |")
        lines.append("|---|---|---|---:|---:|---:|")
        for r in self.rows:
            if r.note:
                lines.append(f"| {r.group} | {r.name} | {r.kind} | {r.note} | | |")
                continue
            raw = f"{r.vs_raw:.2f}" if r.vs_raw is not None else ""
            floor = f"{r.vs_floor:.2f}" if r.vs_floor is not None else ""
            lines.append(
                f"| {r.group} | {r.name} | {r.kind} | {r.us_per_op:.3f} | {raw} | {floor} |"
            )
        pairs = self.ratios()
        if pairs:
            lines += ["", "| group | headrace | peer | headrace / peer |", "|---|---|---|---:|"]
            lines += [f"| {g} | {a} | {b} | {x:.2f} |" for g, a, b, x in pairs]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {"title": self.title, "python": self.python, "rows": [asdict(r) for r in self.rows]}


class Bench:
    """A set of benchmark cases for one package."""

    def __init__(
        self, title: str, *, repeat: int = 7, warmup: int = 1, target_seconds: float = 0.05
    ) -> None:
        if repeat < 5:
            raise ValueError(f"repeat={repeat!r}: must be >= 5")
        self.title = title
        self.repeat = repeat
        self.warmup = warmup
        self.target_seconds = target_seconds
        self.cases: list[Case] = []

    def case(
        self,
        group: str,
        name: str,
        *,
        kind: Kind,
        ops: int = 1,
        requires: Sequence[str] = (),
    ) -> Callable[[RunFn], RunFn]:
        """Register ``async def run(n)`` as the case ``name`` of ``group``."""

        def register(run: RunFn) -> RunFn:
            self.cases.append(Case(group, name, run, kind, ops, tuple(requires)))
            return run

        return register

    async def _sample(self, case: Case, n: int) -> float:
        gc.collect()
        start = time.perf_counter()
        await case.run(n)
        return time.perf_counter() - start

    async def _calibrate(self, case: Case, target: float) -> int:
        n = 1
        while True:
            elapsed = await self._sample(case, n)
            if elapsed >= target / 4 or n >= 1 << 22:
                return max(1, int(n * target / max(elapsed, 1e-9)))
            n *= 4

    async def run_async(
        self, *, quick: bool = False, only: str | None = None, log: Callable[[str], None] = print
    ) -> Result:
        repeat = 1 if quick else self.repeat
        target = 0.0 if quick else self.target_seconds
        rows: list[Row] = []
        groups = dict.fromkeys(c.group for c in self.cases)
        for group in groups:
            cases = [c for c in self.cases if c.group == group]
            if only is not None:
                cases = [c for c in cases if only in f"{c.group} {c.name}"]
            live: list[tuple[Case, int]] = []
            for case in cases:
                missing = case.available()
                if missing is not None:
                    rows.append(
                        Row(group, case.name, case.kind, 0.0, note=f"({missing} not installed)")
                    )
                    continue
                n = 1 if quick else await self._calibrate(case, target)
                live.append((case, n))
            samples: dict[str, list[float]] = {c.name: [] for c, _ in live}
            for i in range(self.warmup + repeat):
                for case, n in live:  # interleaved, so drift hits every case alike
                    elapsed = await self._sample(case, n)
                    if i >= self.warmup or quick:
                        samples[case.name].append(elapsed / (n * case.ops) * 1e6)
            group_rows = [
                Row(group, c.name, c.kind, statistics.median(samples[c.name]), samples[c.name])
                for c, _ in live
            ]
            raw = next((r for r in group_rows if r.kind == "raw"), None)
            floor = next((r for r in group_rows if r.kind == "floor"), None)
            for r in group_rows:
                if raw is not None and raw.us_per_op > 0:
                    r.vs_raw = r.us_per_op / raw.us_per_op
                if floor is not None and floor.us_per_op > 0:
                    r.vs_floor = r.us_per_op / floor.us_per_op
            rows.extend(group_rows)
            if not quick:
                log(f"  {group}: done")
        return Result(self.title, rows)

    def run(self, *, quick: bool = False, only: str | None = None) -> Result:
        """Run every case in one new event loop and return the result."""
        return asyncio.run(self.run_async(quick=quick, only=only))

    def main(self, argv: Sequence[str] | None = None) -> Result:
        """Command line: ``[--json PATH] [--quick] [--only TEXT] [--repeat N]``."""
        parser = argparse.ArgumentParser(description=f"benchmarks: {self.title}")
        parser.add_argument("--json", help="also write the results as JSON to this path")
        parser.add_argument("--quick", action="store_true", help="one tiny sample (smoke run)")
        parser.add_argument("--only", help="run only cases whose 'group name' contains this")
        parser.add_argument("--repeat", type=int, default=self.repeat)
        args = parser.parse_args(argv)
        if args.repeat < 5 and not args.quick:
            parser.error("--repeat must be >= 5")
        self.repeat = args.repeat
        result = self.run(quick=args.quick, only=args.only)
        print(result.table())
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result.to_json(), f, indent=2)
        return result


def import_pypeln() -> Any:
    """Import pypeln, giving its ``stopit`` dependency a stand-in ``pkg_resources``.

    stopit imports ``pkg_resources`` only to read its own version; environments without
    setuptools ship none.
    """
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: F401
        except ImportError:
            import types

            shim = types.ModuleType("pkg_resources")

            def get_distribution(name: str) -> Any:
                raise LookupError(name)

            shim.get_distribution = get_distribution  # type: ignore[attr-defined]
            sys.modules["pkg_resources"] = shim
    import pypeln

    return pypeln
