"""User callbacks that call back into their own flow: closing or stopping it from inside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from headrace_core.testing import VirtualClock
from headrace_flow import Flow, TransformerError, flow


async def test_an_async_listener_that_stops_the_run_does_not_wait_for_itself() -> None:
    with VirtualClock():
        loop = asyncio.get_running_loop()

        async def work(x: int) -> int:
            if x == 3:
                raise ValueError("boom")
            await asyncio.sleep(0.001)
            return x

        async def keep_going(event: object) -> None:
            return None

        f = flow(work, on_error=keep_going)
        stopped: list[float] = []

        async def listener(event: object) -> None:
            if isinstance(event, TransformerError):
                await f.stop()
                stopped.append(loop.time())

        f.add_listener(listener)

        async def endless() -> AsyncIterator[int]:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.001)

        start = loop.time()
        stats = await asyncio.wait_for(f.run(endless()), 60)
        # the run's teardown awaits its async listeners (within 5 s): not the one
        # stopping it, which would have held the run for those 5 s, then been cancelled
        assert loop.time() - start < 1.0
        assert len(stopped) == 1
        assert stats.failed == 1


async def test_an_error_handler_that_closes_a_started_flow_does_not_deadlock() -> None:
    with VirtualClock():
        f: Flow[int, int] = Flow()

        async def produce() -> AsyncIterator[int]:
            for i in range(5):
                yield i

        async def work(x: int) -> int:
            if x == 1:
                raise ValueError("boom")
            return x

        async def sink(x: int) -> None:
            return None

        closed: list[bool] = []

        async def handler(item: object, exc: BaseException) -> None:
            await f.aclose()  # "shut down on the first error", from inside the run
            closed.append(True)

        f.set_producer(produce)
        f.add_transformer(work)
        f.set_consumer(sink)
        f.set_error_handler(handler)
        await f.start()
        waiting = asyncio.ensure_future(f.wait())
        for _ in range(200):  # bounded: a regression fails here instead of hanging
            if waiting.done():
                break
            await asyncio.sleep(0)
        done = waiting.done()
        waiting.cancel()
        results = await asyncio.gather(waiting, return_exceptions=True)
        assert done, "wait() deadlocked on the handler's aclose()"
        assert closed == [True]
        stats = results[0]
        assert not isinstance(stats, BaseException)
        assert stats.failed == 1
        await f.aclose()
