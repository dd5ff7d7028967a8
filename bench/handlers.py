"""The no-op handler our workers run in the end-to-end figure: one INCR, like the plain task."""

from __future__ import annotations

import os
from typing import Any

import redis

from bench.counter import counter_key
from ductape_jobs import RunContext, handler

PRODUCT = "bench"
_client: redis.Redis | None = None
__all__ = ["counter_key", "fail", "noop"]


def _db() -> redis.Redis:
    # Created lazily, so each prefork child opens its own connection after the fork.
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _client


@handler("noop", product_tag=PRODUCT)
def noop(input: dict[str, Any], ctx: RunContext) -> None:
    """Counts the run and does nothing else."""
    _db().incr(counter_key(os.environ["DUCTAPE_KEY_PREFIX"]))


@handler("fail", product_tag=PRODUCT)
def fail(input: dict[str, Any], ctx: RunContext) -> None:
    """Always fails: with its retries spent the run is dead-lettered (the soak's failing jobs)."""
    raise RuntimeError("bench: failing on purpose")
