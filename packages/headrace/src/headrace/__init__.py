"""headrace: the family of small, fast, fully typed asyncio concurrency libraries.

This umbrella re-exports every public name of headrace-core, headrace-guards,
headrace-coalesce, headrace-leveled, headrace-flow and headrace-throttle, as the same
objects. ``python -m headrace`` runs a live tour of the family.

This file is written by ``scripts/sync_umbrella.py``; do not edit it by hand.
"""

from headrace._version import __version__ as __version__
from headrace_coalesce import BatchFunction as BatchFunction
from headrace_coalesce import BatchRoutingError as BatchRoutingError
from headrace_coalesce import CoalesceEvent as CoalesceEvent
from headrace_coalesce import CoalesceStats as CoalesceStats
from headrace_coalesce import Loader as Loader
from headrace_coalesce import MissingResult as MissingResult
from headrace_coalesce import batch as batch
from headrace_coalesce import collect as collect
from headrace_core import BackoffError as BackoffError
from headrace_core import BulkheadFull as BulkheadFull
from headrace_core import CapacityExceeded as CapacityExceeded
from headrace_core import CircuitOpenError as CircuitOpenError
from headrace_core import CircuitState as CircuitState
from headrace_core import Closed as Closed
from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import ConfigurationTypeError as ConfigurationTypeError
from headrace_core import GuardTimeout as GuardTimeout
from headrace_core import HeadraceError as HeadraceError
from headrace_core import RateLimited as RateLimited
from headrace_core import Rejected as Rejected
from headrace_flow import DROP as DROP
from headrace_flow import AsyncQueueInterface as AsyncQueueInterface
from headrace_flow import Drop as Drop
from headrace_flow import Dropped as Dropped
from headrace_flow import DropReason as DropReason
from headrace_flow import ErrorEvent as ErrorEvent
from headrace_flow import FixedScaling as FixedScaling
from headrace_flow import Flow as Flow
from headrace_flow import FlowClosed as FlowClosed
from headrace_flow import FlowEvent as FlowEvent
from headrace_flow import FlowStats as FlowStats
from headrace_flow import Last as Last
from headrace_flow import ProcessStageError as ProcessStageError
from headrace_flow import PushHandle as PushHandle
from headrace_flow import QueueFactory as QueueFactory
from headrace_flow import QueueLike as QueueLike
from headrace_flow import ScaleEvent as ScaleEvent
from headrace_flow import ScalingStrategy as ScalingStrategy
from headrace_flow import SourceError as SourceError
from headrace_flow import Stage as Stage
from headrace_flow import StageSnapshot as StageSnapshot
from headrace_flow import StageStats as StageStats
from headrace_flow import StageTimeout as StageTimeout
from headrace_flow import TransformerError as TransformerError
from headrace_flow import UtilizationScaling as UtilizationScaling
from headrace_flow import batched as batched
from headrace_flow import fifo_queue as fifo_queue
from headrace_flow import flow as flow
from headrace_flow import lifo_queue as lifo_queue
from headrace_flow import log_and_continue as log_and_continue
from headrace_flow import priority_queue as priority_queue
from headrace_flow import process_stage as process_stage
from headrace_flow import router as router
from headrace_flow import stage as stage
from headrace_flow import sync_stage as sync_stage
from headrace_flow import thread_stage as thread_stage
from headrace_guards import BreakerSnapshot as BreakerSnapshot
from headrace_guards import Bulkhead as Bulkhead
from headrace_guards import BulkheadSnapshot as BulkheadSnapshot
from headrace_guards import CircuitBreaker as CircuitBreaker
from headrace_guards import Consecutive as Consecutive
from headrace_guards import CountWindow as CountWindow
from headrace_guards import Fallback as Fallback
from headrace_guards import FallbackSnapshot as FallbackSnapshot
from headrace_guards import GuardEvent as GuardEvent
from headrace_guards import Hedge as Hedge
from headrace_guards import HedgeSnapshot as HedgeSnapshot
from headrace_guards import Pipeline as Pipeline
from headrace_guards import PipelineSnapshot as PipelineSnapshot
from headrace_guards import RateLimiter as RateLimiter
from headrace_guards import RateLimiterSnapshot as RateLimiterSnapshot
from headrace_guards import Retry as Retry
from headrace_guards import RetrySnapshot as RetrySnapshot
from headrace_guards import Timeout as Timeout
from headrace_guards import TimeoutSnapshot as TimeoutSnapshot
from headrace_guards import TimeWindow as TimeWindow
from headrace_guards import pipeline as pipeline
from headrace_leveled import AsyncDagLevelAdapterBuilder as AsyncDagLevelAdapterBuilder
from headrace_leveled import AsyncDagTaskProcessor as AsyncDagTaskProcessor
from headrace_leveled import AsyncDagTaskProcessorBuilder as AsyncDagTaskProcessorBuilder
from headrace_leveled import AsyncPhaseRunner as AsyncPhaseRunner
from headrace_leveled import AsyncTask as AsyncTask
from headrace_leveled import AsyncTaskProcessor as AsyncTaskProcessor
from headrace_leveled import AsyncTaskProcessorBuilder as AsyncTaskProcessorBuilder
from headrace_leveled import Builder as Builder
from headrace_leveled import CycleError as CycleError
from headrace_leveled import GraphError as GraphError
from headrace_leveled import Phase as Phase
from headrace_leveled import PhaseGuard as PhaseGuard
from headrace_leveled import PhaseId as PhaseId
from headrace_leveled import PhaseReport as PhaseReport
from headrace_leveled import PhaseRunner as PhaseRunner
from headrace_leveled import PhaseTimeout as PhaseTimeout
from headrace_leveled import Processor as Processor
from headrace_leveled import ProcessorError as ProcessorError
from headrace_leveled import ProcessorEvent as ProcessorEvent
from headrace_leveled import ProcessorSnapshot as ProcessorSnapshot
from headrace_leveled import RetryableError as RetryableError
from headrace_leveled import RetryableException as RetryableException
from headrace_leveled import RunReport as RunReport
from headrace_leveled import SdaxExecutionError as SdaxExecutionError
from headrace_leveled import SdaxTaskGroup as SdaxTaskGroup
from headrace_leveled import Task as Task
from headrace_leveled import TaskFailure as TaskFailure
from headrace_leveled import TaskFunction as TaskFunction
from headrace_leveled import TaskReport as TaskReport
from headrace_leveled import TaskState as TaskState
from headrace_leveled import flatten_exceptions as flatten_exceptions
from headrace_leveled import join as join
from headrace_leveled import task as task
from headrace_leveled import task_func as task_func
from headrace_leveled import task_group_func as task_group_func
from headrace_leveled import task_group_task as task_group_task
from headrace_leveled import task_sync_func as task_sync_func
from headrace_throttle import AIMD as AIMD
from headrace_throttle import CircuitBreakerConfig as CircuitBreakerConfig
from headrace_throttle import Gradient as Gradient
from headrace_throttle import Limit as Limit
from headrace_throttle import RequestBudget as RequestBudget
from headrace_throttle import RetryConfig as RetryConfig
from headrace_throttle import ServerBusy as ServerBusy
from headrace_throttle import SharedSnapshot as SharedSnapshot
from headrace_throttle import Slot as Slot
from headrace_throttle import Throttle as Throttle
from headrace_throttle import ThrottleClosed as ThrottleClosed
from headrace_throttle import ThrottleConfig as ThrottleConfig
from headrace_throttle import ThrottleEvent as ThrottleEvent
from headrace_throttle import ThrottleSnapshot as ThrottleSnapshot
from headrace_throttle import ThrottleState as ThrottleState
from headrace_throttle import TokenBudget as TokenBudget
from headrace_throttle import TokenBudgetExceeded as TokenBudgetExceeded
from headrace_throttle import Vegas as Vegas

__all__ = [
    "AIMD",
    "DROP",
    "AsyncDagLevelAdapterBuilder",
    "AsyncDagTaskProcessor",
    "AsyncDagTaskProcessorBuilder",
    "AsyncPhaseRunner",
    "AsyncQueueInterface",
    "AsyncTask",
    "AsyncTaskProcessor",
    "AsyncTaskProcessorBuilder",
    "BackoffError",
    "BatchFunction",
    "BatchRoutingError",
    "BreakerSnapshot",
    "Builder",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSnapshot",
    "CapacityExceeded",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Closed",
    "CoalesceEvent",
    "CoalesceStats",
    "ConfigurationError",
    "ConfigurationTypeError",
    "Consecutive",
    "CountWindow",
    "CycleError",
    "Drop",
    "DropReason",
    "Dropped",
    "ErrorEvent",
    "Fallback",
    "FallbackSnapshot",
    "FixedScaling",
    "Flow",
    "FlowClosed",
    "FlowEvent",
    "FlowStats",
    "Gradient",
    "GraphError",
    "GuardEvent",
    "GuardTimeout",
    "HeadraceError",
    "Hedge",
    "HedgeSnapshot",
    "Last",
    "Limit",
    "Loader",
    "MissingResult",
    "Phase",
    "PhaseGuard",
    "PhaseId",
    "PhaseReport",
    "PhaseRunner",
    "PhaseTimeout",
    "Pipeline",
    "PipelineSnapshot",
    "ProcessStageError",
    "Processor",
    "ProcessorError",
    "ProcessorEvent",
    "ProcessorSnapshot",
    "PushHandle",
    "QueueFactory",
    "QueueLike",
    "RateLimited",
    "RateLimiter",
    "RateLimiterSnapshot",
    "Rejected",
    "RequestBudget",
    "Retry",
    "RetryConfig",
    "RetrySnapshot",
    "RetryableError",
    "RetryableException",
    "RunReport",
    "ScaleEvent",
    "ScalingStrategy",
    "SdaxExecutionError",
    "SdaxTaskGroup",
    "ServerBusy",
    "SharedSnapshot",
    "Slot",
    "SourceError",
    "Stage",
    "StageSnapshot",
    "StageStats",
    "StageTimeout",
    "Task",
    "TaskFailure",
    "TaskFunction",
    "TaskReport",
    "TaskState",
    "Throttle",
    "ThrottleClosed",
    "ThrottleConfig",
    "ThrottleEvent",
    "ThrottleSnapshot",
    "ThrottleState",
    "TimeWindow",
    "Timeout",
    "TimeoutSnapshot",
    "TokenBudget",
    "TokenBudgetExceeded",
    "TransformerError",
    "UtilizationScaling",
    "Vegas",
    "batch",
    "batched",
    "collect",
    "fifo_queue",
    "flatten_exceptions",
    "flow",
    "join",
    "lifo_queue",
    "log_and_continue",
    "pipeline",
    "priority_queue",
    "process_stage",
    "router",
    "stage",
    "sync_stage",
    "task",
    "task_func",
    "task_group_func",
    "task_group_task",
    "task_sync_func",
    "thread_stage",
]
