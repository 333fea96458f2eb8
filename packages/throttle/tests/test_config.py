"""Validation, ThrottleConfig, from_dict and from_env."""

from __future__ import annotations

import random
from typing import Any

import pytest

from headrace_guards import CircuitBreaker, Retry
from headrace_throttle import (
    AIMD,
    CircuitBreakerConfig,
    ConfigurationError,
    Gradient,
    RequestBudget,
    RetryConfig,
    Throttle,
    ThrottleConfig,
    TokenBudget,
)

BAD: list[tuple[str, dict[str, Any]]] = [
    ("max_concurrency", {"max_concurrency": 0}),
    ("max_concurrency", {"max_concurrency": 2.5}),
    ("min_concurrency", {"min_concurrency": 0}),
    ("min_concurrency", {"max_concurrency": 2, "min_concurrency": 3}),
    ("initial_concurrency", {"max_concurrency": 2, "initial_concurrency": 3}),
    ("initial_concurrency", {"min_concurrency": 2, "initial_concurrency": 1}),
    ("failure_threshold", {"failure_threshold": 0}),
    ("failure_window", {"failure_window": 0}),
    ("decrease_factor", {"decrease_factor": 0}),
    ("decrease_factor", {"decrease_factor": 1}),
    ("cooling_period", {"cooling_period": 0}),
    ("increase_by", {"increase_by": 0}),
    ("min_dispatch_interval", {"min_dispatch_interval": -1}),
    ("max_dispatch_interval", {"min_dispatch_interval": 2, "max_dispatch_interval": 1}),
    ("jitter_fraction", {"jitter_fraction": 1.5}),
    ("rng", {"rng": 3}),
    ("budgets", {"budgets": [3]}),
    ("budgets", {"budgets": "x"}),
    ("token_budget", {"token_budget": 5}),
    ("is_failure", {"is_failure": 5}),
    ("retry_after", {"retry_after": 5}),
    ("retry", {"retry": 3}),
    ("circuit_breaker", {"circuit_breaker": 3}),
    ("total", {"total": -1}),
    ("total_tasks", {"total_tasks": -1}),
    ("on_event", {"on_event": 1}),
    ("on_progress", {"on_progress": 1}),
    ("progress_step", {"progress_step": 0}),
    ("progress_step", {"progress_step": 101}),
    ("limit", {"limit": 3}),
    ("name", {"name": 3}),
    ("total_tasks", {"total": 3, "total_tasks": 3}),
    ("failure_predicate", {"is_failure": bool, "failure_predicate": bool}),
    ("on_state_change", {"on_event": print, "on_state_change": print}),
    ("bogus", {"bogus": 1}),
]


@pytest.mark.parametrize(("argument", "kwargs"), BAD)
def test_bad_configuration_names_the_argument(argument: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Throttle(**kwargs)
    with pytest.raises(ConfigurationError, match=argument):
        ThrottleConfig.from_kwargs(kwargs)


def test_safe_ceiling_points_to_the_migration_page() -> None:
    with pytest.raises(ConfigurationError, match=r"safe_ceiling_decay_multiplier.*migration"):
        Throttle(max_concurrency=5, safe_ceiling_decay_multiplier=5.0)


def test_config_round_trip_and_defaults() -> None:
    config = ThrottleConfig(max_concurrency=7, min_dispatch_interval=0.5)
    t = Throttle.from_config(config)
    assert t.config is config
    assert t.snapshot().concurrency == 7
    assert t.snapshot().dispatch_interval == 0.5
    default = ThrottleConfig()
    assert default.min_dispatch_interval == 0.0
    assert default.jitter_fraction == 0.0
    assert default.max_concurrency == 5
    assert ThrottleConfig(total_tasks=0).resolved_total is None
    assert ThrottleConfig(total_tasks=10).resolved_total == 10
    assert isinstance(ThrottleConfig(budgets=[RequestBudget(3)]).budgets, tuple)


def test_from_dict_with_nested_values() -> None:
    t = Throttle.from_dict(
        {
            "max_concurrency": 10,
            "token_budget": {"max_tokens": 50000, "window_seconds": 60.0},
            "budgets": [{"max_requests": 500}],
            "retry": {"max_attempts": 2, "backoff": "fixed", "base_delay": 0.5},
            "circuit_breaker": {"consecutive_failures": 3, "open_duration": 5.0},
            "limit": {"kind": "aimd", "failure_threshold": 2},
        }
    )
    assert t.snapshot().max_concurrency == 10
    assert t.snapshot().tokens_remaining is None or t.snapshot().tokens_remaining == 50000
    assert isinstance(t.retry, Retry)
    assert isinstance(t.circuit_breaker, CircuitBreaker)
    assert isinstance(t.limit, AIMD)
    assert t.limit.failure_threshold == 2
    g = Throttle.from_dict({"limit": {"kind": "gradient", "tolerance": 1.5}})
    assert isinstance(g.limit, Gradient)


@pytest.mark.parametrize(
    ("data", "argument"),
    [
        ({"max_concurency": 3}, "max_concurency"),
        ({"token_budget": {"max_tokens": 5, "windows": 3}}, "token_budget.windows"),
        ({"token_budget": {"size": 5}}, "token_budget"),
        ({"retry": {"attempts": 3}}, "retry.attempts"),
        ({"circuit_breaker": {"threshold": 3}}, "circuit_breaker.threshold"),
        ({"limit": {"kind": "bbr"}}, "limit.kind"),
        ({"safe_ceiling_decay_multiplier": 5.0}, "safe_ceiling_decay_multiplier"),
    ],
)
def test_from_dict_rejects_unknown_keys(data: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Throttle.from_dict(data)


def test_from_env_reads_prefixed_variables() -> None:
    env = {
        "MYAPP_MAX_CONCURRENCY": "10",
        "MYAPP_MIN_DISPATCH_INTERVAL": "0.5",
        "MYAPP_TOKEN_BUDGET_MAX": "1000",
        "MYAPP_TOKEN_BUDGET_WINDOW": "30",
        "MYAPP_RETRY_MAX_ATTEMPTS": "4",
        "MYAPP_CIRCUIT_BREAKER_CONSECUTIVE_FAILURES": "2",
        "MYAPP_TOTAL_TASKS": "50",
        "MYAPP_NAME": "svc",
        "OTHER_MAX_CONCURRENCY": "99",
    }
    t = Throttle.from_env(prefix="MYAPP", environ=env)
    snap = t.snapshot()
    assert snap.max_concurrency == 10
    assert snap.dispatch_interval == 0.5
    assert snap.total == 50
    assert snap.name == "svc"
    assert t.config.token_budget is not None
    assert t.config.token_budget.max_tokens == 1000
    assert t.config.token_budget.window_seconds == 30.0
    assert isinstance(t.config.retry, RetryConfig)
    assert t.config.retry.max_attempts == 4
    assert isinstance(t.config.circuit_breaker, CircuitBreakerConfig)


def test_from_env_default_prefixes_and_gentlify_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_THROTTLE_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("GENTLIFY_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("GENTLIFY_FAILURE_THRESHOLD", "7")
    monkeypatch.setenv("HEADRACE_THROTTLE_REQUEST_BUDGET_MAX", "100")
    t = Throttle.from_env()
    assert t.snapshot().max_concurrency == 8
    assert t.config.failure_threshold == 7
    assert isinstance(t.config.budgets[0], RequestBudget)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"X_MAX_CONCURRENCY": "ten"}, "X_MAX_CONCURRENCY"),
        ({"X_FAILURE_WINDOW": "soon"}, "X_FAILURE_WINDOW"),
        ({"X_FAILURE_WINDOW": "nan"}, "X_FAILURE_WINDOW"),
        ({"X_MAX_CONCURENCY": "3"}, "X_MAX_CONCURENCY"),
        ({"X_SAFE_CEILING_DECAY_MULTIPLIER": "5"}, "X_SAFE_CEILING_DECAY_MULTIPLIER"),
    ],
)
def test_from_env_names_the_bad_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable) as info:
        Throttle.from_env("X", environ=env)
    assert repr(next(iter(env.values()))) in str(info.value)


def test_jitter_with_rng_and_limit_objects_are_accepted() -> None:
    t = Throttle(3, jitter_fraction=0.2, rng=random.Random(1), limit=Gradient())
    assert isinstance(t.limit, Gradient)
    assert isinstance(Throttle(3, budgets=[TokenBudget(5)]).config.budgets[0], TokenBudget)


def test_a_limit_object_belongs_to_one_throttle() -> None:
    shared = AIMD()
    Throttle(3, limit=shared)
    with pytest.raises(ConfigurationError, match="limit"):
        Throttle(3, limit=shared)


def test_from_dict_converts_numbers_given_as_strings() -> None:
    t = Throttle.from_dict({"max_concurrency": "7", "min_dispatch_interval": "0.25"})
    assert t.snapshot().max_concurrency == 7
    assert t.snapshot().dispatch_interval == 0.25
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        Throttle.from_dict({"max_concurrency": "seven"})
    retry = Throttle.from_dict({"retry": {"max_attempts": 2, "retryable": lambda e: True}})
    assert isinstance(retry.config.retry, RetryConfig)
