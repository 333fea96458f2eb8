import math
import pickle

import pytest

import headrace_core
from headrace_core import (
    BulkheadFull,
    CapacityExceeded,
    CircuitOpenError,
    CircuitState,
    Closed,
    ConfigurationError,
    GuardTimeout,
    HeadraceError,
    RateLimited,
    Rejected,
)
from headrace_core.lowlevel import check_callable, check_name, check_number, safe_repr


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ConfigurationError, (HeadraceError, ValueError)),
        (Rejected, (HeadraceError,)),
        (CircuitOpenError, (Rejected,)),
        (BulkheadFull, (Rejected,)),
        (RateLimited, (Rejected,)),
        (Closed, (HeadraceError,)),
        (CapacityExceeded, (HeadraceError, ValueError)),
        (GuardTimeout, (HeadraceError, TimeoutError)),
    ],
)
def test_hierarchy(cls: type[BaseException], bases: tuple[type[BaseException], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)
    assert issubclass(cls, HeadraceError)
    assert cls.__module__ == "headrace_core"


def test_configuration_error_message_names_argument_and_value() -> None:
    error = ConfigurationError.argument_error("limit", 0, "must be an int >= 1")
    assert str(error) == "limit=0: must be an int >= 1"
    assert error.argument == "limit"
    assert error.value == 0
    named = ConfigurationError.argument_error("limit", 3, "conflicts", component="db")
    assert str(named) == "db: limit=3: conflicts"
    assert named.component == "db"


def test_rejected_carries_retry_after_and_name() -> None:
    error = Rejected(retry_after=1.5, name="api")
    assert error.retry_after == 1.5
    assert error.name == "api"
    assert "api" in str(error)
    assert Rejected().retry_after is None


def test_circuit_open_error() -> None:
    error = CircuitOpenError(retry_after=-3, name="svc")
    assert error.retry_after == 0.0
    assert error.state is CircuitState.OPEN
    forced = CircuitOpenError(retry_after=math.inf, name="svc")
    assert "forced" in str(forced)
    half = CircuitOpenError(state=CircuitState.HALF_OPEN)
    assert half.state is CircuitState.HALF_OPEN
    assert "half_open" in str(half)


def test_rate_limited_and_bulkhead_full_messages() -> None:
    assert RateLimited(retry_after=0.25, name="r").retry_after == 0.25
    assert "0.250" in str(RateLimited(retry_after=0.25))
    assert BulkheadFull(name="db").retry_after is None
    assert "db" in str(BulkheadFull(name="db"))
    assert str(BulkheadFull("custom")) == "custom"


def test_guard_timeout_and_capacity_exceeded() -> None:
    error = GuardTimeout(timeout=2.5, name="t")
    assert error.timeout == 2.5
    assert "2.5" in str(error)
    assert isinstance(error, TimeoutError)
    cap = CapacityExceeded(requested=10, capacity=5, name="budget")
    assert cap.requested == 10
    assert cap.capacity == 5
    assert "10" in str(cap)
    assert "5" in str(cap)


@pytest.mark.parametrize(
    "error",
    [
        Rejected(retry_after=1.0, name="a"),
        CircuitOpenError(retry_after=2.0, name="b", state=CircuitState.HALF_OPEN),
        BulkheadFull(name="c"),
        RateLimited(retry_after=3.0, name="d"),
        GuardTimeout(timeout=4.0, name="e"),
        CapacityExceeded(requested=5, capacity=1, name="f"),
    ],
)
def test_errors_pickle_with_their_attributes(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_circuit_state_members() -> None:
    assert [s.name for s in CircuitState] == ["CLOSED", "OPEN", "HALF_OPEN"]
    assert str(CircuitState.OPEN) == "open"


def test_version_is_exposed() -> None:
    assert isinstance(headrace_core.__version__, str)


def test_is_async_callable() -> None:
    import functools

    from headrace_core.lowlevel import is_async_callable

    async def coro(x: int) -> int:
        return x

    def sync(x: int) -> int:
        return x

    class AsyncCall:
        async def __call__(self) -> None:
            pass

    class SyncCall:
        def __call__(self) -> None:
            pass

    assert is_async_callable(coro)
    assert is_async_callable(functools.partial(coro, 1))
    assert is_async_callable(AsyncCall())
    assert not is_async_callable(AsyncCall)
    assert not is_async_callable(sync)
    assert not is_async_callable(functools.partial(sync, 1))
    assert not is_async_callable(SyncCall())
    assert not is_async_callable(lambda: coro(1))
    assert not is_async_callable(42)


def test_safe_repr_never_lets_a_users_repr_replace_the_error() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("repr")

    assert safe_repr(Hostile()).endswith("Hostile object (repr failed)>")
    assert safe_repr("x" * 500, limit=10) == "'xxxxxx..."
    with pytest.raises(
        ConfigurationError, match=r"^limit=<.*Hostile object \(repr failed\)>: must"
    ):
        check_number("limit", Hostile())


def test_check_callable_and_check_name_name_the_argument_and_the_value() -> None:
    assert check_callable("key", None) is None
    assert check_callable("key", len) is len
    with pytest.raises(ConfigurationError, match=r"^key=42: must be a callable or None$"):
        check_callable("key", 42)
    assert check_name(None) is None
    assert check_name("api") == "api"
    for bad in ("", 42, b"api"):
        with pytest.raises(ConfigurationError, match=r"^stage=.*: must be a non-empty str or None"):
            check_name(bad, "stage")
