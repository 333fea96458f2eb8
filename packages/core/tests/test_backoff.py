import itertools
import math
import random
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace_core import BackoffError, ConfigurationError
from headrace_core.backoff import (
    Backoff,
    decorrelated_jitter,
    exponential,
    fixed,
    full_jitter,
    next_delay,
)


def take(schedule: Backoff, n: int, rng: random.Random | None = None) -> list[float]:
    return list(itertools.islice(schedule.delays(rng), n))


def test_fixed() -> None:
    assert take(fixed(0.5), 4) == [0.5, 0.5, 0.5, 0.5]
    assert take(fixed(0), 2) == [0.0, 0.0]


def test_exponential_is_capped() -> None:
    assert take(exponential(base=0.1, factor=2, max=1.0), 6) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert take(exponential(base=0, factor=2, max=1), 3) == [0, 0, 0]


def test_exponential_with_jitter_scales_each_delay() -> None:
    rng = random.Random(7)
    delays = take(exponential(base=1, factor=2, max=100, jitter=0.5), 6, rng)
    for n, delay in enumerate(delays):
        assert 0.5 * 2**n <= delay <= 2**n


def test_full_jitter_bounds_and_seeded_determinism() -> None:
    schedule = full_jitter(base=0.1, factor=2, max=5)
    a = take(schedule, 20, random.Random(1))
    b = take(schedule, 20, random.Random(1))
    assert a == b
    for n, delay in enumerate(a):
        assert 0 <= delay <= min(5, 0.1 * 2**n)


def test_decorrelated_jitter_bounds() -> None:
    schedule = decorrelated_jitter(base=0.5, max=10)
    previous = 0.5
    for delay in take(schedule, 50, random.Random(3)):
        assert 0.5 <= delay <= min(10, previous * 3)
        previous = delay


def test_each_call_gives_a_fresh_iterator() -> None:
    schedule = exponential(base=1, factor=3, max=100)
    first = schedule.delays()
    next(first)
    next(first)
    assert next(schedule.delays()) == 1


def test_schedules_are_frozen_and_satisfy_the_protocol() -> None:
    schedule = fixed(1.0)
    with pytest.raises(AttributeError):
        schedule.delay = 2.0  # type: ignore[misc]
    for s in (fixed(), exponential(), full_jitter(), decorrelated_jitter()):
        assert isinstance(s, Backoff)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: fixed(-1), "delay"),
        (lambda: fixed(math.nan), "delay"),
        (lambda: exponential(base=-0.1), "base"),
        (lambda: exponential(factor=0.5), "factor"),
        (lambda: exponential(base=2, max=1), "max"),
        (lambda: exponential(jitter=1.5), "jitter"),
        (lambda: full_jitter(base=-1), "base"),
        (lambda: full_jitter(factor=0), "factor"),
        (lambda: decorrelated_jitter(base=0), "base"),
        (lambda: decorrelated_jitter(base=1, max=0.5), "max"),
        (lambda: fixed("1"), "delay"),  # type: ignore[arg-type]
        (lambda: fixed(True), "delay"),
    ],
)
def test_validation_names_the_argument(build: object, argument: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{argument}="):
        build()  # type: ignore[operator]


@given(
    base=st.floats(0.001, 10),
    factor=st.floats(1, 5),
    cap=st.floats(10, 1000),
    seed=st.integers(0, 2**32),
)
def test_property_all_schedules_stay_within_cap(
    base: float, factor: float, cap: float, seed: int
) -> None:
    rng = random.Random(seed)
    for schedule in (
        exponential(base, factor, cap),
        exponential(base, factor, cap, jitter=0.5),
        full_jitter(base, factor, cap),
        decorrelated_jitter(base, cap),
    ):
        for delay in take(schedule, 40, rng):
            assert 0 <= delay <= cap


def test_infinite_max_is_allowed() -> None:
    assert take(exponential(base=1, factor=10, max=math.inf), 3) == [1, 10, 100]


def test_next_delay_names_the_owner_when_a_schedule_runs_out() -> None:
    error = "the old error"
    cause = ValueError(error)
    with pytest.raises(BackoffError, match=r"Retry\(backoff=\.\.\.\): .* ran out") as info:
        next_delay(iter([0.5][:0]), owner="Retry(backoff=...)", cause=cause)
    assert info.value.__cause__ is cause
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("bad", [None, "1", math.nan, -1.0, math.inf, True, 10**400])
def test_next_delay_rejects_a_value_that_is_not_a_finite_delay(bad: object) -> None:
    with pytest.raises(BackoffError, match=r"yielded .*finite number >= 0"):
        next_delay(iter([bad]))  # type: ignore[list-item]


def test_next_delay_passes_good_values_and_the_schedules_own_errors() -> None:
    assert next_delay(iter([2])) == 2.0

    class Broken:
        def __iter__(self) -> Iterator[float]:
            return self

        def __next__(self) -> float:
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        next_delay(Broken())


class _BadDraws(random.Random):
    """An rng whose ``uniform()`` returns ``value``: a user's broken rng."""

    def __init__(self, value: object) -> None:
        super().__init__(1)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value  # type: ignore[return-value]


@pytest.mark.parametrize("draw", [None, "x", math.nan, math.inf, 10**400])
@pytest.mark.parametrize(
    "schedule",
    [exponential(base=1, jitter=0.5), full_jitter(base=1), decorrelated_jitter(base=1)],
    ids=["exponential", "full_jitter", "decorrelated_jitter"],
)
def test_a_bad_draw_of_the_rng_is_a_backoff_error_chained_to_the_failure(
    schedule: exponential | full_jitter | decorrelated_jitter, draw: object
) -> None:
    cause = ValueError("the service's own error")
    with pytest.raises(BackoffError, match=r"Retry\(backoff=\.\.\.\): .*(drew|yielded)") as info:
        next_delay(schedule.delays(_BadDraws(draw)), owner="Retry(backoff=...)", cause=cause)
    assert info.value.__cause__ is cause  # the failure being retried is not lost
