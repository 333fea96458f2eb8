"""ProcessorError, PhaseTimeout, GraphError/CycleError and flatten_exceptions."""

from __future__ import annotations

import pickle

import pytest

from headrace_core import ConfigurationError, GuardTimeout, HeadraceError
from headrace_leveled import (
    CycleError,
    GraphError,
    Phase,
    PhaseTimeout,
    ProcessorError,
    RetryableError,
    SdaxExecutionError,
    TaskFailure,
    flatten_exceptions,
)


def make_error() -> ProcessorError:
    a, b, c = KeyError("a"), ValueError("b"), OSError("c")
    failures = [
        TaskFailure("A", Phase.PRE_EXECUTE, a),
        TaskFailure("B", Phase.EXECUTE, b),
        TaskFailure("A", Phase.POST_EXECUTE, c),
    ]
    return ProcessorError("3 failed", [a, b, c], failures)


def test_hierarchy() -> None:
    assert issubclass(ProcessorError, ExceptionGroup)
    assert issubclass(ProcessorError, HeadraceError)
    assert SdaxExecutionError is ProcessorError
    assert issubclass(PhaseTimeout, GuardTimeout)
    assert issubclass(PhaseTimeout, TimeoutError)
    assert issubclass(CycleError, GraphError)
    assert issubclass(GraphError, ConfigurationError)
    assert issubclass(GraphError, ValueError)
    assert issubclass(RetryableError, HeadraceError)


def test_split_keeps_type_failures_and_report() -> None:
    err = make_error()
    match, rest = err.split(KeyError)
    assert isinstance(match, ProcessorError)
    assert isinstance(rest, ProcessorError)
    assert [f.task for f in match.failures] == ["A"]
    assert [type(e) for e in rest.exceptions] == [ValueError, OSError]
    assert [f.phase for f in rest.failures] == [Phase.EXECUTE, Phase.POST_EXECUTE]


def test_except_star_on_processor_error() -> None:
    seen: list[str] = []
    try:
        try:
            raise make_error()
        except* KeyError as group:
            seen.append(f"key:{len(group.exceptions)}")
        except* ValueError as group:
            seen.append(f"value:{len(group.exceptions)}")
    except ProcessorError as rest:
        seen.append(f"rest:{[type(e).__name__ for e in rest.exceptions]}")
    assert seen == ["key:1", "value:1", "rest:['OSError']"]


def test_leaf_helpers() -> None:
    err = make_error()
    assert err.leaf_exceptions() == list(err.exceptions)
    assert err.flatten_exceptions() == list(err.exceptions)
    nested = ExceptionGroup("x", [KeyError(1), ExceptionGroup("y", [ValueError(2), OSError(3)])])
    assert [type(e) for e in flatten_exceptions(nested)] == [KeyError, ValueError, OSError]
    single = KeyError("s")
    assert flatten_exceptions(single) == [single]


def test_phase_timeout_message_and_fields() -> None:
    err = PhaseTimeout(task="A", phase=Phase.PRE_EXECUTE, timeout=2)
    assert str(err) == "task 'A' pre_execute timed out after 2s"
    assert err.task == "A"
    assert err.timeout == 2
    assert err.phase is Phase.PRE_EXECUTE
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err)
    assert clone.task == "A"


def test_cycle_error_fields() -> None:
    err = CycleError([1, 2, 1])
    assert err.path == (1, 2, 1)
    assert "1 -> 2 -> 1" in str(err)


def test_task_failure_str() -> None:
    failure = TaskFailure("A", Phase.EXECUTE, KeyError("k"))
    assert str(failure) == "task 'A' execute: KeyError('k')"
    with pytest.raises(AttributeError):
        failure.task = "B"  # type: ignore[misc]


def test_phase_aliases_for_sdax() -> None:
    assert Phase["PRE_EXEC"] is Phase.PRE_EXECUTE
    assert Phase["POST_EXEC"] is Phase.POST_EXECUTE
    assert Phase("execute") is Phase.EXECUTE
    assert str(Phase.EXECUTE) == "execute"
    assert [p.value for p in Phase] == ["pre_execute", "execute", "post_execute"]
