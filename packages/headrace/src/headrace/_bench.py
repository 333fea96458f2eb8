"""``python -m headrace bench``: run every package's benchmarks from a checkout."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any


def _checkout_root() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "shared" / "bench.py").is_file() and (parent / "packages").is_dir():
            return parent
    return None


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_headrace_bench_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str]) -> int:
    """Run the benchmarks and print one summary table of ratios against installed peers."""
    parser = argparse.ArgumentParser(prog="python -m headrace bench")
    parser.add_argument("--package", action="append", help="only this package (repeatable)")
    parser.add_argument("--quick", action="store_true", help="one tiny sample per case")
    parser.add_argument("--json", help="write every result as JSON to this path")
    args = parser.parse_args(argv)
    root = _checkout_root()
    if root is None:
        print(
            "python -m headrace bench runs from a checkout of the headrace repository "
            "(its benchmarks are not shipped in the wheels)",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(root))
    files = sorted(root.glob("packages/*/benchmarks/bench_*.py"))
    if args.package:
        files = [f for f in files if f.parts[-3] in args.package]
    results: list[Any] = []
    for path in files:
        module = _load(path)
        bench = getattr(module, "BENCH", None)
        if bench is None:
            continue
        print(f"# {bench.title}", flush=True)
        result = bench.run(quick=args.quick)
        print(result.table(), flush=True)
        print(flush=True)
        results.append(result)
    print("## Summary: headrace time / peer time (below 1 means headrace is faster)")
    print()
    print("| benchmark | group | headrace | peer | ratio |")
    print("|---|---|---|---|---:|")
    for result in results:
        for group, ours, peer, ratio in result.ratios():
            print(f"| {result.title} | {group} | {ours} | {peer} | {ratio:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([r.to_json() for r in results], f, indent=2)
    return 0
