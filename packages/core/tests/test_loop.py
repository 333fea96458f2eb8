import asyncio
import gc
import math
import sys
import threading

import pytest

from headrace_core.lowlevel import TIME_TOLERANCE, LoopBinding, PerLoop, future_maker, within


def test_per_loop_state_is_fresh_in_each_asyncio_run() -> None:
    registry: PerLoop[list[int]] = PerLoop(list)

    async def use(value: int) -> list[int]:
        state = registry.get()
        state.append(value)
        assert registry.get() is state
        return list(state)

    assert asyncio.run(use(1)) == [1]
    assert asyncio.run(use(2)) == [2]
    gc.collect()
    assert len(registry) == 0


async def test_per_loop_peek_and_clear() -> None:
    registry: PerLoop[dict[str, int]] = PerLoop(dict)
    assert registry.peek() is None
    registry.get()["a"] = 1
    assert registry.peek() == {"a": 1}
    assert [state for _, state in registry.items()] == [{"a": 1}]
    registry.clear()
    assert registry.peek() is None
    assert registry.get() == {}


def test_per_loop_get_outside_loop_raises() -> None:
    with pytest.raises(RuntimeError):
        PerLoop(list).get()
    assert PerLoop(list).peek() is None


def test_loop_binding_rebinds_across_successive_runs() -> None:
    binding = LoopBinding("bulkhead 'db'")

    async def check() -> bool:
        loop, rebound = binding.check()
        assert loop is asyncio.get_running_loop()
        assert binding.check() == (loop, False)
        return rebound

    assert asyncio.run(check()) is True
    assert asyncio.run(check()) is True


def test_loop_binding_refuses_a_second_running_loop_in_another_thread() -> None:
    binding = LoopBinding("breaker 'api'")
    bound = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        binding.check()
        bound.set()
        while not release.is_set():
            await asyncio.sleep(0.001)

    thread = threading.Thread(target=asyncio.run, args=(hold(),))
    thread.start()
    try:
        assert bound.wait(5)

        async def other() -> None:
            with pytest.raises(RuntimeError, match=r"breaker 'api'.*another thread"):
                binding.check()

        asyncio.run(other())
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize("magnitude", [0.0, 5e3, 8.64e4, 1e6, 1e8])
def test_within_forgives_rounding_at_every_clock_magnitude(magnitude: float) -> None:
    # A wait computed from loop times at this magnitude, meeting a bound it equals exactly.
    deadline = magnitude + 0.3
    wait = deadline - magnitude
    assert within(wait, 0.3)
    assert within(0.3 + TIME_TOLERANCE / 2, 0.3)
    assert not within(0.3 + 1e-6, 0.3)
    assert within(1e300, math.inf)
    assert not within(math.inf, 1.0)


def test_per_loop_state_is_never_mixed_between_threads() -> None:
    # Two threads, each running its own loop, hammer one PerLoop: each must always get
    # the value created for its own loop.
    state: PerLoop[list[int]] = PerLoop(list)
    errors: list[str] = []

    def worker(n: int) -> None:
        async def main() -> None:
            mine = state.get()
            mine.append(n)
            for _ in range(100_000):
                if state.get() is not mine:
                    errors.append(f"thread {n} saw another loop's state")
                    return

        asyncio.run(main())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_future_maker_skips_the_frame_on_stock_loops_and_keeps_an_override() -> None:
    made: list[asyncio.Future[object]] = []

    class Loop(asyncio.SelectorEventLoop):
        def create_future(self) -> asyncio.Future[object]:
            fut: asyncio.Future[object] = super().create_future()
            made.append(fut)
            return fut

    stock = asyncio.new_event_loop()
    own = Loop()
    try:
        fut = future_maker(stock)()
        assert type(fut) is asyncio.Future
        assert fut.get_loop() is stock
        assert not fut.done()
        assert future_maker(own)() is made[0]  # the loop's own create_future made it
        assert made[0].get_loop() is own
    finally:
        stock.close()
        own.close()
