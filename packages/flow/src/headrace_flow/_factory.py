"""``flow(*stages)``: build a :class:`Flow`, typed stage to stage."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from headrace_core import ConfigurationError, ConfigurationTypeError
from headrace_core.lowlevel import check_int
from headrace_flow._flow import Flow
from headrace_flow._plan import Settings
from headrace_flow._queues import QueueFactory, fifo_queue
from headrace_flow._scaling import as_strategy
from headrace_flow._stages import StageLike, as_stage

__all__ = ["flow"]

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")
F = TypeVar("F")
G = TypeVar("G")
H = TypeVar("H")
I = TypeVar("I")  # noqa: E741


@overload
def flow(
    s0: StageLike[A, B],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, B]: ...


@overload
def flow(
    s0: object,
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[Any, Any]: ...  # (not a stage form: raises TypeError)


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, C]: ...


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    s2: StageLike[C, D],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, D]: ...


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    s2: StageLike[C, D],
    s3: StageLike[D, E],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, E]: ...


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    s2: StageLike[C, D],
    s3: StageLike[D, E],
    s4: StageLike[E, F],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, F]: ...


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    s2: StageLike[C, D],
    s3: StageLike[D, E],
    s4: StageLike[E, F],
    s5: StageLike[F, G],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, G]: ...


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    s2: StageLike[C, D],
    s3: StageLike[D, E],
    s4: StageLike[E, F],
    s5: StageLike[F, G],
    s6: StageLike[G, H],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, H]: ...


@overload
def flow(
    s0: StageLike[A, B],
    s1: StageLike[B, C],
    s2: StageLike[C, D],
    s3: StageLike[D, E],
    s4: StageLike[E, F],
    s5: StageLike[F, G],
    s6: StageLike[G, H],
    s7: StageLike[H, I],
    /,
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[A, I]: ...


@overload
def flow(
    s0: StageLike[Any, Any],
    s1: StageLike[Any, Any],
    s2: StageLike[Any, Any],
    s3: StageLike[Any, Any],
    s4: StageLike[Any, Any],
    s5: StageLike[Any, Any],
    s6: StageLike[Any, Any],
    s7: StageLike[Any, Any],
    s8: StageLike[Any, Any],
    /,
    *stages: StageLike[Any, Any],
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[Any, Any]: ...


@overload
def flow(
    *,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[Any, Any]: ...  # (no stage: raises TypeError)


def flow(
    *stages: Any,
    on_error: Any = None,
    default_scaling: Any = None,
    default_queue: QueueFactory = fifo_queue,
    default_queue_size: int = 1,
) -> Flow[Any, Any]:
    """Build a flow from stages, in order; the last one is the sink.

    Each stage is an async item function (``return DROP`` filters), an async generator
    function (fan-out), a no-argument async context manager factory (entered once per
    worker), a ``Flow`` (inlined; its stages get dotted names), ``stage(...)``,
    ``router(...)`` or ``batched(...)``.

    Args:
        *stages: the stages.
        on_error: the error handler (default: none, fail fast).
        default_scaling: the scaling of stages that set none (default ``FixedScaling(1)``).
        default_queue: the queue factory of stages that set none.
        default_queue_size: the queue bound of stages that set none (``0`` = unbounded).

    Returns:
        The :class:`Flow`.

    Raises:
        ConfigurationError: for a bad default.
        TypeError: for no stage (a ``ConfigurationTypeError``), a sync callable (use
            ``sync_stage``) or a non-stage.
    """
    if not stages:
        raise ConfigurationTypeError.argument_error(
            "stages", stages, "flow() needs at least one stage (or build one with Flow())"
        )
    result: Flow[Any, Any] = Flow(on_error=on_error)
    scaling = None if default_scaling is None else as_strategy(default_scaling, "default_scaling")
    queue: QueueFactory | None = None
    if default_queue is not fifo_queue:
        if not callable(default_queue):
            raise ConfigurationError.argument_error(
                "default_queue", default_queue, "must be a queue factory"
            )
        queue = default_queue
    size = None
    if type(default_queue_size) is not int or default_queue_size != 1:  # (True == 1.0 == 1)
        size = check_int("default_queue_size", default_queue_size, ge=0)
    result._defaults = Settings(scaling=scaling, queue=queue, queue_size=size)
    result._parts = [as_stage(s) for s in stages]
    result._compiled()
    return result
