"""Redis connections with bounded timeouts, for every entry point (clients, worker, beat, CLI).

An outage fails fast instead of hanging. Making a client opens nothing: redis-py connects on the
first command. Behind Sentinel (``Settings.sentinel_target``) a client's pool asks the sentinels
for the master each time it connects, so after a failover the next connection (every caller
reconnects on a connection error) reaches the new primary without a restart.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel

from ductape_jobs.settings import Settings
from ductape_jobs.urls import SentinelTarget

POOL_SIZE = 64  # connections one asyncio client opens at most
POOL_WAIT_S = 30.0  # how long a call waits for a free one before giving up


def connect(settings: Settings, **overrides: Any) -> redis.Redis:
    """A Redis client with bounded timeouts, so an outage fails fast instead of hanging
    (``overrides``: redis-py connection arguments, e.g. doctor's ``retry``)."""
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
        **overrides,
    }
    target = settings.sentinel_target()
    if target is None:
        return redis.Redis.from_url(settings.url, **options)
    sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, options), **_master_kwargs(target)
    )
    client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        target.master, redis_class=redis.Redis, **options
    )
    return client


def connect_async(settings: Settings) -> aredis.Redis:
    """An asyncio Redis client with the same bounded timeouts as ``connect``.

    redis-py's default asyncio pool raises once 100 calls are in flight; a blocking pool makes
    ``gather()`` of thousands of calls wait for a connection instead.
    """
    options: dict[str, Any] = {
        "max_connections": POOL_SIZE,
        "timeout": POOL_WAIT_S,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
    }
    target = settings.sentinel_target()
    if target is None:
        return aredis.Redis.from_pool(aredis.BlockingConnectionPool.from_url(settings.url, **options))
    sentinels = asentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, options), **_master_kwargs(target)
    )
    return sentinels.master_for(  # type: ignore[no-any-return]
        target.master, redis_class=aredis.Redis, connection_pool_class=_BlockingSentinelPool, **options
    )


class _BlockingSentinelPool(asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    """The master's pool behind Sentinel that waits for a free connection, as the plain one does."""


def _master_kwargs(target: SentinelTarget) -> dict[str, Any]:
    """How to log in to the master (and its replicas) and which database."""
    return {"db": target.db, "username": target.username, "password": target.password}


def _sentinel_kwargs(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their own password, the same timeouts."""
    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs
