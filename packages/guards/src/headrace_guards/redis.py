"""Shared state on Redis or Valkey: one breaker, bulkhead, rate limit or budget for many.

``RedisStore`` implements every store protocol of :mod:`headrace_core.store`; pass it as
``store=`` to a named guard. Needs the extra: ``pip install 'headrace-guards[redis]'``.
"""

from headrace_guards._redis_store import RedisStore as RedisStore

__all__ = ["RedisStore"]

RedisStore.__module__ = __name__
