"""Redis Streams for flow: a pipeline's source and sink across processes and machines.

``redis_stream_source`` reads a stream through a consumer group and acknowledges each
entry only once its item has left the pipeline (at least once); ``redis_stream_sink``
appends each item. Needs the extra: ``pip install 'headrace-flow[redis]'``.
"""

try:
    import redis  # noqa: F401  # pyright: ignore[reportUnusedImport] - names the extra when missing
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ModuleNotFoundError(
        "headrace_flow.redis needs redis-py: pip install 'headrace-flow[redis]'",
        name=exc.name,
    ) from exc

from headrace_flow._redis_stream import JsonCodec as JsonCodec
from headrace_flow._redis_stream import RedisStreamSource as RedisStreamSource
from headrace_flow._redis_stream import StreamCodec as StreamCodec
from headrace_flow._redis_stream import StreamSourceStats as StreamSourceStats
from headrace_flow._redis_stream import redis_stream_sink as redis_stream_sink
from headrace_flow._redis_stream import redis_stream_source as redis_stream_source

__all__ = [
    "JsonCodec",
    "RedisStreamSource",
    "StreamCodec",
    "StreamSourceStats",
    "redis_stream_sink",
    "redis_stream_source",
]

for _obj in (
    JsonCodec,
    RedisStreamSource,
    StreamCodec,
    StreamSourceStats,
    redis_stream_sink,
    redis_stream_source,
):
    _obj.__module__ = __name__
del _obj
