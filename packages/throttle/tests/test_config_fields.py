"""ThrottleConfig is the one statement of defaults: everything else derives from its fields."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from headrace_throttle import (
    AIMD,
    CircuitBreakerConfig,
    ConfigurationError,
    Gradient,
    RequestBudget,
    RetryConfig,
    Throttle,
    ThrottleConfig,
    _config,
    _throttle,
)
from headrace_throttle._config import default_limit


def test_throttle_takes_exactly_the_config_fields_with_the_config_defaults() -> None:
    parameters = list(inspect.signature(Throttle).parameters.values())
    assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD  # **unsupported
    parameters = parameters[:-1]
    fields = dataclasses.fields(ThrottleConfig)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [f.default for f in fields]
    # (Resolved in the defining modules: the public classes show the package as home.)
    throttle_hints = typing.get_type_hints(Throttle.__init__, vars(_throttle))
    config_hints = typing.get_type_hints(ThrottleConfig, vars(_config))
    for field in fields:
        assert throttle_hints[field.name] == config_hints[field.name], field.name
    assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert {p.kind for p in parameters[1:]} == {inspect.Parameter.KEYWORD_ONLY}


def test_the_aimd_arguments_take_their_defaults_and_checks_from_aimd() -> None:
    aimd = inspect.signature(AIMD).parameters
    config = ThrottleConfig()
    for name, parameter in aimd.items():
        assert getattr(config, name) == parameter.default, name
    built = default_limit(ThrottleConfig(failure_threshold=7, cooling_period=2.5))
    assert (built.failure_threshold, built.cooling_period) == (7, 2.5)
    with pytest.raises(ConfigurationError, match="decrease_factor"):
        ThrottleConfig(decrease_factor=1.5)
    assert isinstance(Throttle(3).limit, AIMD)


def test_every_scalar_field_is_read_from_the_environment() -> None:
    env = {
        "X_MAX_CONCURRENCY": "9",
        "X_INITIAL_CONCURRENCY": "3",
        "X_MIN_CONCURRENCY": "2",
        "X_FAILURE_THRESHOLD": "4",
        "X_FAILURE_WINDOW": "30",
        "X_DECREASE_FACTOR": "0.25",
        "X_COOLING_PERIOD": "5",
        "X_INCREASE_BY": "2",
        "X_MIN_DISPATCH_INTERVAL": "0.1",
        "X_MAX_DISPATCH_INTERVAL": "3",
        "X_JITTER_FRACTION": "0.5",
        "X_TOTAL": "40",
        "X_PROGRESS_STEP": "20",
        "X_NAME": "svc",
    }
    config = ThrottleConfig.from_env("X", env)
    assert (config.max_concurrency, config.initial_concurrency, config.min_concurrency) == (9, 3, 2)
    assert (config.failure_threshold, config.failure_window) == (4, 30.0)
    assert (config.decrease_factor, config.cooling_period, config.increase_by) == (0.25, 5.0, 2)
    assert (config.min_dispatch_interval, config.max_dispatch_interval) == (0.1, 3.0)
    assert (config.jitter_fraction, config.total, config.progress_step) == (0.5, 40, 20.0)
    assert config.name == "svc"
    assert ThrottleConfig.from_env("X", {"X_TOTAL_TASKS": "7"}).resolved_total == 7


def test_nested_settings_follow_the_nested_classes() -> None:
    env = {
        "X_RETRY_MAX_ATTEMPTS": "4",
        "X_RETRY_BACKOFF": "fixed",
        "X_RETRY_BASE_DELAY": "0.5",
        "X_RETRY_MAX_DELAY": "9",
        "X_CIRCUIT_BREAKER_CONSECUTIVE_FAILURES": "2",
        "X_CIRCUIT_BREAKER_OPEN_DURATION": "7",
        "X_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS": "3",
        "X_REQUEST_BUDGET_MAX": "500",
        "X_REQUEST_BUDGET_WINDOW": "30",
        "X_TOKEN_BUDGET_MAX": "9000",
    }
    config = ThrottleConfig.from_env("X", env)
    assert config.retry == RetryConfig(4, "fixed", 0.5, 9.0)
    assert config.circuit_breaker == CircuitBreakerConfig(2, 7.0, 3)
    (requests,) = config.budgets
    assert isinstance(requests, RequestBudget)
    assert (requests.max_requests, requests.window_seconds) == (500, 30.0)
    assert config.token_budget is not None
    assert (config.token_budget.max_tokens, config.token_budget.window_seconds) == (9000, 60.0)
    for callable_setting in ("X_IS_FAILURE", "X_RETRY_RETRYABLE", "X_RNG", "X_LIMIT"):
        with pytest.raises(ConfigurationError, match=callable_setting):
            ThrottleConfig.from_env("X", {callable_setting: "x"})


def test_nested_dicts_accept_the_arguments_of_the_class_they_build() -> None:
    config = ThrottleConfig.from_dict(
        {
            "limit": {"kind": "gradient", "window": 4, "probe_interval": 30.0},
            "retry": {"max_attempts": 2, "max_delay": 5.0},
            "budgets": [{"max_requests": 10, "window_seconds": 1.0, "name": "rpm"}],
        }
    )
    assert isinstance(config.limit, Gradient)
    assert (config.limit.window, config.limit.probe_interval) == (4, 30.0)
    assert config.retry == RetryConfig(max_attempts=2, max_delay=5.0)
    assert config.budgets[0].name == "rpm"
    with pytest.raises(ConfigurationError, match=r"limit\.tolerance"):
        ThrottleConfig.from_dict({"limit": {"kind": "aimd", "tolerance": 2.0}})
    with pytest.raises(ConfigurationError, match=r"circuit_breaker\.recovery_timeout"):
        ThrottleConfig.from_dict({"circuit_breaker": {"recovery_timeout": 2.0}})
