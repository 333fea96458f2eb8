"""Plumbing for the packages built on headrace-core, and for components of your own.

Users of headrace rarely need these; they are what every headrace package uses to bind
state to event loops, validate arguments in the house format, read the loop clock, compare
waits with their bounds, and talk about user code safely:

- :class:`PerLoop`, :class:`LoopBinding`: state per event loop, and binding a component to
  the loop of its first use; :func:`future_maker`: a loop's ``create_future`` for hot paths.
- :func:`loop_time`: the running loop's clock.
- :func:`within` and :data:`TIME_TOLERANCE`: a wait or deadline meets its bound the same
  way at every clock magnitude.
- :func:`check_number`, :func:`check_optional_number`, :func:`check_int`,
  :func:`check_callable`, :func:`check_name`, :func:`is_async_callable`: argument checks
  raising ``ConfigurationError`` that names the argument and the value; :data:`Clock`, the
  type of a ``clock=`` argument.
- :func:`finish_tasks`: await background tasks with a bound, cancelling the late ones;
  :func:`start_task` and :func:`first_step`: a background task whose cleanup runs even
  when something else cancels it before its first step; :func:`despite_cancel`: its job
  done all the same, within a bound.
- :class:`Deadline`, :func:`bounded`, :func:`raise_if_expired`: ``asyncio.timeout``
  whose expiry raises a component's own error; :class:`Deadlines`: one loop timer for
  many deadlines of one length, each call keeping asyncio's own ``Timeout``.
- :func:`safe_repr`, :func:`callable_name`, :func:`being_cancelled`: show a user's object
  without calling a raising ``__repr__``, name a callback, and tell a task's own
  cancellation from a ``CancelledError`` that user code raised; :func:`keep_cancel`:
  await a client that may swallow the task's cancellation.
- :class:`Lifecycle`: the family's one ``aclose()`` contract (closed or open, the calls
  running, waiting until none is).
- :class:`EventLog`: structured, rate-limited log records of a component's events, on
  its package's ``headrace.<package>`` logger.
"""

from headrace_core._deadline import Deadline as Deadline
from headrace_core._deadline import bounded as bounded
from headrace_core._deadline import raise_if_expired as raise_if_expired
from headrace_core._errors import being_cancelled as being_cancelled
from headrace_core._errors import callable_name as callable_name
from headrace_core._errors import keep_cancel as keep_cancel
from headrace_core._errors import safe_repr as safe_repr
from headrace_core._lifecycle import Lifecycle as Lifecycle
from headrace_core._listeners import finish_tasks as finish_tasks
from headrace_core._logging import EventLog as EventLog
from headrace_core._loop import TIME_TOLERANCE as TIME_TOLERANCE
from headrace_core._loop import LoopBinding as LoopBinding
from headrace_core._loop import PerLoop as PerLoop
from headrace_core._loop import future_maker as future_maker
from headrace_core._loop import within as within
from headrace_core._stats import loop_time as loop_time
from headrace_core._tasks import despite_cancel as despite_cancel
from headrace_core._tasks import first_step as first_step
from headrace_core._tasks import start_task as start_task
from headrace_core._validate import Clock as Clock
from headrace_core._validate import check_callable as check_callable
from headrace_core._validate import check_int as check_int
from headrace_core._validate import check_name as check_name
from headrace_core._validate import check_number as check_number
from headrace_core._validate import check_optional_number as check_optional_number
from headrace_core._validate import is_async_callable as is_async_callable
from headrace_core._watch import Deadlines as Deadlines

__all__ = [
    "TIME_TOLERANCE",
    "Clock",
    "Deadline",
    "Deadlines",
    "EventLog",
    "Lifecycle",
    "LoopBinding",
    "PerLoop",
    "being_cancelled",
    "bounded",
    "callable_name",
    "check_callable",
    "check_int",
    "check_name",
    "check_number",
    "check_optional_number",
    "despite_cancel",
    "finish_tasks",
    "first_step",
    "future_maker",
    "is_async_callable",
    "keep_cancel",
    "loop_time",
    "raise_if_expired",
    "safe_repr",
    "start_task",
    "within",
]

for _obj in (
    Deadline,
    Deadlines,
    EventLog,
    Lifecycle,
    LoopBinding,
    PerLoop,
    being_cancelled,
    bounded,
    callable_name,
    check_callable,
    check_int,
    check_name,
    check_number,
    check_optional_number,
    despite_cancel,
    finish_tasks,
    first_step,
    future_maker,
    is_async_callable,
    keep_cancel,
    loop_time,
    raise_if_expired,
    safe_repr,
    start_task,
    within,
):
    _obj.__module__ = __name__
del _obj
