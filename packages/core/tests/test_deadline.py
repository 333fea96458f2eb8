import asyncio
import contextlib
from collections.abc import Awaitable

import pytest

from headrace_core import GuardTimeout
from headrace_core.lowlevel import Deadline, bounded
from headrace_core.testing import VirtualClock


class OwnTimeout(GuardTimeout):
    pass


def own() -> OwnTimeout:
    return OwnTimeout(timeout=1.0)


async def test_expiry_raises_the_own_error_chained_from_the_timeout() -> None:
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(OwnTimeout) as info:
            async with Deadline(1.0, own):
                await asyncio.sleep(10)
        assert clock.now() - start == pytest.approx(1.0)
    assert type(info.value.__cause__) is TimeoutError


async def test_no_expiry_returns_normally_and_never_builds_the_error() -> None:
    built: list[int] = []

    def error() -> BaseException:
        built.append(1)
        return own()

    with VirtualClock():
        async with Deadline(5.0, error) as deadline:
            await asyncio.sleep(1)
        assert not deadline.expired()
    assert built == []


async def test_body_timeout_error_before_the_deadline_passes_unchanged() -> None:
    mine = TimeoutError("the body's own")
    with VirtualClock(), pytest.raises(TimeoutError) as info:
        async with Deadline(5.0, own):
            raise mine
    assert info.value is mine


async def swallowing() -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)  # a callee that swallows the cancellation and finishes late


async def turning_into(error: BaseException) -> None:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        raise error from None


async def under_deadline(delay: float | None, body: Awaitable[None]) -> None:
    async with Deadline(delay, own):
        await body


async def test_swallowed_cancellation_still_raises_the_own_error() -> None:
    with VirtualClock(), pytest.raises(OwnTimeout):
        await under_deadline(1.0, swallowing())


async def test_body_turning_the_cancellation_into_a_timeout_error_raises_the_own_error() -> None:
    with VirtualClock(), pytest.raises(OwnTimeout) as info:
        await under_deadline(1.0, turning_into(TimeoutError("late")))
    assert str(info.value.__cause__) == "late"


async def test_other_errors_after_expiry_pass_unchanged() -> None:
    with VirtualClock(), pytest.raises(KeyError):
        await under_deadline(1.0, turning_into(KeyError("cleanup failed")))


async def test_outer_cancellation_wins_and_is_not_turned_into_a_timeout() -> None:
    with VirtualClock():

        async def body() -> None:
            async with Deadline(10.0, own):
                await asyncio.sleep(100)

        task = asyncio.create_task(body())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_none_then_reschedule_sets_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    with VirtualClock() as clock:
        start = clock.now()
        deadline = Deadline(None, own)

        async def body() -> None:
            async with deadline:
                assert deadline.when() is None
                deadline.reschedule(loop.time() + 2)
                assert deadline.when() == pytest.approx(loop.time() + 2)
                await asyncio.sleep(100)

        with pytest.raises(OwnTimeout):
            await body()
        assert clock.now() - start == pytest.approx(2.0)
        assert deadline.expired()


async def test_at_uses_loop_time() -> None:
    loop = asyncio.get_running_loop()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(OwnTimeout):
            async with Deadline.at(loop.time() + 3, own):
                await asyncio.sleep(100)
        assert clock.now() - start == pytest.approx(3.0)


async def test_nested_deadlines_each_raise_their_own_error() -> None:
    class Inner(GuardTimeout):
        pass

    with VirtualClock():
        async with Deadline(10.0, own) as outer:
            with pytest.raises(Inner):
                async with Deadline(1.0, lambda: Inner(timeout=1.0)):
                    await asyncio.sleep(5)
            await asyncio.sleep(1)
        assert not outer.expired()

        async def inner_longer() -> None:
            async with Deadline(10.0, lambda: Inner(timeout=10.0)):
                await asyncio.sleep(5)

        with pytest.raises(OwnTimeout):
            await under_deadline(1.0, inner_longer())


async def value_after(delay: float, value: int) -> int:
    await asyncio.sleep(delay)
    return value


async def test_run_returns_the_value_in_time() -> None:
    with VirtualClock():
        assert await Deadline(5.0, own).run(value_after(1, 7)) == 7


async def test_run_raises_the_own_error_on_expiry() -> None:
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(OwnTimeout) as info:
            await Deadline(1.0, own).run(value_after(10, 7))
        assert clock.now() - start == pytest.approx(1.0)
    assert type(info.value.__cause__) is TimeoutError


async def test_run_treats_a_swallowed_cancellation_as_expiry() -> None:
    with VirtualClock(), pytest.raises(OwnTimeout):
        await Deadline(1.0, own).run(swallowing())


async def test_run_passes_the_body_timeout_error_unchanged() -> None:
    mine = TimeoutError("the body's own")

    async def raising() -> None:
        raise mine

    with VirtualClock(), pytest.raises(TimeoutError) as info:
        await Deadline(5.0, own).run(raising())
    assert info.value is mine


async def test_run_lets_an_outer_cancellation_through() -> None:
    with VirtualClock():
        task = asyncio.create_task(Deadline(10.0, own).run(value_after(100, 1)))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_bounded_uses_the_callers_scope_rescheduled_later() -> None:
    loop = asyncio.get_running_loop()
    with VirtualClock() as clock:
        start = clock.now()
        scope = asyncio.Timeout(None)
        loop.call_later(2, scope.reschedule, loop.time() + 2)  # a watcher sets the deadline
        with pytest.raises(OwnTimeout) as info:
            await bounded(scope, value_after(100, 1), own)
        assert clock.now() - start == pytest.approx(2.0)
        assert scope.expired()
    assert type(info.value.__cause__) is TimeoutError


async def test_bounded_returns_in_time_and_never_builds_the_error() -> None:
    def never() -> BaseException:
        raise AssertionError("built without expiry")

    with VirtualClock():
        assert await bounded(asyncio.timeout(5), value_after(1, 3), never) == 3
