"""Checked by mypy only (not collected by pytest): the public types of headrace-coalesce."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, assert_type

from headrace_coalesce import (
    BatchFunction,
    BatchRoutingError,
    CoalesceEvent,
    CoalesceStats,
    HeadraceError,
    Loader,
    MissingResult,
    batch,
    collect,
)


@batch
async def score(user_id: int) -> list[float]:
    ids = await collect(user_id)
    assert_type(ids, list[int])
    return [float(i) for i in ids]


@batch(max_size=100, max_wait=0.01, max_concurrent=4, dedupe=True)
async def name(user_id: int, *, upper: bool = False) -> dict[int, str]:
    ids = await collect(user_id)
    return {i: str(i) for i in ids}


@batch(group_by=lambda user_id, tenant: tenant, key=lambda item: item)
async def tenant_name(user_id: int, tenant: str) -> Sequence[str | None]:
    pairs = await collect((user_id, tenant))
    assert_type(pairs, list[tuple[int, str]])
    return [t for _, t in pairs]


class Repo:
    @batch
    async def get(self, user_id: int) -> list[str]:
        ids = await collect(user_id)
        return [str(i) for i in ids]


async def callers(repo: Repo) -> None:
    # the caller sees the element type, not the list
    as_declared: BatchFunction[[int], float] = score
    assert_type(as_declared.stats(), CoalesceStats)
    assert_type(await score(1), float)
    assert_type(await name(1), str)
    assert_type(await name(1, upper=True), str)
    assert_type(await tenant_name(1, "t"), str | None)
    pending: Coroutine[Any, Any, float] = score(1)
    pending.close()
    # methods: bound through the instance, self is gone from the signature
    bound: BatchFunction[[int], str] = repo.get
    assert_type(await bound(3), str)
    assert_type(await repo.get(3), str)
    unbound: BatchFunction[[Repo, int], str] = Repo.get
    assert_type(await unbound(repo, 3), str)
    wrong: BatchFunction[[str], str] = repo.get  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del wrong
    # collect() returns list[T]
    assert_type(await collect("x"), list[str])
    # ParamSpec keeps argument checking
    await score("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await score(1, 2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await name(1, upper="yes")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await repo.get("x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_type(score.stats(), CoalesceStats)
    assert_type(score.snapshot(), CoalesceStats)
    remove = score.add_listener(lambda event: print(event.kind))
    assert_type(remove, Callable[[], None])


async def load_keys(keys: list[int]) -> list[str | BaseException]:
    return [str(k) for k in keys]


async def load_map(keys: list[str]) -> dict[str, int]:
    return {k: len(k) for k in keys}


async def loaders() -> None:
    loader = Loader(load_keys, max_size=10, cache=False)
    assert_type(loader, Loader[int, str])
    assert_type(await loader.load(1), str)
    assert_type(await loader.load_many([1, 2]), list[str])
    loader.prime(1, "one")
    loader.prime(2, KeyError(2), force=True)
    loader.clear(1)
    loader.clear_all()
    assert_type(loader.stats(), CoalesceStats)
    by_map = Loader(load_map, key=lambda k: k.lower())
    assert_type(await by_map.load("a"), int)
    await loader.load("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    events: list[CoalesceEvent] = []
    loader.add_listener(events.append)


def errors() -> None:
    assert issubclass(BatchRoutingError, HeadraceError)
    assert issubclass(BatchRoutingError, TypeError)
    assert issubclass(MissingResult, KeyError)
    assert_type(MissingResult(1).key, Hashable)
