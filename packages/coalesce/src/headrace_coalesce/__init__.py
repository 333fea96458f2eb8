"""headrace-coalesce: transparent micro-batching for asyncio.

``@batch`` + ``await collect(item)`` turn concurrent calls of a function into one bulk
call; :class:`Loader` is a DataLoader (``load`` / ``load_many``) with a cache that never
keeps a cancelled load or a failed batch.
"""

from headrace_coalesce._batch import BatchFunction as BatchFunction
from headrace_coalesce._batch import batch as batch
from headrace_coalesce._collect import collect as collect
from headrace_coalesce._loader import Loader as Loader
from headrace_coalesce._routing import BatchRoutingError as BatchRoutingError
from headrace_coalesce._routing import MissingResult as MissingResult
from headrace_coalesce._stats import CoalesceEvent as CoalesceEvent
from headrace_coalesce._stats import CoalesceStats as CoalesceStats
from headrace_coalesce._version import __version__ as __version__
from headrace_core import ConfigurationError as ConfigurationError
from headrace_core import HeadraceError as HeadraceError

__all__ = [
    "BatchFunction",
    "BatchRoutingError",
    "CoalesceEvent",
    "CoalesceStats",
    "ConfigurationError",
    "HeadraceError",
    "Loader",
    "MissingResult",
    "batch",
    "collect",
]

for _obj in (
    BatchFunction,
    BatchRoutingError,
    CoalesceEvent,
    CoalesceStats,
    Loader,
    MissingResult,
    batch,
    collect,
):
    _obj.__module__ = __name__
del _obj
