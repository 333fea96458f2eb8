"""headrace-leveled: a tiered and dependency-graph task processor with guaranteed cleanup.

Declare tasks with up to three phases (``pre_execute``, ``execute``, ``post_execute``),
join them by ``level=`` and/or ``depends_on=``, build an immutable :class:`Processor`
and run it: pres by level or dependency, executes once every pre succeeded, posts in
reverse for every task that was entered, shielded from cancellation. A run returns a
:class:`RunReport` or raises a flat, attributed :class:`ProcessorError`.

sdax's names (``AsyncTaskProcessor``, ``AsyncTask``, ``task_func``, ``join``, ...) are
aliases of the same objects, so sdax code runs after changing the import.
"""

from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import GuardTimeout as GuardTimeout
from headrace_core import HeadraceError as HeadraceError
from headrace_leveled._errors import CycleError as CycleError
from headrace_leveled._errors import GraphError as GraphError
from headrace_leveled._errors import PhaseTimeout as PhaseTimeout
from headrace_leveled._errors import RetryableError as RetryableError
from headrace_leveled._errors import flatten_exceptions as flatten_exceptions
from headrace_leveled._function import PhaseGuard as PhaseGuard
from headrace_leveled._function import TaskFunction as TaskFunction
from headrace_leveled._observe import ProcessorEvent as ProcessorEvent
from headrace_leveled._observe import ProcessorSnapshot as ProcessorSnapshot
from headrace_leveled._processor import Builder as Builder
from headrace_leveled._processor import PhaseRunner as PhaseRunner
from headrace_leveled._processor import Processor as Processor
from headrace_leveled._report import PhaseReport as PhaseReport
from headrace_leveled._report import ProcessorError as ProcessorError
from headrace_leveled._report import RunReport as RunReport
from headrace_leveled._report import TaskReport as TaskReport
from headrace_leveled._task import SdaxTaskGroup as SdaxTaskGroup
from headrace_leveled._task import Task as Task
from headrace_leveled._task import join as join
from headrace_leveled._task import task as task
from headrace_leveled._task import task_func as task_func
from headrace_leveled._task import task_group_func as task_group_func
from headrace_leveled._task import task_group_task as task_group_task
from headrace_leveled._task import task_sync_func as task_sync_func
from headrace_leveled._types import Phase as Phase
from headrace_leveled._types import TaskFailure as TaskFailure
from headrace_leveled._types import TaskState as TaskState
from headrace_leveled._version import __version__ as __version__

# sdax's names: the same objects under the names sdax code imports.
AsyncTaskProcessor = Processor
AsyncDagTaskProcessor = Processor
AsyncTaskProcessorBuilder = Builder
AsyncDagTaskProcessorBuilder = Builder
AsyncDagLevelAdapterBuilder = Builder
AsyncPhaseRunner = PhaseRunner
AsyncTask = Task
PhaseId = Phase
SdaxExecutionError = ProcessorError
RetryableException = RetryableError

__all__ = [
    "AsyncDagLevelAdapterBuilder",
    "AsyncDagTaskProcessor",
    "AsyncDagTaskProcessorBuilder",
    "AsyncPhaseRunner",
    "AsyncTask",
    "AsyncTaskProcessor",
    "AsyncTaskProcessorBuilder",
    "Builder",
    "ConfigurationError",
    "CycleError",
    "GraphError",
    "GuardTimeout",
    "HeadraceError",
    "Phase",
    "PhaseGuard",
    "PhaseId",
    "PhaseReport",
    "PhaseRunner",
    "PhaseTimeout",
    "Processor",
    "ProcessorError",
    "ProcessorEvent",
    "ProcessorSnapshot",
    "RetryableError",
    "RetryableException",
    "RunReport",
    "SdaxExecutionError",
    "SdaxTaskGroup",
    "Task",
    "TaskFailure",
    "TaskFunction",
    "TaskReport",
    "TaskState",
    "flatten_exceptions",
    "join",
    "task",
    "task_func",
    "task_group_func",
    "task_group_task",
    "task_sync_func",
]

for _obj in (
    Builder,
    CycleError,
    GraphError,
    PhaseGuard,
    Phase,
    PhaseReport,
    PhaseRunner,
    PhaseTimeout,
    Processor,
    ProcessorError,
    ProcessorEvent,
    ProcessorSnapshot,
    RetryableError,
    RunReport,
    SdaxTaskGroup,
    Task,
    TaskFailure,
    TaskFunction,
    TaskReport,
    TaskState,
    flatten_exceptions,
    join,
    task,
    task_func,
    task_group_func,
    task_sync_func,
):
    _obj.__module__ = __name__
del _obj
