"""Stage definitions: ``stage()``, ``batched()``, ``router()``, ``sync_stage()``."""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, Generic, TypeAlias, TypeVar, final, overload

from headrace_core import ConfigurationError, ConfigurationTypeError
from headrace_core.backoff import Backoff
from headrace_core.lowlevel import (
    check_int,
    check_name,
    check_number,
    check_optional_number,
    is_async_callable,
    safe_repr,
)
from headrace_flow._markers import Drop, Last
from headrace_flow._plan import (
    NO_SETTINGS,
    PLAIN_CALLS,
    Batching,
    CallOptions,
    Graph,
    Kind,
    Settings,
    Target,
)
from headrace_flow._queues import QueueFactory
from headrace_flow._scaling import FixedScaling, ScalingStrategy, as_strategy

__all__ = ["Composite", "Stage", "StageLike", "batched", "router", "stage", "sync_stage"]

In = TypeVar("In")
Out = TypeVar("Out")
A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")
R = TypeVar("R")


class Composite(abc.ABC, Generic[In, Out]):
    """A stage target made of stages (a ``Flow``): inlined where it is used.

    Its stages keep their own settings (its defaults and ``configure()`` calls) under
    the settings of the flow it is part of; their names are dotted (``sub.parse``).
    """

    __slots__ = ()

    @abc.abstractmethod
    def _graph(self) -> Graph:
        """Return its compiled stages, its own defaults and ``configure()`` baked in."""


def is_async_gen_callable(target: object) -> bool:
    """Whether calling ``target`` returns an async generator."""
    if inspect.isasyncgenfunction(target):
        return True
    if isinstance(target, functools.partial):
        return inspect.isasyncgenfunction(target.func)
    call = getattr(type(target), "__call__", None)  # noqa: B004
    return call is not None and not inspect.isfunction(target) and inspect.isasyncgenfunction(call)


def _callable_without_args(target: Callable[..., object]) -> bool:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind()
    except TypeError:
        return False
    return True


def _check_arity(target: object, where: str) -> None:
    """An async stage function takes one argument, the item (flowrhythm's rule and error)."""
    if not callable(target):
        return
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): calling it will tell
    try:
        signature.bind(None)
    except TypeError:
        count = len(signature.parameters)
        name = getattr(target, "__name__", None) or safe_repr(target)
        hint = (
            " (a context manager factory is a plain callable, not an async one)"
            if count == 0
            else ""
        )
        raise ConfigurationTypeError(
            f"{where} {name!r} must take 0 args (a context manager factory) or 1 arg (the "
            f"item); got {count}{hint}",
            argument="target",
            value=target,
        ) from None


def classify(target: object, where: str = "stage") -> Kind:
    """Return the kind of a stage target, or raise ``TypeError``.

    Raises:
        TypeError: for a sync callable taking an item, or a non-callable.
    """
    if isinstance(target, Composite):
        return Kind.FLOW
    if is_async_gen_callable(target):
        _check_arity(target, where)
        return Kind.GEN
    if is_async_callable(target):
        _check_arity(target, where)
        return Kind.MAP
    if callable(target):
        if _callable_without_args(target):
            return Kind.CM
        name = getattr(target, "__name__", repr(target))
        raise TypeError(
            f"{where} {name!r} is a sync callable; wrap it with sync_stage() (runs it in a "
            "thread) or make it async"
        )
    raise TypeError(
        f"{where} must be an async callable, a context manager factory or a Flow, got "
        f"{safe_repr(target)}"
    )


def _name_of(target: object) -> str:
    name = getattr(target, "__name__", None)
    if isinstance(name, str) and name and name != "<lambda>":
        return name
    func = getattr(target, "func", None)  # functools.partial
    name = getattr(func, "__name__", None)
    if isinstance(name, str) and name and name != "<lambda>":
        return name
    return type(target).__name__ if not inspect.isfunction(target) else "stage"


@final
class Stage(Generic[In, Out]):
    """A stage of a flow: a target plus its settings. Build it with :func:`stage`.

    Attributes:
        target: the item function, context manager factory, sub-flow or router classifier.
        name: the explicit name, or ``None`` for the target's ``__name__``.
        kind: what the target is (``"map"``, ``"gen"``, ``"cm"``, ``"batched"``,
            ``"router"``, ``"flow"``; a ``str`` enum).
        options: the settings given here (``scaling``, ``queue``, ``queue_size``,
            ``ordered``; ``None`` where not set).
        calls: the per-item deadline and retries.
    """

    __slots__ = ("arms", "batching", "calls", "default", "kind", "name", "options", "target")

    def __init__(
        self,
        target: Target,
        *,
        kind: Kind,
        name: str | None = None,
        options: Settings = NO_SETTINGS,
        calls: CallOptions = PLAIN_CALLS,
        arms: Mapping[str, object] | None = None,
        default: object = None,
        batching: Batching | None = None,
    ) -> None:
        self.target = target
        self.kind = kind
        self.name = name
        self.options = options
        self.calls = calls
        self.arms: Mapping[str, object] = {} if arms is None else arms
        self.default = default
        self.batching = batching

    @property
    def display_name(self) -> str:
        """The name the stage gets in a flow (before collision suffixes)."""
        if self.name is not None:
            return self.name
        return _name_of(self.target)

    def _with(self, name: str | None, options: Settings, calls: CallOptions) -> Stage[In, Out]:
        return Stage(
            self.target,
            kind=self.kind,
            name=name if name is not None else self.name,
            options=options,
            calls=calls,
            arms=self.arms,
            default=self.default,
            batching=self.batching,
        )

    def __repr__(self) -> str:
        return f"<Stage {self.display_name!r} {self.kind}>"


StageLike: TypeAlias = (
    Stage[A, B]
    | Composite[A, B]
    | Callable[[A], Awaitable[B | Drop | Last[B]]]
    | Callable[[A], AsyncIterator[B]]
    | Callable[[], AbstractAsyncContextManager[Callable[[A], Awaitable[B | Drop | Last[B]]]]]
    | Callable[[], AbstractAsyncContextManager[Callable[[A], AsyncIterator[B]]]]
)
"""What :func:`flow` and :func:`stage` accept as a stage from ``A`` to ``B``."""


def _check_retry_on(value: object) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple) else (value,)
    checked: list[type[BaseException]] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            break
        checked.append(item)
    if not items or len(checked) != len(items):
        raise ConfigurationError.argument_error(
            "retry_on", value, "must be an exception class or a tuple of them"
        )
    return tuple(checked)


@overload
def stage(
    target: StageLike[A, B],
    *,
    name: str | None = None,
    workers: int | None = None,
    scaling: Any = None,
    queue_size: int | None = None,
    queue: QueueFactory | None = None,
    ordered: bool = False,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    initial_delay: float = 0.0,
    backoff_factor: float = 2.0,
    max_delay: float | None = None,
    jitter: float = 0.0,
    backoff: Backoff | None = None,
) -> Stage[A, B]: ...


@overload
def stage(
    target: object,
    *,
    name: str | None = None,
    workers: int | None = None,
    scaling: Any = None,
    queue_size: int | None = None,
    queue: QueueFactory | None = None,
    ordered: bool = False,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    initial_delay: float = 0.0,
    backoff_factor: float = 2.0,
    max_delay: float | None = None,
    jitter: float = 0.0,
    backoff: Backoff | None = None,
) -> Stage[Any, Any]: ...  # (not a stage form: raises TypeError)


def stage(
    target: object,
    *,
    name: str | None = None,
    workers: int | None = None,
    scaling: Any = None,
    queue_size: int | None = None,
    queue: QueueFactory | None = None,
    ordered: bool = False,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    initial_delay: float = 0.0,
    backoff_factor: float = 2.0,
    max_delay: float | None = None,
    jitter: float = 0.0,
    backoff: Backoff | None = None,
) -> Stage[Any, Any]:
    """Wrap a stage target with a name and settings.

    Args:
        target: an async item function (``return DROP`` filters), an async generator
            function (fan-out), a no-argument context manager factory (entered once per
            worker), a ``Flow`` (sub-flow) or a ``router(...)``.
        name: the stage's name (default: the target's ``__name__``); for a sub-flow,
            the prefix of its stages' dotted names.
        workers: a fixed worker count (same as ``scaling=FixedScaling(workers)``).
        scaling: a scaling strategy; exclusive with ``workers``.
        queue_size: the input queue's bound (``0`` = unbounded).
        queue: the input queue's factory (``fifo_queue``, ``lifo_queue``, ``priority_queue``).
        ordered: release outputs in input order while still running every worker (for a
            fan-out stage, each item's outputs are released together).
        retries: extra attempts after the first failed one.
        retry_on: the exceptions that are retried.
        timeout: a per-item deadline in seconds (loop clock); expiry raises
            ``StageTimeout`` (a ``TimeoutError``), retried if ``retry_on`` covers it.
        initial_delay: the delay before the first retry (``0`` = at once).
        backoff_factor: the growth of the delay per retry, ``>= 1``.
        max_delay: the cap of the delay (default: none).
        jitter: in ``[0, 1]``; each delay is multiplied by ``uniform(1 - jitter, 1)``.
        backoff: a ``headrace_core.backoff`` schedule, instead of the four above.

    Returns:
        A :class:`Stage` to pass to :func:`flow`, typed from ``target`` to its outputs.

    Raises:
        ConfigurationError: for a bad setting (naming it), or ``workers`` with ``scaling``.
        TypeError: for a sync callable (use :func:`sync_stage`) or a non-callable.
    """
    name = check_name(name, error=ConfigurationTypeError)
    if workers is not None and scaling is not None:
        raise ConfigurationError.argument_error(
            "workers", workers, "workers= and scaling= are exclusive"
        )
    strategy: ScalingStrategy | None = None
    if workers is not None:
        strategy = FixedScaling(check_int("workers", workers, ge=1))
    elif scaling is not None:
        strategy = as_strategy(scaling)
    if queue_size is not None:
        check_int("queue_size", queue_size, ge=0)
    if queue is not None and not callable(queue):
        raise ConfigurationError.argument_error("queue", queue, "must be a queue factory")
    if not isinstance(ordered, bool):
        raise ConfigurationError.argument_error("ordered", ordered, "must be a bool")
    check_int("retries", retries, ge=0)
    retry_types = _check_retry_on(retry_on)
    check_optional_number("timeout", timeout, gt=0)
    check_number("initial_delay", initial_delay, ge=0)
    check_number("backoff_factor", backoff_factor, ge=1)
    if max_delay is not None:
        check_number("max_delay", max_delay, ge=0, finite=False)
    check_number("jitter", jitter, ge=0, le=1)
    if backoff is not None and not callable(getattr(backoff, "delays", None)):
        raise ConfigurationError.argument_error("backoff", backoff, "must be a backoff schedule")
    options = Settings(
        scaling=strategy, queue=queue, queue_size=queue_size, ordered=ordered or None
    )
    calls = CallOptions(
        retries=retries,
        retry_on=retry_types,
        timeout=None if timeout is None else float(timeout),
        initial_delay=float(initial_delay),
        backoff_factor=float(backoff_factor),
        max_delay=float("inf") if max_delay is None else float(max_delay),
        jitter=float(jitter),
        backoff=backoff,
    )
    if isinstance(target, Stage):
        return target._with(name, options.over(target.options), _nest(target.calls, calls))
    return Stage(target, kind=classify(target), name=name, options=options, calls=calls)


def _nest(inner: CallOptions, outer: CallOptions) -> CallOptions:
    """Merge the call options of ``stage(stage(f, ...), ...)``.

    The outer call overrides only what it sets (a value other than the default);
    everything else the inner one set is kept (retries, ``retry_on``, timeout and backoff
    included). Delays the outer call describes replace an inner schedule.
    """
    plain = PLAIN_CALLS
    if outer.backoff is not None:  # (user objects: never compared, never called)
        delays = replace(inner, backoff=outer.backoff)
    elif (
        outer.initial_delay,
        outer.backoff_factor,
        outer.max_delay,
        outer.jitter,
    ) != (plain.initial_delay, plain.backoff_factor, plain.max_delay, plain.jitter):
        # the outer call describes its own delays: they replace an inner schedule
        delays = replace(
            inner,
            initial_delay=_given(outer.initial_delay, plain.initial_delay, inner.initial_delay),
            backoff_factor=_given(outer.backoff_factor, plain.backoff_factor, inner.backoff_factor),
            max_delay=_given(outer.max_delay, plain.max_delay, inner.max_delay),
            jitter=_given(outer.jitter, plain.jitter, inner.jitter),
            backoff=None,
        )
    else:
        delays = inner
    return replace(
        delays,
        timeout=inner.timeout if outer.timeout is None else outer.timeout,
        retries=_given(outer.retries, plain.retries, inner.retries),
        retry_on=_given(outer.retry_on, plain.retry_on, inner.retry_on),
    )


def _given(outer: T, unset: T, inner: T) -> T:
    """``outer`` if the outer call set it (not the default), else ``inner``."""
    return inner if outer == unset else outer


def batched(
    size: int, *, max_wait: float | None = None, name: str = "batched"
) -> Stage[Any, list[Any]]:
    """A stage that groups items into lists of ``size`` (one worker).

    A batch is emitted when it is full, when ``max_wait`` seconds (loop clock) have
    passed since its **first** item arrived, and, partial, at the end of the stream.
    Its items are of the type the stage before it emits (``flow()`` infers the lists'
    type from the stages around it; annotate ``Stage[T, list[T]]`` to pin it).

    Args:
        size: items per batch, ``>= 1``.
        max_wait: the longest a batch waits for more items (``None``: no limit), ``> 0``.
        name: the stage's name.

    Returns:
        A :class:`Stage` emitting ``list``s.

    Raises:
        ConfigurationError: for a bad ``size``, ``max_wait`` or ``name``.
    """
    check_int("size", size, ge=1)
    check_optional_number("max_wait", max_wait, gt=0)
    check_name(name, error=ConfigurationTypeError)
    return Stage(
        None,
        kind=Kind.BATCHED,
        name=name,
        options=Settings(scaling=FixedScaling(1)),
        batching=Batching(size, None if max_wait is None else float(max_wait)),
    )


def router(
    classifier: Callable[[A], Awaitable[object]],
    /,
    *,
    default: Any = None,
    name: str | None = None,
    **arms: Any,
) -> Stage[A, Any]:
    """Route each item to one arm by the label ``await classifier(item)`` returns.

    Arms are stage targets (functions, context manager factories, ``Flow``s); their
    outputs merge into the stage after the router. An item whose label has no arm goes
    to ``default``, or, without one, is dropped (a ``Dropped(ROUTER_MISS)`` event,
    counted as filtered).

    Args:
        classifier: ``async def classify(item) -> label``.
        default: the arm for unknown labels.
        name: the router's name (default: the classifier's ``__name__``).
        **arms: label -> arm.

    Returns:
        A :class:`Stage` taking the classifier's items.

    Raises:
        TypeError: when the classifier is not async or there is no arm.
        ConfigurationError: for a bad ``name``.
    """
    if not is_async_callable(classifier):
        raise TypeError("router() classifier must be an async function: async def f(item)")
    check_name(name, error=ConfigurationTypeError)
    if not arms and default is None:
        raise TypeError("router() needs at least one arm")
    for label, arm in arms.items():
        if not isinstance(arm, Stage):
            classify(arm, where=f"router arm {label!r}")
    if default is not None and not isinstance(default, Stage):
        classify(default, where="router default arm")
    return Stage(classifier, kind=Kind.ROUTER, name=name, arms=dict(arms), default=default)


def sync_stage(fn: Callable[[T], R]) -> Callable[[T], Awaitable[R]]:
    """Make a sync function a stage: each call runs in a thread (``asyncio.to_thread``).

    Args:
        fn: a blocking function of one item.

    Returns:
        An async function with ``fn``'s name.
    """

    @functools.wraps(fn)
    async def wrapped(item: T) -> R:
        return await asyncio.to_thread(fn, item)

    return wrapped


def as_stage(target: object) -> Stage[object, object]:
    """Return ``target`` as a :class:`Stage` (positional forms of :func:`flow`)."""
    if isinstance(target, Stage):
        return target
    return Stage(target, kind=classify(target))
