"""headrace-flow: async pipelines with backpressure, autoscaling stages and graceful drain."""

from headrace_core import Closed as Closed
from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import HeadraceError as HeadraceError
from headrace_flow._errors import Dropped as Dropped
from headrace_flow._errors import DropReason as DropReason
from headrace_flow._errors import ErrorEvent as ErrorEvent
from headrace_flow._errors import FlowClosed as FlowClosed
from headrace_flow._errors import FlowEvent as FlowEvent
from headrace_flow._errors import ScaleEvent as ScaleEvent
from headrace_flow._errors import SourceError as SourceError
from headrace_flow._errors import StageTimeout as StageTimeout
from headrace_flow._errors import TransformerError as TransformerError
from headrace_flow._errors import log_and_continue as log_and_continue
from headrace_flow._factory import flow as flow
from headrace_flow._flow import Flow as Flow
from headrace_flow._markers import DROP as DROP
from headrace_flow._markers import Drop as Drop
from headrace_flow._markers import Last as Last
from headrace_flow._process import ProcessStageError as ProcessStageError
from headrace_flow._process import process_stage as process_stage
from headrace_flow._process import thread_stage as thread_stage
from headrace_flow._push import PushHandle as PushHandle
from headrace_flow._queues import AsyncQueueInterface as AsyncQueueInterface
from headrace_flow._queues import QueueFactory as QueueFactory
from headrace_flow._queues import QueueLike as QueueLike
from headrace_flow._queues import fifo_queue as fifo_queue
from headrace_flow._queues import lifo_queue as lifo_queue
from headrace_flow._queues import priority_queue as priority_queue
from headrace_flow._scaling import FixedScaling as FixedScaling
from headrace_flow._scaling import ScalingStrategy as ScalingStrategy
from headrace_flow._scaling import UtilizationScaling as UtilizationScaling
from headrace_flow._stages import Stage as Stage
from headrace_flow._stages import batched as batched
from headrace_flow._stages import router as router
from headrace_flow._stages import stage as stage
from headrace_flow._stages import sync_stage as sync_stage
from headrace_flow._stats import FlowStats as FlowStats
from headrace_flow._stats import StageSnapshot as StageSnapshot
from headrace_flow._stats import StageStats as StageStats
from headrace_flow._version import __version__ as __version__

__all__ = [
    "DROP",
    "AsyncQueueInterface",
    "Closed",
    "ConfigurationError",
    "Drop",
    "DropReason",
    "Dropped",
    "ErrorEvent",
    "FixedScaling",
    "Flow",
    "FlowClosed",
    "FlowEvent",
    "FlowStats",
    "HeadraceError",
    "Last",
    "ProcessStageError",
    "PushHandle",
    "QueueFactory",
    "QueueLike",
    "ScaleEvent",
    "ScalingStrategy",
    "SourceError",
    "Stage",
    "StageSnapshot",
    "StageStats",
    "StageTimeout",
    "TransformerError",
    "UtilizationScaling",
    "batched",
    "fifo_queue",
    "flow",
    "lifo_queue",
    "log_and_continue",
    "priority_queue",
    "process_stage",
    "router",
    "stage",
    "sync_stage",
    "thread_stage",
]

for _obj in (
    AsyncQueueInterface,
    Drop,
    DropReason,
    Dropped,
    FixedScaling,
    Flow,
    FlowClosed,
    FlowStats,
    Last,
    ProcessStageError,
    PushHandle,
    QueueFactory,
    QueueLike,
    ScaleEvent,
    ScalingStrategy,
    SourceError,
    Stage,
    StageSnapshot,
    StageStats,
    StageTimeout,
    TransformerError,
    UtilizationScaling,
    batched,
    fifo_queue,
    flow,
    lifo_queue,
    log_and_continue,
    priority_queue,
    process_stage,
    router,
    stage,
    sync_stage,
    thread_stage,
):
    _obj.__module__ = __name__
del _obj
