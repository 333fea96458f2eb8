"""``ThrottleConfig``: every throttle argument in one frozen, validated dataclass.

It is the one statement of the throttle's defaults and of their validation: ``Throttle``'s
signature takes its defaults from it, the AIMD arguments take theirs from :class:`AIMD`
(and are validated by building one), and the readers of plain dicts (``from_dict``) and
of environment variables (``from_env``) derive the names they accept, and how to parse
each value, from the dataclass fields and the nested classes' signatures. Both readers
reject names they do not know, so a typo fails loudly.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import random
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, final

from headrace_core import ConfigurationError
from headrace_core.lowlevel import check_callable, check_int, check_number
from headrace_core.store import ThrottleStore
from headrace_guards import CircuitBreaker, Retry
from headrace_throttle._budget import RequestBudget, TokenBudget
from headrace_throttle._compat import CircuitBreakerConfig, RetryConfig
from headrace_throttle._limit import AIMD, Gradient, Limit
from headrace_throttle._types import ThrottleEvent, ThrottleSnapshot
from headrace_throttle._vegas import Vegas

__all__ = ["ThrottleConfig", "default_limit"]

MIGRATION = "see the headrace-throttle migration page (docs/throttle/migration.md)"
_REMOVED = {
    "safe_ceiling_decay_multiplier": "has no equivalent: the admission-epoch rule replaces "
    "gentlify's safe ceiling",
}

# AIMD states its own defaults; the throttle's AIMD arguments take theirs from it.
_AIMD = AIMD()
_AIMD_ARGUMENTS = tuple(inspect.signature(AIMD).parameters)


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
    failure_threshold: int = _AIMD.failure_threshold
    failure_window: float = _AIMD.failure_window
    decrease_factor: float = _AIMD.decrease_factor
    cooling_period: float = _AIMD.cooling_period
    increase_by: int = _AIMD.increase_by
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
    store: ThrottleStore | None = None
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
        default_limit(self)  # AIMD validates its own arguments, naming the bad one
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
        check_callable("is_failure", self.is_failure)
        check_callable("retry_after", self.retry_after)
        check_callable("on_event", self.on_event)
        check_callable("on_progress", self.on_progress)
        check_callable("failure_predicate", self.failure_predicate)
        check_callable("on_state_change", self.on_state_change)
        if self.store is not None:
            if not isinstance(self.store, ThrottleStore):
                raise ConfigurationError.argument_error(
                    "store", self.store, "must be a ThrottleStore (e.g. a RedisStore)"
                )
            if self.name is None:
                raise ConfigurationError.argument_error(
                    "store", self.store, "needs name= (the key every process shares)"
                )
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
        limit: object = self.limit  # (as given: the annotation is not a check)
        if limit is not None and not (isinstance(limit, Limit) and callable(limit.on_sample)):
            raise ConfigurationError.argument_error(
                "limit", self.limit, "must be AIMD, Gradient, a Limit (on_sample) or None"
            )
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigurationError.argument_error("name", self.name, "must be a str or None")
        for new, value, old, alias in (
            ("total", self.total, "total_tasks", self.total_tasks),
            ("is_failure", self.is_failure, "failure_predicate", self.failure_predicate),
            ("on_event", self.on_event, "on_state_change", self.on_state_change),
        ):
            if value is not None and alias is not None:
                raise ConfigurationError.argument_error(
                    old, alias, f"is an alias of {new}=; pass only one of them"
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
            # gentlify converted numbers given as strings; so do we (for the scalar fields).
            parse = _SCALARS.get(key)
            if isinstance(value, str) and parse is not None:
                kwargs[key] = _parse(key, value, parse)
        if isinstance(kwargs.get("token_budget"), Mapping):
            kwargs["token_budget"] = _budget(kwargs["token_budget"], "token_budget")
        if "budgets" in kwargs and isinstance(kwargs["budgets"], Sequence):
            kwargs["budgets"] = [
                _budget(b, "budgets") if isinstance(b, Mapping) else b for b in kwargs["budgets"]
            ]
        for group, config in _CONFIGS.items():
            if isinstance(kwargs.get(group), Mapping):
                kwargs[group] = _nested(config, kwargs[group], group)
        if isinstance(kwargs.get("limit"), Mapping):
            spec = dict(kwargs["limit"])
            kind = spec.pop("kind", "aimd")
            if kind not in _LIMITS:
                raise ConfigurationError.argument_error(
                    "limit.kind", kind, "must be 'aimd', 'gradient' or 'vegas'"
                )
            kwargs["limit"] = _nested(_LIMITS[kind], spec, "limit")
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
        for group, config in _CONFIGS.items():
            if group in nested:
                kwargs[group] = _nested(config, nested.pop(group), group)
        return cls.from_kwargs(kwargs)


def default_limit(config: ThrottleConfig) -> AIMD:
    """The :class:`AIMD` that ``config``'s AIMD arguments describe (used when ``limit`` is None).

    Raises:
        ConfigurationError: naming the AIMD argument that is out of range.
    """
    return AIMD(**{name: getattr(config, name) for name in _AIMD_ARGUMENTS})


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
    # The keys a nested dict may hold are the arguments of the class it builds.
    allowed = inspect.signature(cls).parameters
    for key in spec:
        if key not in allowed:
            raise ConfigurationError.argument_error(
                f"{argument}.{key}", spec[key], f"is not an argument of {cls.__name__}"
            )
    return cls(**spec)


_LIMITS: dict[str, type[AIMD | Gradient | Vegas]] = {
    "aimd": AIMD,
    "gradient": Gradient,
    "vegas": Vegas,
}


# -- parsing text (environment variables, and numbers given as strings in a dict) ----------
def _to_int(raw: str) -> int:
    return int(raw.strip())


def _to_float(raw: str) -> float:
    value = float(raw.strip())
    if math.isnan(value):
        raise ValueError(raw)
    return value


def _to_str(raw: str) -> str:
    return raw


def _parser(hint: object) -> Callable[[str], Any] | None:
    """How to read an argument annotated ``hint`` from text, or None if it is not a scalar.

    ``int``, ``float`` and ``str`` (a ``Literal`` of strings counts as ``str``), optionally
    ``| None``; anything else (callables, objects, sequences) is not read from text.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(kinds) != 1:
            return None
        hint = kinds[0]
    if hint is int:
        return _to_int
    if hint is float:
        return _to_float
    if hint is str:
        return _to_str
    if typing.get_origin(hint) is Literal and all(
        isinstance(value, str) for value in typing.get_args(hint)
    ):
        return _to_str
    return None


def _scalars(hints: Mapping[str, object]) -> dict[str, Callable[[str], Any]]:
    """The scalar arguments among ``hints`` (name -> annotation), with their parsers."""
    parsers = {name: _parser(hint) for name, hint in hints.items()}
    return {name: parse for name, parse in parsers.items() if parse is not None}


def _environment() -> dict[str, tuple[str, Callable[[str], Any]]]:
    """Map each variable suffix to ``(target, parser)``; a target ``group.name`` is nested.

    Every scalar field of :class:`ThrottleConfig` (``MAX_CONCURRENCY``, ``NAME``, ...);
    every scalar field of the retry and breaker configs (``RETRY_MAX_ATTEMPTS``,
    ``CIRCUIT_BREAKER_OPEN_DURATION``, ...); and for each budget its capacity and window
    as ``TOKEN_BUDGET_MAX``, ``TOKEN_BUDGET_WINDOW``, ``REQUEST_BUDGET_MAX``, ...
    """
    table = {name.upper(): (name, parse) for name, parse in _SCALARS.items()}
    for group, config in _CONFIGS.items():
        for name, parse in _scalars(typing.get_type_hints(config)).items():
            table[f"{group}_{name}".upper()] = (f"{group}.{name}", parse)
    for group, budget in _BUDGETS.items():
        parsers = _scalars(typing.get_type_hints(budget.__init__))
        capacity, window = list(inspect.signature(budget).parameters)[:2]
        for suffix, name in (("MAX", capacity), ("WINDOW", window)):
            table[f"{group.upper()}_{suffix}"] = (f"{group}.{name}", parsers[name])
    return table


_SCALARS = _scalars(typing.get_type_hints(ThrottleConfig))
_CONFIGS: dict[str, type[RetryConfig | CircuitBreakerConfig]] = {
    "retry": RetryConfig,
    "circuit_breaker": CircuitBreakerConfig,
}
_BUDGETS: dict[str, type[TokenBudget | RequestBudget]] = {
    "token_budget": TokenBudget,
    "request_budget": RequestBudget,
}
_ENV = _environment()


def _parse(variable: str, raw: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except ValueError:
        kinds: dict[Callable[[str], Any], str] = {_to_int: "an int", _to_float: "a number"}
        kind = kinds.get(parse, "a value")
        raise ConfigurationError.argument_error(variable, raw, f"must be {kind}") from None
