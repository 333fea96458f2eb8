"""Shared state on Redis or Valkey: one breaker, bulkhead, rate limit or budget for many.

``RedisStore`` implements every store protocol of :mod:`headrace_core.store`; pass it as
``store=`` to a named guard. Needs the extra: ``pip install 'headrace-guards[redis]'``.
"""

try:
    import redis  # noqa: F401  # pyright: ignore[reportUnusedImport] - names the extra when missing
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ModuleNotFoundError(
        "headrace_guards.redis needs redis-py: pip install 'headrace-guards[redis]'",
        name=exc.name,
    ) from exc

from headrace_guards._redis_store import RedisStore as RedisStore

__all__ = ["RedisStore"]

RedisStore.__module__ = __name__
