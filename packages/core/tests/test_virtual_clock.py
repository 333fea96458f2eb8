import asyncio
import socket
import threading
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from headrace_core import ConfigurationError
from headrace_core.testing import VirtualClock


async def test_sleeps_complete_in_deadline_order_without_real_waiting() -> None:
    order: list[float] = []
    real_start = time.perf_counter()
    with VirtualClock() as clock:
        start = clock.now()

        async def sleeper(delay: float) -> None:
            await asyncio.sleep(delay)
            order.append(delay)
            assert clock.now() - start == pytest.approx(delay)

        await asyncio.gather(*(sleeper(d) for d in (3600, 5, 86400 * 3, 0.25, 60)))
        assert clock.now() - start == pytest.approx(86400 * 3)
    assert order == [0.25, 5, 60, 3600, 86400 * 3]
    assert time.perf_counter() - real_start < 2


@settings(max_examples=40, deadline=None)
# Delays on a millisecond grid: asyncio itself runs timers closer than its clock
# resolution in one iteration, in no particular order.
@given(delays=st.lists(st.integers(0, 10**9).map(lambda ms: ms / 1000), min_size=1, max_size=30))
def test_property_timers_fire_in_deadline_order_and_time_never_goes_back(
    delays: list[float],
) -> None:
    async def main() -> None:
        fired: list[tuple[float, float]] = []
        seen: list[float] = []
        loop = asyncio.get_running_loop()
        with VirtualClock() as clock:
            start = clock.now()
            done = asyncio.Event()
            remaining = [len(delays)]

            def fire(delay: float) -> None:
                fired.append((delay, clock.now() - start))
                seen.append(loop.time())
                remaining[0] -= 1
                if not remaining[0]:
                    done.set()

            for d in delays:
                loop.call_later(d, fire, d)
            await done.wait()
        assert [d for d, _ in fired] == sorted(delays)
        for delay, at in fired:
            assert at == pytest.approx(delay, abs=1e-6)
        assert seen == sorted(seen)

    asyncio.run(main())


async def test_nested_timeouts_expire_at_their_virtual_instants() -> None:
    expired: list[tuple[str, float]] = []
    with VirtualClock(start=0.0) as clock:
        start = clock.now()
        try:
            async with asyncio.timeout(30):
                try:
                    async with asyncio.timeout(10):
                        await asyncio.sleep(1000)
                except TimeoutError:
                    expired.append(("inner", clock.now() - start))
                await asyncio.sleep(1000)
        except TimeoutError:
            expired.append(("outer", clock.now() - start))
    assert expired == [("inner", 10.0), ("outer", 30.0)]


@settings(max_examples=30, deadline=None)
@given(
    outer=st.integers(1, 10_000).map(lambda ms: ms / 100),
    inner=st.integers(1, 10_000).map(lambda ms: ms / 100),
)
def test_property_nested_timeouts(outer: float, inner: float) -> None:
    assume(outer != inner)

    async def main() -> None:
        with VirtualClock() as clock:
            start = clock.now()
            outer_cm = asyncio.timeout(outer)
            inner_cm = asyncio.timeout(inner)
            with pytest.raises(TimeoutError):
                await run_nested(outer_cm, inner_cm)
            assert clock.now() - start == pytest.approx(min(inner, outer))
            assert inner_cm.expired() == (inner < outer)
            assert outer_cm.expired() == (outer < inner)

    asyncio.run(main())


async def run_nested(outer_cm: asyncio.Timeout, inner_cm: asyncio.Timeout) -> None:
    async with outer_cm, inner_cm:
        await asyncio.sleep(10**6)


async def test_wait_for_and_call_at_see_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    with VirtualClock() as clock:
        start = clock.now()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 7)
        assert clock.now() - start == pytest.approx(7)
        fut: asyncio.Future[float] = loop.create_future()
        loop.call_at(clock.now() + 50, lambda: fut.set_result(clock.now()))
        assert await fut - start == pytest.approx(57)


async def test_cancellation_of_a_sleeping_task() -> None:
    with VirtualClock() as clock:
        start = clock.now()
        task = asyncio.create_task(asyncio.sleep(500))
        await asyncio.sleep(10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.now() - start == pytest.approx(10)
        # The cancelled timer is not waited for.
        await asyncio.sleep(1)
        assert clock.now() - start == pytest.approx(11)


async def test_advance_runs_due_timers_in_order_and_ends_exactly_later() -> None:
    with VirtualClock(autojump=False) as clock:
        start = clock.now()
        fired: list[float] = []
        loop = asyncio.get_running_loop()
        for d in (5, 1, 3, 12):
            loop.call_later(d, fired.append, d)
        await clock.advance(4)
        assert fired == [1, 3]
        assert clock.now() == start + 4
        await clock.advance(0)
        assert fired == [1, 3]
        await clock.advance(8)
        assert fired == [1, 3, 5, 12]
        assert clock.now() == start + 12


async def test_without_autojump_time_only_moves_through_advance() -> None:
    with VirtualClock(autojump=False) as clock:
        start = clock.now()
        task = asyncio.create_task(asyncio.sleep(10))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        assert clock.now() == start
        await clock.advance(10)
        await task
        assert clock.now() == start + 10


async def test_advance_with_autojump_and_concurrent_sleepers() -> None:
    with VirtualClock() as clock:
        start = clock.now()
        woke: list[float] = []

        async def sleeper() -> None:
            await asyncio.sleep(2)
            woke.append(clock.now() - start)

        task = asyncio.create_task(sleeper())
        await clock.advance(5)
        assert woke == [pytest.approx(2)]
        assert clock.now() == start + 5
        await task


async def test_advance_rejects_bad_arguments() -> None:
    with VirtualClock() as clock:
        with pytest.raises(ValueError, match="seconds"):
            await clock.advance(-1)
        with pytest.raises(ValueError, match="seconds"):
            await clock.advance(float("inf"))


async def test_real_io_still_works_under_virtual_time() -> None:
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    client_sock.setblocking(False)
    loop = asyncio.get_running_loop()

    def send_later(data: bytes) -> None:
        time.sleep(0.05)
        client_sock.send(data)

    try:
        # While a socket is registered, the loop waits autojump_threshold real seconds
        # for I/O before it jumps: data arriving sooner wins over a far timer.
        with VirtualClock(autojump_threshold=5) as clock:
            start = clock.now()
            thread = threading.Thread(target=send_later, args=(b"hello",))
            thread.start()
            reader = asyncio.ensure_future(loop.sock_recv(server_sock, 5))
            sleeper = asyncio.ensure_future(asyncio.sleep(3600))
            assert await reader == b"hello"
            thread.join()
            assert not sleeper.done()
            sleeper.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sleeper
            assert clock.now() - start < 1
        # With a short threshold, idle virtual time passes while the socket waits,
        # and the real data still arrives.
        with VirtualClock(autojump_threshold=0.001) as clock:
            start = clock.now()
            thread = threading.Thread(target=send_later, args=(b"world",))
            thread.start()
            reader = asyncio.ensure_future(loop.sock_recv(server_sock, 5))
            await asyncio.sleep(3600)
            assert clock.now() - start == pytest.approx(3600)
            assert await reader == b"world"
            thread.join()
    finally:
        server_sock.close()
        client_sock.close()


async def test_exit_restores_the_loop_and_keeps_remaining_delays() -> None:
    loop = asyncio.get_running_loop()
    original = loop.time
    with VirtualClock(start=1000.0) as clock:
        assert loop.time() == 1000.0
        fired: list[float] = []
        loop.call_later(5, lambda: fired.append(loop.time()))
        await clock.advance(10)
        assert fired == [1005.0]
        assert loop.time() == 1010.0
    assert "time" not in vars(loop)
    assert abs(loop.time() - original()) < 1


async def test_pending_timer_keeps_remaining_delay_across_exit() -> None:
    loop = asyncio.get_running_loop()
    with VirtualClock(start=0.0):
        handle = loop.call_later(0.02, lambda: None)
    remaining = handle.when() - loop.time()
    assert 0 < remaining <= 0.02
    await asyncio.sleep(0.03)


def test_outside_a_running_loop_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError), VirtualClock():
        pass


async def test_one_clock_per_loop_and_not_reentrant() -> None:
    with VirtualClock() as clock:
        with pytest.raises(RuntimeError, match="already active"), VirtualClock():
            pass
        with pytest.raises(RuntimeError, match="already active"), clock:
            pass
        assert clock.active
    assert not clock.active


def test_bad_configuration_names_the_argument() -> None:
    with pytest.raises(ConfigurationError, match="autojump_threshold"):
        VirtualClock(autojump_threshold=-1)
    with pytest.raises(ConfigurationError, match="start"):
        VirtualClock(start=float("nan"))


async def test_threads_do_not_hold_virtual_time_back() -> None:
    with VirtualClock() as clock:
        start = clock.now()
        release = threading.Event()
        thread_job = asyncio.ensure_future(asyncio.to_thread(release.wait, 5))
        await asyncio.sleep(100)
        assert clock.now() - start == pytest.approx(100)
        release.set()
        assert await thread_job is True


async def test_fixture_gives_an_active_clock(virtual_clock: VirtualClock) -> None:
    start = virtual_clock.now()
    await asyncio.sleep(42)
    assert virtual_clock.active
    assert virtual_clock.now() - start == pytest.approx(42)


@pytest.mark.parametrize("repeat", range(5))
async def test_default_start_is_zero_in_every_run(repeat: int) -> None:
    # The same start whatever the machine's uptime, so a test cannot pass or fail with it.
    loop = asyncio.get_running_loop()
    timer = loop.call_later(5, lambda: None)
    with VirtualClock() as clock:
        start = clock.now()
        assert start == 0.0
        assert timer.when() == pytest.approx(
            5.0, abs=0.01
        )  # pending timers keep their remaining delay
        timer.cancel()
        for delay in (1, 2, 4, 0.5, 0.25):
            await asyncio.sleep(delay)
        assert clock.now() - start == 7.75


async def test_the_loops_executor_work_holds_virtual_time_back() -> None:
    # Name resolution (getaddrinfo) runs in the loop's executor with no socket registered:
    # it must hold virtual time back like a socket, or a caller's deadline fires at once.
    loop = asyncio.get_running_loop()

    def slow_lookup() -> str:
        time.sleep(0.02)
        return "resolved"

    with VirtualClock() as clock:
        async with asyncio.timeout(1.0):
            assert await loop.run_in_executor(None, slow_lookup) == "resolved"
            infos = await loop.getaddrinfo("localhost", 80)
        assert infos
        assert clock.now() < 1.0


async def test_to_thread_work_does_not_hold_virtual_time_back() -> None:
    # A test's own thread runs beside virtual time: the timer fires while it works.
    release = threading.Event()

    def blocked() -> str:
        release.wait(5)
        return "done"

    with VirtualClock() as clock:
        worker = asyncio.ensure_future(asyncio.to_thread(blocked))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3600):
                await asyncio.shield(worker)
        assert clock.now() == 3600
        release.set()
        assert await worker == "done"


async def test_open_connection_by_host_name_works_under_virtual_time() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with VirtualClock():
            async with asyncio.timeout(0.5):
                reader, writer = await asyncio.open_connection("localhost", port)
                writer.write(b"ping\n")
                assert await reader.readline() == b"ping\n"
                writer.close()
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_an_idle_listening_server_does_not_hold_time_back() -> None:
    # An hour of 1 s ticks: waiting autojump_threshold per jump would take 180 real seconds.
    server = await asyncio.start_server(_echo_line, "127.0.0.1", 0)
    try:
        with VirtualClock() as clock:
            real_start = time.perf_counter()
            for _ in range(3600):
                await asyncio.sleep(1)
            assert time.perf_counter() - real_start < 2
            assert clock.now() == 3600
    finally:
        server.close()
        await server.wait_closed()


async def test_a_request_to_an_in_process_server_completes_under_virtual_time() -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        await asyncio.sleep(2)  # the server's own (virtual) latency
        writer.write(line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(slow_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with VirtualClock() as clock:
            real_start = time.perf_counter()
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"ping\n")
                await writer.drain()
                assert await reader.readline() == b"ping\n"
                writer.close()
                await writer.wait_closed()
            assert clock.now() == pytest.approx(2)
            assert time.perf_counter() - real_start < 2
            # Once the connections are gone, the idle server costs no real time.
            real_start = time.perf_counter()
            await asyncio.sleep(3600)
            assert time.perf_counter() - real_start < 2
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connection_waiting_in_the_backlog_holds_time_back() -> None:
    # The client is a plain blocking socket the loop knows nothing of: only the pending
    # connection on the listening socket tells the loop that work is in flight.
    accepted = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with VirtualClock() as clock:
            with socket.create_connection(("127.0.0.1", port)):
                async with asyncio.timeout(60):
                    await accepted.wait()
            assert clock.now() == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_an_accepted_connection_holds_time_back_beside_a_listening_socket() -> None:
    # The peer (another thread here, another process in real life) answers after 0.05 real
    # seconds: the accepted connection makes the loop wait for it before time jumps.
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.readline())
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))

    def send_later() -> None:
        time.sleep(0.05)
        client.sendall(b"late\n")

    thread = threading.Thread(target=send_later)
    try:
        with VirtualClock(autojump_threshold=5) as clock:
            thread.start()
            async with asyncio.timeout(3600):
                assert await received == b"late\n"
            assert clock.now() < 1
    finally:
        thread.join()
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_listening_socket_of_ones_own_holds_time_back_only_with_a_connection() -> None:
    # Not only asyncio's servers: any listening socket registered with the loop.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    try:
        with VirtualClock(autojump_threshold=5) as clock:
            real_start = time.perf_counter()
            await asyncio.sleep(3600)
            assert time.perf_counter() - real_start < 2
            assert not accept.done()
            with socket.create_connection(listener.getsockname()):
                async with asyncio.timeout(60):
                    conn, _ = await accept
                conn.close()
            assert clock.now() == 3600
    finally:
        accept.cancel()
        listener.close()


async def _echo_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
