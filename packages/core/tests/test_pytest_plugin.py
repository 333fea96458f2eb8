"""The pytest plugin: the ``virtual_clock`` fixture and ``@pytest.mark.virtual_clock``."""

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
addopts = --strict-markers --strict-config -p no:cacheprovider
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def test_marker_options_reach_the_clock(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio
        import socket
        import time

        import pytest


        @pytest.mark.virtual_clock(start=1e6)
        async def test_start(virtual_clock):
            assert asyncio.get_running_loop().time() == 1e6
            await asyncio.sleep(5)
            assert virtual_clock.now() == 1e6 + 5


        @pytest.mark.virtual_clock(autojump_threshold=0)
        async def test_threshold(virtual_clock):
            # A connected socket is registered: with the default threshold every jump
            # would wait 0.05 real seconds (10 s for these 200 ticks).
            a, b = socket.socketpair()
            loop = asyncio.get_running_loop()
            loop.add_reader(a.fileno(), lambda: None)
            try:
                real = time.perf_counter()
                for _ in range(200):
                    await asyncio.sleep(1)
                assert time.perf_counter() - real < 2
                assert virtual_clock.now() == 200
            finally:
                loop.remove_reader(a.fileno())
                a.close()
                b.close()


        @pytest.mark.virtual_clock(autojump=False)
        async def test_no_autojump(virtual_clock):
            task = asyncio.ensure_future(asyncio.sleep(10))
            for _ in range(10):
                await asyncio.sleep(0)
            assert not task.done()
            await virtual_clock.advance(10)
            await task


        async def test_defaults_without_a_marker(virtual_clock):
            assert virtual_clock.now() == 0.0
            assert virtual_clock.autojump_threshold == 0.05
            assert virtual_clock.autojump
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=4)


def test_marker_alone_puts_an_async_test_on_virtual_time(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio

        import pytest


        @pytest.mark.virtual_clock(start=500)
        async def test_without_the_fixture():
            loop = asyncio.get_running_loop()
            assert loop.time() == 500
            await asyncio.sleep(3600)
            assert loop.time() == 4100
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1)


def test_closer_markers_override_farther_ones_option_by_option(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.virtual_clock(start=7, autojump_threshold=0)


        class TestGroup:
            pytestmark = pytest.mark.virtual_clock(start=8)

            @pytest.mark.virtual_clock(autojump=False)
            async def test_merged(self, virtual_clock):
                assert virtual_clock.now() == 8
                assert virtual_clock.autojump_threshold == 0
                assert not virtual_clock.autojump


        async def test_module_marker(virtual_clock):
            assert virtual_clock.now() == 7
            assert virtual_clock.autojump
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (
            "virtual_clock(autojump_treshold=0)",
            "*@pytest.mark.virtual_clock: unknown option 'autojump_treshold';"
            " VirtualClock takes autojump, autojump_threshold, start*",
        ),
        (
            "virtual_clock(autojump_threshold=-1)",
            "*@pytest.mark.virtual_clock(autojump_threshold=-1): autojump_threshold=-1*>= 0*",
        ),
        (
            "virtual_clock(0.5)",
            "*@pytest.mark.virtual_clock takes keyword options only*",
        ),
    ],
)
def test_bad_options_fail_the_setup_naming_marker_and_option(
    inner: pytest.Pytester, marker: str, expected: str
) -> None:
    inner.makepyfile(
        f"""
        import pytest


        @pytest.mark.{marker}
        async def test_it(virtual_clock):
            raise AssertionError("must not run")
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([expected])
    result.stdout.no_fnmatch_line("*must not run*")


def test_marker_on_a_sync_test_without_the_fixture_fails_clearly(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest


        @pytest.mark.virtual_clock(start=0)
        def test_sync():
            pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.virtual_clock configures the virtual_clock*"])


def test_marker_is_registered(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["@pytest.mark.virtual_clock(**options): *(autojump, autojump_threshold, start)*"]
    )
