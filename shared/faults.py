"""Fault injection at every point where a package calls user code.

Each package keeps one table (``POINTS``) of :class:`Point`: a name, the faults that apply,
and a driver that builds a component with a misbehaving callback, runs it, and asserts the
outcome. The harness runs every (point, fault) pair on virtual time in a loop of its own
and checks what every point must keep, whatever the callback does:

- the run ends in bounded (virtual) time: a driver that is still running after
  ``deadline`` virtual seconds fails;
- no ``KeyboardInterrupt``/``SystemExit`` escapes from a background task into the loop
  (it must reach the caller that awaits the component);
- nothing is left running: no task the driver started is pending when it returns.

The driver asserts the rest for its point: the caller sees the user's error (or a headrace
error chaining it), the component's ``snapshot()`` is back to idle, and the next call works.

:func:`callable_parameters` walks a package's public signatures and lists every parameter
that accepts a callable (or a user object the package calls into), so a test can fail when
a new one is not in the table (:func:`missing_points`).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from headrace_core.testing import VirtualClock

__all__ = [
    "ALL_FAULTS",
    "ASYNC_FAULTS",
    "ITERATOR_FAULTS",
    "SYNC_FAULTS",
    "Fault",
    "FaultError",
    "Point",
    "ainject",
    "callable_parameters",
    "cases",
    "expected_error",
    "inject",
    "missing_points",
    "outcome",
    "run_injection",
    "settle",
]


class Fault(enum.Enum):
    """One way a callback can misbehave."""

    RAISE = "raise"
    """Raise :class:`FaultError`, an ordinary ``Exception`` of the user's."""
    KEYBOARD_INTERRUPT = "keyboard_interrupt"
    """Raise ``KeyboardInterrupt``."""
    SYSTEM_EXIT = "system_exit"
    """Raise ``SystemExit``."""
    CANCEL = "cancel"
    """Raise ``asyncio.CancelledError`` itself (the caller's task is not being cancelled)."""
    WRONG = "wrong"
    """Return a wrong value (the driver picks it: wrong type, ``None``, NaN, wrong length)."""
    HANG = "hang"
    """Never return (an async callback awaiting for ever), under a caller's deadline."""
    EARLY_END = "early_end"
    """An iterator or iterable that ends before the caller expects."""


SYNC_FAULTS: tuple[Fault, ...] = (
    Fault.RAISE,
    Fault.KEYBOARD_INTERRUPT,
    Fault.SYSTEM_EXIT,
    Fault.CANCEL,
    Fault.WRONG,
)
"""The faults of a synchronous callback (it cannot hang without freezing the loop)."""
ASYNC_FAULTS: tuple[Fault, ...] = (*SYNC_FAULTS, Fault.HANG)
"""The faults of an asynchronous callback."""
ITERATOR_FAULTS: tuple[Fault, ...] = (*ASYNC_FAULTS, Fault.EARLY_END)
"""The faults of an (async) iterator: everything, plus ending early."""
ALL_FAULTS: tuple[Fault, ...] = tuple(Fault)


class FaultError(Exception):
    """The user's own error, raised by an injected callback."""


_RAISED: dict[Fault, Callable[[], BaseException]] = {
    Fault.RAISE: lambda: FaultError("injected"),
    Fault.KEYBOARD_INTERRUPT: KeyboardInterrupt,
    Fault.SYSTEM_EXIT: lambda: SystemExit(3),
    Fault.CANCEL: lambda: asyncio.CancelledError("injected"),
}


def expected_error(fault: Fault) -> type[BaseException] | None:
    """Return the exception type ``fault`` raises, or None for faults that do not raise."""
    return {
        Fault.RAISE: FaultError,
        Fault.KEYBOARD_INTERRUPT: KeyboardInterrupt,
        Fault.SYSTEM_EXIT: SystemExit,
        Fault.CANCEL: asyncio.CancelledError,
    }.get(fault)


def inject(fault: Fault, wrong: object = None) -> Any:
    """Misbehave synchronously: raise what ``fault`` raises, or return ``wrong``.

    ``HANG`` and ``EARLY_END`` cannot be injected synchronously (a driver handles them).
    """
    make = _RAISED.get(fault)
    if make is not None:
        raise make()
    if fault is Fault.WRONG:
        return wrong
    raise AssertionError(f"{fault} cannot be injected by a synchronous callback")


async def ainject(fault: Fault, wrong: object = None) -> Any:
    """Misbehave asynchronously: like :func:`inject`, and ``HANG`` never returns."""
    await asyncio.sleep(0)
    if fault is Fault.HANG:
        await asyncio.Event().wait()
    return inject(fault, wrong)


@dataclass(frozen=True)
class Point:
    """One point where a package calls user code.

    Attributes:
        name: the parameter or hook, as ``"Owner.param"`` (``"CircuitBreaker.record"``,
            ``"Bulkhead.call.fn"``, ``"batch.key"``) or a dunder (``"item.__repr__"``).
        faults: the faults that apply here.
        drive: ``async def drive(fault)``: runs one injection on the active virtual clock
            and asserts the outcome, idle state, and that the next call works.
        also: other names this point covers (aliases of the same callback).
    """

    name: str
    faults: Sequence[Fault]
    drive: Callable[[Fault], Awaitable[None]]
    also: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        """The point's name and its aliases."""
        return (self.name, *self.also)


#: Clock magnitudes the injections start at, in turn: decisions must not flip with them.
STARTS = (0.0, 1e3, 1e6)


def cases(points: Iterable[Point]) -> Iterator[Any]:
    """Yield one ``pytest.param(point, fault, start)`` per applicable pair, with a readable id.

    Successive cases start the virtual clock at 0, 1e3 and 1e6 seconds in turn.
    """
    import pytest

    n = 0
    for point in points:
        for fault in point.faults:
            yield pytest.param(
                point, fault, STARTS[n % len(STARTS)], id=f"{point.name}-{fault.value}"
            )
            n += 1


def run_injection(
    drive: Callable[[Fault], Awaitable[None]],
    fault: Fault,
    *,
    start: float = 0.0,
    deadline: float = 3600.0,
) -> None:
    """Run ``drive(fault)`` on a fresh loop under a virtual clock starting at ``start``.

    Fails (``AssertionError``) when the driver does not end within ``deadline`` virtual
    seconds, when a ``BaseException`` escapes a background task into the loop, or when a
    task the driver started is still pending after it returns.
    """
    loop = asyncio.new_event_loop()
    errors: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(str(context.get("message")) + ": " + repr(context.get("exception")))

    loop.set_exception_handler(handler)

    async def main() -> None:
        with VirtualClock(start=start) as clock:
            before = asyncio.all_tasks()
            me = asyncio.current_task()
            try:
                async with asyncio.timeout(deadline):
                    await drive(fault)
            except TimeoutError as exc:
                if clock.now() - start >= deadline:
                    raise AssertionError(
                        f"{fault}: did not end within {deadline} virtual seconds"
                    ) from exc
                raise
            left: set[asyncio.Task[Any]] = set()
            for _ in range(10):
                left = {t for t in asyncio.all_tasks() - before if t is not me and not t.done()}
                if not left:
                    break
                await asyncio.sleep(0)
            if left:
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
                raise AssertionError(
                    f"{fault}: left {len(left)} task(s) pending: {sorted(map(repr, left))}"
                )

    task = loop.create_task(main())
    try:
        while not task.done():
            try:
                loop.run_until_complete(task)
            except (KeyboardInterrupt, SystemExit) as escaped:
                if task.done() and task.exception() is escaped:
                    break
                errors.append(f"{type(escaped).__name__} escaped a background task into the loop")
        # Let callbacks scheduled by the end of the driver run, then close.
        loop.run_until_complete(asyncio.sleep(0))
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    if errors:
        raise AssertionError(f"{fault}: " + "; ".join(errors))
    failure: BaseException | None = task.exception()
    if failure is not None and not isinstance(failure, Exception):
        raise AssertionError(
            f"{fault}: the driver let {type(failure).__name__} escape"
        ) from failure
    if failure is not None:
        raise failure


# -- the signature walk ---------------------------------------------------------------

#: Annotation words that mean "this parameter takes code the package will call".
CALLABLE_WORDS = (
    "Callable",
    "Awaitable",
    "Coroutine",
    "Iterable",
    "Iterator",
    "AsyncIterable",
    "AsyncIterator",
    "Backoff",
    "Store",
    "Listener",
    "Strategy",
    "Handler",
    "Predicate",
    "ContextManager",
    "Limit",
    "Stage",
    "Source",
    "Sink",
    "Classifier",
    "ExcSpec",
    "Policy",
    "Clock",
    "Random",
    "Codec",
    "Scaling",
    "Router",
    "Factory",
)


def _annotation_text(annotation: object) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", None) or repr(annotation)


async def outcome(awaitable: Awaitable[Any], deadline: float | None = None) -> Any:
    """Await ``awaitable`` under the caller's ``deadline``; return its value or what it raised.

    Catching every ``BaseException`` here, inside the caller's task, keeps a
    ``KeyboardInterrupt``/``SystemExit`` the call raises from ending the task, which would
    re-raise it into the event loop; the driver asserts on the returned exception.
    """
    try:
        async with asyncio.timeout(deadline):
            return await awaitable
    except BaseException as exc:
        return exc


def _signature(obj: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def callable_parameters(
    module: ModuleType,
    *,
    words: Iterable[str] = CALLABLE_WORDS,
    names: Iterable[str] | None = None,
) -> set[str]:
    """Return ``"Owner.param"`` / ``"Owner.method.param"`` for every callable-taking parameter.

    Walks every name of ``module.__all__`` (or ``names``): functions, and for classes their
    ``__init__`` and public methods. A parameter counts when its annotation contains one
    of ``words`` (e.g. ``Callable``, ``Backoff``, ``Store`` in ``BreakerStore``) or when it
    is unannotated and named like code (``fn``, ``func``, ``callback``, ``key``).
    """
    pattern = re.compile("|".join(re.escape(w) for w in words))
    found: set[str] = set()

    def visit(owner: str, fn: Callable[..., Any]) -> None:
        sig = _signature(fn)
        if sig is None:
            return
        for param in sig.parameters.values():
            if param.name in ("self", "cls"):
                continue
            text = _annotation_text(param.annotation)
            unannotated = not text and param.name in ("fn", "func", "callback", "key")
            if unannotated or pattern.search(text):
                found.add(f"{owner}.{param.name}")

    for name in names if names is not None else getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj):
            if issubclass(obj, BaseException) or issubclass(obj, enum.Enum):
                continue
            if "__init__" in vars(obj) or any("__init__" in vars(b) for b in obj.__mro__[1:-1]):
                visit(name, obj.__init__)
            for attr, member in inspect.getmembers(obj):
                if attr.startswith("_"):
                    continue
                raw = inspect.getattr_static(obj, attr)
                if isinstance(raw, property):
                    continue
                if callable(member):
                    visit(f"{name}.{attr}", member)
        elif callable(obj):
            visit(name, obj)
    return found


def missing_points(
    module: ModuleType,
    points: Iterable[Point],
    *,
    exclude: Mapping[str, str] | None = None,
    **walk: Any,
) -> list[str]:
    """Return the callable-taking parameters of ``module`` that no point of the table names.

    ``exclude`` maps a walked name that is not user code (a headrace object, a plain
    type) to the reason it is not a point; an entry that the walk no longer finds is
    reported too, so the exclusions cannot go stale.
    """
    covered = {n for p in points for n in p.names}
    excluded = dict(exclude or {})
    found = callable_parameters(module, **walk)
    stale = [f"stale exclusion: {n}" for n in sorted(set(excluded) - found)]
    return sorted(found - covered - set(excluded)) + stale


async def settle(component: Any) -> None:
    """Wait for a component's background work and async listeners, leaving it open.

    ``aclose()`` waits for the same and then refuses new calls; a driver that goes on
    using the component after its background work ended uses this instead.
    """
    for inner in getattr(component, "guards", ()):  # a pipeline: its guards' listeners
        await settle(inner)
    background = getattr(component, "_background", None)
    if background is not None:
        await background.aclose()
    await component._listeners.aclose()


def is_nan(value: object) -> bool:
    """Return whether ``value`` is a float NaN (helper for WRONG-return assertions)."""
    return isinstance(value, float) and math.isnan(value)
