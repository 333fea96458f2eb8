"""N concurrent calls per round through each batcher; microseconds per item.

Workload (as in the spec): each round starts N calls together with ``asyncio.gather``;
the bulk function returns ``[k * 10 for k in keys]``. ``raw`` is N separate calls with no
batching, ``floor`` the least a batcher can do (the first caller parks one ``sleep(0)``,
then one bulk call resolves a list of futures).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from headrace_coalesce import Loader, batch, collect
from shared.bench import Bench

BENCH = Bench("coalesce: N concurrent calls per round, µs per item")

SIZES = (1, 10, 100, 1000)


async def bulk(keys: list[int]) -> list[int]:
    return [k * 10 for k in keys]


async def single(k: int) -> int:
    return k * 10


class Floor:
    """The hand-written floor: futures, the first caller parks one sleep(0), one bulk call."""

    def __init__(self) -> None:
        self.keys: list[int] | None = None
        self.futs: list[asyncio.Future[int]] = []

    async def get(self, k: int) -> int:
        keys = self.keys
        if keys is None:
            keys = self.keys = [k]
            futs: list[asyncio.Future[int]] = []
            self.futs = futs
            await asyncio.sleep(0)
            self.keys = None
            results = await bulk(keys)
            for fut, value in zip(futs, results[1:], strict=True):
                fut.set_result(value)
            return results[0]
        fut = asyncio.get_running_loop().create_future()
        keys.append(k)
        self.futs.append(fut)
        return await fut


@batch
async def headrace_get(k: int) -> list[int]:
    ids = await collect(k)
    return [i * 10 for i in ids]


def _register(n_calls: int) -> None:
    group = f"N={n_calls}"
    keys = range(n_calls)

    @BENCH.case(group, "raw asyncio.gather", kind="raw", ops=n_calls)
    async def raw(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(*(single(k) for k in keys))

    @BENCH.case(group, "floor (sleep(0) + futures)", kind="floor", ops=n_calls)
    async def floor(n: int) -> None:
        f = Floor()
        for _ in range(n):
            await asyncio.gather(*(f.get(k) for k in keys))

    @BENCH.case(group, "headrace @batch", kind="headrace", ops=n_calls)
    async def hr_batch(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(*(headrace_get(k) for k in keys))

    @BENCH.case(group, "headrace Loader(cache=False)", kind="headrace", ops=n_calls)
    async def hr_loader(n: int) -> None:
        loader = Loader(bulk, cache=False)
        for _ in range(n):
            await asyncio.gather(*(loader.load(k) for k in keys))

    @BENCH.case(group, "concresce 1.0.0", kind="peer", ops=n_calls, requires=("concresce",))
    async def concresce_case(n: int) -> None:
        import concresce

        async def body(k: int) -> Any:
            ids = await concresce.collect(k)
            return [i * 10 for i in ids]

        get: Any = concresce.batch(body)

        for _ in range(n):
            await asyncio.gather(*(get(k) for k in keys))

    @BENCH.case(
        group, "aiodataloader (cache=False)", kind="peer", ops=n_calls, requires=("aiodataloader",)
    )
    async def aiodataloader_case(n: int) -> None:
        from aiodataloader import DataLoader

        loader: Any = DataLoader(bulk, cache=False)

        async def get(k: int) -> Any:  # a call is a coroutine, as for every other case
            return await loader.load(k)

        for _ in range(n):
            await asyncio.gather(*(get(k) for k in keys))

    @BENCH.case(
        group,
        "strawberry DataLoader (cache=False)",
        kind="peer",
        ops=n_calls,
        requires=("strawberry",),
    )
    async def strawberry_case(n: int) -> None:
        from strawberry.dataloader import DataLoader

        loader: Any = DataLoader(load_fn=bulk, cache=False)

        async def get(k: int) -> Any:
            return await loader.load(k)

        for _ in range(n):
            await asyncio.gather(*(get(k) for k in keys))


for _n in SIZES:
    _register(_n)


@batch(max_size=100, max_wait=1.0)
async def burst_get(k: int) -> list[int]:
    ids = await collect(k)
    return [i * 10 for i in ids]


@BENCH.case("burst N=100", "raw asyncio.gather", kind="raw", ops=100)
async def burst_raw(n: int) -> None:
    for _ in range(n):
        await asyncio.gather(*(single(k) for k in range(100)))


@BENCH.case("burst N=100", "headrace @batch zero-config", kind="floor", ops=100)
async def burst_zero(n: int) -> None:
    for _ in range(n):
        await asyncio.gather(*(headrace_get(k) for k in range(100)))


@BENCH.case("burst N=100", "headrace @batch(max_size=100, max_wait=1)", kind="headrace", ops=100)
async def burst_sized(n: int) -> None:
    for _ in range(n):
        await asyncio.gather(*(burst_get(k) for k in range(100)))


HITS = range(100)


@BENCH.case("cache hit x100", "raw asyncio.gather", kind="raw", ops=100)
async def hit_raw(n: int) -> None:
    for _ in range(n):
        await asyncio.gather(*(single(k) for k in HITS))


@BENCH.case("cache hit x100", "headrace Loader.load (hit)", kind="headrace", ops=100)
async def hit_headrace(n: int) -> None:
    loader = Loader(bulk)
    await loader.load_many(HITS)
    for _ in range(n):
        for k in HITS:
            await loader.load(k)


@BENCH.case(
    "cache hit x100", "aiodataloader load (hit)", kind="peer", ops=100, requires=("aiodataloader",)
)
async def hit_aiodataloader(n: int) -> None:
    from aiodataloader import DataLoader

    loader: Any = DataLoader(bulk)
    await loader.load_many(list(HITS))
    for _ in range(n):
        for k in HITS:
            await loader.load(k)


@BENCH.case(
    "cache hit x100", "strawberry load (hit)", kind="peer", ops=100, requires=("strawberry",)
)
async def hit_strawberry(n: int) -> None:
    from strawberry.dataloader import DataLoader

    loader: Any = DataLoader(load_fn=bulk)
    await loader.load_many(list(HITS))
    for _ in range(n):
        for k in HITS:
            await loader.load(k)


if __name__ == "__main__":
    BENCH.main()
