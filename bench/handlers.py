"""The handlers our workers run in the end-to-end figure: a no-op (one INCR, like the plain task)
and the same INCR after some work (``do_work``: the plain task with the same argument does the same)."""

from __future__ import annotations

import os
from typing import Any

import redis

from bench.counter import counter_key
from bench.work import do_work
from ductape_jobs import RunContext, handler

PRODUCT = "bench"
_client: redis.Redis | None = None
__all__ = ["counter_key", "fail", "noop", "work"]


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


@handler("work", product_tag=PRODUCT)
def work(input: dict[str, Any], ctx: RunContext) -> None:
    """Does ``input["work"]`` (see ``do_work``), then counts the run."""
    do_work(input["work"])
    _db().incr(counter_key(os.environ["DUCTAPE_KEY_PREFIX"]))


@handler("fail", product_tag=PRODUCT)
def fail(input: dict[str, Any], ctx: RunContext) -> None:
    """Always fails: with its retries spent the run is dead-lettered (the soak's failing jobs)."""
    raise RuntimeError("bench: failing on purpose")
