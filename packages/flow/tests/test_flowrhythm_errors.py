"""flowrhythm's configuration errors are TypeErrors; headrace's are ConfigurationErrors.

Where flowrhythm raises TypeError, flow raises ConfigurationTypeError, which is both, so
either ``except`` works.
"""

from __future__ import annotations

import pytest

from headrace_core import ConfigurationError, ConfigurationTypeError
from headrace_flow import FixedScaling, UtilizationScaling, batched, flow, router, stage


async def two(a: int, b: int) -> int:
    return a + b


async def none() -> int:
    return 1


async def one(x: int) -> int:
    return x


async def label(x: int) -> str:
    return "a"


@pytest.mark.parametrize(("target", "count"), [(two, 2), (none, 0)])
def test_wrong_arity_is_rejected_at_flow_as_both_errors(target: object, count: int) -> None:
    for build in (lambda: flow(target), lambda: stage(target)):
        with pytest.raises(TypeError, match=r"must take 0 args .* or 1 arg") as info:
            build()
        assert isinstance(info.value, ConfigurationError)
        assert f"got {count}" in str(info.value)


def test_wrong_arity_of_a_router_arm_is_rejected() -> None:
    with pytest.raises(ConfigurationTypeError, match="router arm 'a'"):
        router(label, a=two)


def test_an_async_generator_of_two_args_is_rejected() -> None:
    async def gen(a: int, b: int):  # type: ignore[no-untyped-def]
        yield a

    with pytest.raises(ConfigurationTypeError, match="got 2"):
        flow(gen)


def test_one_argument_with_defaults_and_varargs_are_accepted() -> None:
    async def defaults(x: int, y: int = 0) -> int:
        return x

    async def varargs(*items: int) -> int:
        return 0

    flow(one, defaults, varargs)  # no error


@pytest.mark.parametrize(
    "build",
    [
        lambda: stage(one, name=""),
        lambda: router(label, a=one, name=""),
        lambda: batched(2, name=""),
    ],
)
def test_an_empty_name_is_a_type_error_too(build: object) -> None:
    with pytest.raises(TypeError, match="non-empty str") as info:
        build()  # type: ignore[operator]
    assert isinstance(info.value, ConfigurationError)


def test_fixed_scaling_zero_points_to_scale_to_zero() -> None:
    with pytest.raises(ConfigurationError, match=r"workers=0: must be an int >= 1") as info:
        FixedScaling(workers=0)
    assert "UtilizationScaling(min_workers=0)" in str(info.value)
    assert UtilizationScaling(min_workers=0).min_workers == 0
