"""Redis connections with bounded timeouts, for every entry point (clients, worker, beat, CLI).

An outage fails fast instead of hanging. Making a client opens nothing: redis-py connects on the
first command.
"""

from __future__ import annotations

import redis
import redis.asyncio as aredis

from ductape_jobs.settings import Settings

POOL_SIZE = 64  # connections one asyncio client opens at most
POOL_WAIT_S = 30.0  # how long a call waits for a free one before giving up


def connect(settings: Settings) -> redis.Redis:
    """A Redis client with bounded timeouts, so an outage fails fast instead of hanging."""
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )


def connect_async(settings: Settings) -> aredis.Redis:
    """An asyncio Redis client with the same bounded timeouts as ``connect``.

    redis-py's default asyncio pool raises once 100 calls are in flight; a blocking pool makes
    ``gather()`` of thousands of calls wait for a connection instead.
    """
    pool = aredis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )
    return aredis.Redis.from_pool(pool)
