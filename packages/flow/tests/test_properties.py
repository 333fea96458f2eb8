"""Property tests: random map/filter pipelines produce exactly the expected items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from headrace_core.testing import VirtualClock
from headrace_flow import DROP, flow, stage

stage_spec = st.tuples(
    st.integers(1, 6),  # workers
    st.integers(0, 3),  # queue size
    st.booleans(),  # ordered
    st.integers(1, 5),  # keep multiples of ... (1 keeps all)
    st.integers(0, 3),  # delay scale
)


@settings(max_examples=25, deadline=None)
@given(specs=st.lists(stage_spec, min_size=1, max_size=4), n=st.integers(0, 60))
# Ordered stages whose workers wait on an empty input: each would take one item past the
# window when items arrived (the window counts them now).
@example(specs=[(6, 1, True, 1, 1), (6, 1, True, 1, 1)], n=21)
def test_random_pipelines(specs: list[tuple[int, int, bool, int, int]], n: int) -> None:
    def make(i: int, keep: int, delay: int) -> Any:
        async def fn(x: int) -> Any:
            await asyncio.sleep(((x * 7 + i * 3) % 5) * delay / 100)
            return x if x % keep == 0 else DROP

        fn.__name__ = f"s{i}"
        return fn

    stages = [
        stage(make(i, keep, delay), workers=w, queue_size=q, ordered=o)
        for i, (w, q, o, keep, delay) in enumerate(specs)
    ]
    expected = [x for x in range(n) if all(x % spec[3] == 0 for spec in specs)]
    all_ordered = all(spec[2] or spec[0] == 1 for spec in specs)

    async def main() -> tuple[list[int], Any]:
        pulled = 0
        done = 0
        worst = 0

        async def src() -> AsyncIterator[int]:
            nonlocal pulled, worst
            for i in range(n):
                pulled += 1
                worst = max(worst, pulled - done - stats_filtered())
                yield i

        f = flow(*stages)

        def stats_filtered() -> int:
            s = f.stats()
            return s.filtered + s.failed

        out: list[int] = []
        with VirtualClock():
            async for x in f.iterate(src):
                out.append(x)
                done += 1
        # + 1 for the source's held item, + 2 for iterate()'s output slot and its hand-off
        bound = sum(q + w for w, q, *_ in specs) + 1 + 2
        if all(q for _, q, *_ in specs):  # queue_size=0 is unbounded
            assert worst <= bound
        return out, f.stats()

    out, stats = asyncio.run(main())
    if all_ordered:
        assert out == expected
    else:
        assert sorted(out) == expected
    assert stats.accepted == n
    assert stats.completed == len(expected)
    assert stats.accepted == stats.completed + stats.failed + stats.filtered + stats.discarded
    assert stats.discarded == 0
