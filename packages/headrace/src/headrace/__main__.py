"""``python -m headrace``: a live tour of the family; ``python -m headrace bench``: benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence


def _tour(argv: Sequence[str]) -> int:
    from headrace._tour._runner import run_tour, scenes
    from headrace._tour._ui import TourUI

    parser = argparse.ArgumentParser(
        prog="python -m headrace",
        description=(
            "A live tour of the headrace family: eight scenes, about 40 s; --fast runs it "
            "on pure virtual time in about a second."
        ),
        epilog=(
            "python -m headrace bench [--help]: run every package's benchmark beside the "
            "peer libraries and raw asyncio, and print the ratios."
        ),
    )
    parser.add_argument("--scene", action="append", help="run only this scene (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenes and exit")
    parser.add_argument("--no-color", action="store_true", help="plain text output")
    parser.add_argument("--fast", action="store_true", help="no pauses (pure virtual time)")
    args = parser.parse_args(argv)
    available = scenes()
    if args.list:
        for scene in available:
            print(f"{scene.name:12} {scene.title}")
        return 0
    selected = available
    if args.scene:
        by_name = {s.name: s for s in available}
        unknown = [n for n in args.scene if n not in by_name]
        if unknown:
            parser.error(f"unknown scene(s): {', '.join(unknown)}; try --list")
        selected = [by_name[n] for n in args.scene]
    ui = TourUI(fast=args.fast, color=not args.no_color)
    asyncio.run(run_tour(selected, ui))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m headrace`` and the ``headrace`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        from headrace._bench import main as bench_main

        return bench_main(args[1:])
    return _tour(args)


if __name__ == "__main__":
    raise SystemExit(main())
