"""The handlers a worker can load without pydantic (tests.handlers, which declares pydantic input
models, loads it): the call recording every handler uses, and ``tests.echo``. A worker serving
these shows that running jobs loads no pydantic (tests/e2e/test_beat.py)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from ductape_jobs import RunContext, handler

PRODUCT = "tests"
_client: redis.Redis | None = None


def db() -> redis.Redis:
    """A connection for recording calls: the worker's own server, or TEST_RECORD_URL (a server
    the test does not restart, so what handlers did is never lost with it)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("TEST_RECORD_URL") or os.environ["REDIS_URL"])
    return _client


def calls_key(name: str) -> str:
    """Where handler ``name`` records its calls, under the test's prefix."""
    return f"{os.environ['DUCTAPE_KEY_PREFIX']}:test:calls:{name}"


def record(name: str, input: Any, ctx: RunContext) -> None:
    """Append one call record and count the run id."""
    entry = {
        "input": input,
        "job_id": ctx.job_id,
        "run_id": ctx.run_id,
        "attempt": ctx.attempt,
        "env": ctx.env,
        "event": ctx.event,
        "product_tag": ctx.product_tag,
        "app": ctx.app,
        "scheduled_ms": ctx.scheduled_ms,
        "at_ms": time.time_ns() // 1_000_000,
    }
    pipe = db().pipeline()
    pipe.rpush(calls_key(name), json.dumps(entry))
    pipe.hincrby(calls_key(name) + ":runs", ctx.run_id, 1)
    pipe.execute()


@handler("echo", product_tag=PRODUCT)
def echo(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Records its input and returns it."""
    record("echo", input, ctx)
    return {"echo": input}
