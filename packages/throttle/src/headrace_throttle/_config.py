"""``ThrottleConfig``: every throttle argument in one frozen, validated dataclass.

Also the readers of plain dicts (``from_dict``) and of environment variables
(``from_env``); both reject names they do not know, so a typo fails loudly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_callable, check_int, check_number
from headrace_guards import CircuitBreaker, Retry
from headrace_throttle._budget import RequestBudget, TokenBudget
from headrace_throttle._compat import CircuitBreakerConfig, RetryConfig
from headrace_throttle._limit import AIMD, Gradient, Limit
from headrace_throttle._types import ThrottleEvent, ThrottleSnapshot
from headrace_throttle._vegas import Vegas

__all__ = ["ThrottleConfig"]

MIGRATION = "see the headrace-throttle migration page (docs/throttle/migration.md)"
_REMOVED = {
    "safe_ceiling_decay_multiplier": "has no equivalent: the admission-epoch rule replaces "
    "gentlify's safe ceiling",
}


@final
@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """Every argument of :class:`Throttle`, validated at construction.

    ``Throttle(**fields)`` and ``Throttle.from_config(config)`` build the same throttle.
    gentlify's names are accepted as aliases: ``total_tasks`` (``total``, where 0 means
    unknown), ``failure_predicate`` (``is_failure``) and ``on_state_change``
    (``on_event``). Defaults differ from gentlify's where headrace's semantics say so:
    no pacing (``min_dispatch_interval=0.0``) and no jitter (``jitter_fraction=0.0``)
    unless asked.

    Raises:
        ConfigurationError: naming the argument and the value, when one is invalid.
    """

    max_concurrency: int = 5
    initial_concurrency: int | None = None
    min_concurrency: int = 1
    failure_threshold: int = 3
    failure_window: float = 60.0
    decrease_factor: float = 0.5
    cooling_period: float = 60.0
    increase_by: int = 1
    min_dispatch_interval: float = 0.0
    max_dispatch_interval: float = 30.0
    jitter_fraction: float = 0.0
    rng: random.Random | None = None
    budgets: Sequence[TokenBudget | RequestBudget] = ()
    token_budget: TokenBudget | None = None
    is_failure: Callable[[BaseException], bool] | None = None
    retry_after: Callable[[BaseException], float | str | None] | None = None
    retry: Retry | RetryConfig | None = None
    circuit_breaker: CircuitBreaker | CircuitBreakerConfig | None = None
    total: int | None = None
    on_event: Callable[[ThrottleEvent], object] | None = None
    on_progress: Callable[[ThrottleSnapshot], object] | None = None
    progress_step: float = 10.0
    limit: AIMD | Gradient | Vegas | Limit | None = None
    name: str | None = None
    total_tasks: int | None = None
    failure_predicate: Callable[[BaseException], bool] | None = None
    on_state_change: Callable[[ThrottleEvent], object] | None = None

    def __post_init__(self) -> None:
        high = check_int("max_concurrency", self.max_concurrency, ge=1)
        low = check_int("min_concurrency", self.min_concurrency, ge=1)
        if low > high:
            raise ConfigurationError.argument_error(
                "min_concurrency", low, f"must be <= max_concurrency ({high})"
            )
        if self.initial_concurrency is not None:
            initial = check_int("initial_concurrency", self.initial_concurrency, ge=low)
            if initial > high:
                raise ConfigurationError.argument_error(
                    "initial_concurrency", initial, f"must be <= max_concurrency ({high})"
                )
        check_int("failure_threshold", self.failure_threshold, ge=1)
        check_number("failure_window", self.failure_window, gt=0)
        check_number("decrease_factor", self.decrease_factor, gt=0, lt=1)
        check_number("cooling_period", self.cooling_period, gt=0)
        check_int("increase_by", self.increase_by, ge=1)
        lo_interval = check_number("min_dispatch_interval", self.min_dispatch_interval, ge=0)
        check_number("max_dispatch_interval", self.max_dispatch_interval, ge=lo_interval)
        check_number("jitter_fraction", self.jitter_fraction, ge=0, le=1)
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise ConfigurationError.argument_error("rng", self.rng, "must be a random.Random")
        given: object = self.budgets
        if isinstance(given, str | bytes) or not isinstance(given, Sequence):
            raise ConfigurationError.argument_error(
                "budgets", self.budgets, "must be a sequence of TokenBudget or RequestBudget"
            )
        for budget in self.budgets:
            if not isinstance(budget, TokenBudget | RequestBudget):
                raise ConfigurationError.argument_error(
                    "budgets", budget, "each must be a TokenBudget or a RequestBudget"
                )
        object.__setattr__(self, "budgets", tuple(self.budgets))
        if self.token_budget is not None and not isinstance(self.token_budget, TokenBudget):
            raise ConfigurationError.argument_error(
                "token_budget", self.token_budget, "must be a TokenBudget or None"
            )
        for argument in ("is_failure", "retry_after", "on_event", "on_progress"):
            check_callable(argument, getattr(self, argument))
        check_callable("failure_predicate", self.failure_predicate)
        check_callable("on_state_change", self.on_state_change)
        if self.retry is not None and not isinstance(self.retry, Retry | RetryConfig):
            raise ConfigurationError.argument_error(
                "retry", self.retry, "must be a headrace_guards.Retry, a RetryConfig or None"
            )
        if self.circuit_breaker is not None and not isinstance(
            self.circuit_breaker, CircuitBreaker | CircuitBreakerConfig
        ):
            raise ConfigurationError.argument_error(
                "circuit_breaker",
                self.circuit_breaker,
                "must be a headrace_guards.CircuitBreaker, a CircuitBreakerConfig or None",
            )
        if self.total is not None:
            check_int("total", self.total, ge=0)
        if self.total_tasks is not None:
            check_int("total_tasks", self.total_tasks, ge=0)
        check_number("progress_step", self.progress_step, gt=0, le=100)
        if self.limit is not None and not callable(getattr(self.limit, "on_sample", None)):
            raise ConfigurationError.argument_error(
                "limit", self.limit, "must be AIMD, Gradient, a Limit (on_sample) or None"
            )
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigurationError.argument_error("name", self.name, "must be a str or None")
        for new, old in (
            ("total", "total_tasks"),
            ("is_failure", "failure_predicate"),
            ("on_event", "on_state_change"),
        ):
            if getattr(self, new) is not None and getattr(self, old) is not None:
                raise ConfigurationError.argument_error(
                    old, getattr(self, old), f"is an alias of {new}=; pass only one of them"
                )

    # -- resolved values ---------------------------------------------------------------
    @property
    def resolved_total(self) -> int | None:
        """``total``, or gentlify's ``total_tasks`` (where 0 meant "unknown")."""
        if self.total is not None:
            return self.total
        return self.total_tasks or None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> ThrottleConfig:
        """Build a config from keyword arguments, rejecting unknown names.

        Args:
            kwargs: argument names and values.

        Returns:
            The validated config.

        Raises:
            ConfigurationError: naming an unknown or removed argument, or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key in _REMOVED:
                raise ConfigurationError.argument_error(
                    key, kwargs[key], f"{_REMOVED[key]}; {MIGRATION}"
                )
            if key not in known:
                raise ConfigurationError.argument_error(
                    key, kwargs[key], "is not a Throttle argument"
                )
        return cls(**kwargs)

    # -- dicts ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThrottleConfig:
        """Build a config from a plain dict (nested dicts for budgets, retry and breaker).

        Args:
            data: argument names and values; ``token_budget`` may be
                ``{"max_tokens", "window_seconds"}``, ``budgets`` a list of such dicts
                (``max_tokens`` or ``max_requests``), ``retry`` a dict of
                :class:`RetryConfig` fields, ``circuit_breaker`` a dict of
                :class:`CircuitBreakerConfig` fields, and ``limit`` a dict with
                ``"kind": "aimd" | "gradient" | "vegas"`` and that class's arguments.

        Returns:
            The validated config.

        Raises:
            ConfigurationError: naming an unknown key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError.argument_error("data", data, "must be a mapping")
        kwargs = dict(data)
        for key, value in kwargs.items():
            # gentlify converted numbers given as strings; so do we (for known scalars).
            suffix = key.upper()
            if isinstance(value, str) and suffix in _ENV and key != "name":
                kwargs[key] = _parse(key, value, _ENV[suffix][1])
        if isinstance(kwargs.get("token_budget"), Mapping):
            kwargs["token_budget"] = _budget(kwargs["token_budget"], "token_budget")
        if "budgets" in kwargs and isinstance(kwargs["budgets"], Sequence):
            kwargs["budgets"] = [
                _budget(b, "budgets") if isinstance(b, Mapping) else b for b in kwargs["budgets"]
            ]
        if isinstance(kwargs.get("retry"), Mapping):
            kwargs["retry"] = _nested(RetryConfig, kwargs["retry"], "retry")
        if isinstance(kwargs.get("circuit_breaker"), Mapping):
            kwargs["circuit_breaker"] = _nested(
                CircuitBreakerConfig, kwargs["circuit_breaker"], "circuit_breaker"
            )
        if isinstance(kwargs.get("limit"), Mapping):
            spec = dict(kwargs["limit"])
            kind = spec.pop("kind", "aimd")
            limits: dict[str, type[AIMD | Gradient | Vegas]] = {
                "aimd": AIMD,
                "gradient": Gradient,
                "vegas": Vegas,
            }
            if kind not in limits:
                raise ConfigurationError.argument_error(
                    "limit.kind", kind, "must be 'aimd', 'gradient' or 'vegas'"
                )
            kwargs["limit"] = _nested(limits[kind], spec, "limit")
        return cls.from_kwargs(kwargs)

    # -- environment -----------------------------------------------------------------
    @classmethod
    def from_env(
        cls, prefix: str | None = None, environ: Mapping[str, str] | None = None
    ) -> ThrottleConfig:
        """Build a config from ``{prefix}_{NAME}`` environment variables.

        Args:
            prefix: the variables' prefix. None reads ``HEADRACE_THROTTLE_*``, then
                ``GENTLIFY_*`` for names the first does not set.
            environ: the variables to read; default ``os.environ``.

        Returns:
            The validated config.

        Raises:
            ConfigurationError: naming the variable, when one is unknown or does not parse.
        """
        env = os.environ if environ is None else environ
        prefixes = ("HEADRACE_THROTTLE", "GENTLIFY") if prefix is None else (prefix,)
        values: dict[str, tuple[str, str]] = {}
        for pre in prefixes:
            start = pre.rstrip("_") + "_"
            for variable, raw in env.items():
                if not variable.startswith(start):
                    continue
                suffix = variable[len(start) :]
                if suffix.lower() in _REMOVED:
                    raise ConfigurationError.argument_error(
                        variable, raw, f"{_REMOVED[suffix.lower()]}; {MIGRATION}"
                    )
                if suffix not in _ENV:
                    raise ConfigurationError.argument_error(
                        variable, raw, "is not a throttle setting"
                    )
                values.setdefault(suffix, (variable, raw))
        kwargs: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for suffix, (variable, raw) in values.items():
            target, parse = _ENV[suffix]
            value = _parse(variable, raw, parse)
            group, _, field = target.partition(".")
            if field:
                nested.setdefault(group, {})[field] = value
            else:
                kwargs[group] = value
        if "token_budget" in nested:
            kwargs["token_budget"] = _budget(nested.pop("token_budget"), "token_budget")
        if "request_budget" in nested:
            kwargs["budgets"] = [_budget(nested.pop("request_budget"), "budgets")]
        if "retry" in nested:
            kwargs["retry"] = _nested(RetryConfig, nested.pop("retry"), "retry")
        if "circuit_breaker" in nested:
            kwargs["circuit_breaker"] = _nested(
                CircuitBreakerConfig, nested.pop("circuit_breaker"), "circuit_breaker"
            )
        return cls.from_kwargs(kwargs)


def _budget(spec: Mapping[str, Any], argument: str) -> TokenBudget | RequestBudget:
    if "max_tokens" in spec:
        budget: TokenBudget | RequestBudget = _nested(TokenBudget, spec, argument)
        return budget
    if "max_requests" in spec:
        budget = _nested(RequestBudget, spec, argument)
        return budget
    raise ConfigurationError.argument_error(
        argument, dict(spec), "needs max_tokens (a TokenBudget) or max_requests (a RequestBudget)"
    )


def _nested(cls: Callable[..., Any], spec: Mapping[str, Any], argument: str) -> Any:
    allowed = _FIELDS.get(cls, ())
    for key in spec:
        if key not in allowed:
            raise ConfigurationError.argument_error(
                f"{argument}.{key}", spec[key], f"is not an argument of {cls.__name__}"
            )
    return cls(**spec)


_FIELDS: dict[Any, tuple[str, ...]] = {
    TokenBudget: ("max_tokens", "window_seconds", "name"),
    RequestBudget: ("max_requests", "window_seconds", "name"),
    RetryConfig: ("max_attempts", "backoff", "base_delay", "max_delay", "retryable"),
    CircuitBreakerConfig: ("consecutive_failures", "open_duration", "half_open_max_calls"),
    AIMD: (
        "failure_threshold",
        "failure_window",
        "decrease_factor",
        "cooling_period",
        "increase_by",
    ),
    Gradient: (
        "min_limit",
        "max_limit",
        "tolerance",
        "smoothing",
        "long_window",
        "probe_interval",
        "window",
    ),
    Vegas: ("min_limit", "max_limit", "alpha", "beta", "smoothing", "probe_interval"),
}


def _to_int(raw: str) -> int:
    return int(raw.strip())


def _to_float(raw: str) -> float:
    value = float(raw.strip())
    if math.isnan(value):
        raise ValueError(raw)
    return value


def _to_str(raw: str) -> str:
    return raw


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "MAX_CONCURRENCY": ("max_concurrency", _to_int),
    "INITIAL_CONCURRENCY": ("initial_concurrency", _to_int),
    "MIN_CONCURRENCY": ("min_concurrency", _to_int),
    "FAILURE_THRESHOLD": ("failure_threshold", _to_int),
    "FAILURE_WINDOW": ("failure_window", _to_float),
    "DECREASE_FACTOR": ("decrease_factor", _to_float),
    "COOLING_PERIOD": ("cooling_period", _to_float),
    "INCREASE_BY": ("increase_by", _to_int),
    "MIN_DISPATCH_INTERVAL": ("min_dispatch_interval", _to_float),
    "MAX_DISPATCH_INTERVAL": ("max_dispatch_interval", _to_float),
    "JITTER_FRACTION": ("jitter_fraction", _to_float),
    "TOTAL": ("total", _to_int),
    "TOTAL_TASKS": ("total_tasks", _to_int),
    "PROGRESS_STEP": ("progress_step", _to_float),
    "NAME": ("name", _to_str),
    "TOKEN_BUDGET_MAX": ("token_budget.max_tokens", _to_int),
    "TOKEN_BUDGET_WINDOW": ("token_budget.window_seconds", _to_float),
    "REQUEST_BUDGET_MAX": ("request_budget.max_requests", _to_int),
    "REQUEST_BUDGET_WINDOW": ("request_budget.window_seconds", _to_float),
    "RETRY_MAX_ATTEMPTS": ("retry.max_attempts", _to_int),
    "RETRY_BACKOFF": ("retry.backoff", _to_str),
    "RETRY_BASE_DELAY": ("retry.base_delay", _to_float),
    "RETRY_MAX_DELAY": ("retry.max_delay", _to_float),
    "CIRCUIT_BREAKER_CONSECUTIVE_FAILURES": ("circuit_breaker.consecutive_failures", _to_int),
    "CIRCUIT_BREAKER_OPEN_DURATION": ("circuit_breaker.open_duration", _to_float),
    "CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS": ("circuit_breaker.half_open_max_calls", _to_int),
}


def _parse(variable: str, raw: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except ValueError:
        kinds: dict[Callable[[str], Any], str] = {_to_int: "an int", _to_float: "a number"}
        kind = kinds.get(parse, "a value")
        raise ConfigurationError.argument_error(variable, raw, f"must be {kind}") from None
