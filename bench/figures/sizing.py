"""Figure 9: bytes Redis holds per stored schedule, per retained run and per finished job.

Measured on the bench server with the real store and the worker's runner (in this process, so
the deltas hold nothing else): Redis ``used_memory`` before and after writing N records of one
kind under a fresh prefix, divided by N; every index entry, fingerprint and TTL that comes with a
record is in its delta. ``MEMORY USAGE`` of one record's own keys is kept beside it (it leaves
out the index entries). These are the figures README's "Sizing Redis" multiplies.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import redis

from bench.env import Bench
from bench.handlers import PRODUCT
from bench.report import Row, row
from ductape_jobs import Ductape
from ductape_jobs.clock import now_ms
from ductape_jobs.keys import Keys
from ductape_jobs.registry import Registry, RunContext
from ductape_jobs.runner import Runner
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store

N = 2_000
INPUT = {"userId": "user_123", "email": "john@example.com"}  # the seed's example input


def _noop(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    return {"sent_to": input.get("email")}


def _fail(input: dict[str, Any], ctx: RunContext) -> None:
    raise RuntimeError("bench: failing on purpose")


REGISTRY = Registry()
REGISTRY.add(PRODUCT, "noop", _noop)
REGISTRY.add(PRODUCT, "fail", _fail)


def _used(client: redis.Redis) -> int:
    time.sleep(0.2)  # let lazy frees and client buffers settle
    return int(client.info("memory")["used_memory"])


def _work(ductape: Ductape, settings: Settings) -> int:
    """Run every message waiting on the dev queue with the worker's runner; how many ran."""
    store = Store(ductape.redis, Keys(settings.key_prefix), Retention.of(settings))
    runner = Runner(store, REGISTRY, settings, now_ms)
    queue = Keys(settings.key_prefix).broker_prefix + settings.queue_for("dev")
    ran = 0
    while (raw := ductape.redis.rpop(queue)) is not None:
        [run_id], _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        runner.execute(run_id)
        ran += 1
    return ran


def _measure(
    bench: Bench, name: str, make: Callable[[Ductape, Settings, int], None], n: int
) -> tuple[float, dict[str, int]]:
    """Bytes per record of one kind (used_memory delta / N), and MEMORY USAGE of one record's keys."""
    prefix = bench.prefix(f"f9{name}")
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
    ductape = Ductape(settings=settings)
    client = bench.client()
    try:
        warm = ductape.job.schedule(
            env="dev", product_tag=PRODUCT, event="noop", start_at=time.time() + 86_400
        )
        before = _used(client)  # scripts loaded, connections open: only records differ from here
        make(ductape, settings, n)
        after = _used(client)
        job_id = next(j.job_id for j in ductape.job.list(limit=2) if j.job_id != warm.job_id)
        keys = Keys(prefix)
        own = [keys.job(job_id), keys.job_runs(job_id)]
        own += [keys.run(r.run_id) for r in ductape.job.runs(job_id, 5)]
        usage = {key.split(":", 1)[1].split(":")[0]: int(client.memory_usage(key) or 0) for key in own}
        return (after - before) / n, usage
    finally:
        ductape.close()
        client.close()
        bench.drop(prefix)


def _schedules(ductape: Ductape, settings: Settings, n: int, *, due: bool) -> None:
    start = 0 if due else time.time() + 86_400
    requests = [
        {"env": "dev", "product_tag": PRODUCT, "event": "noop", "start_at": start,
         "repeat": {"every": 3_600_000}, "input": {**INPUT, "i": i}}
        for i in range(n)
    ]  # fmt: skip
    ductape.job.schedule_many(requests)
    if due:
        _work(ductape, settings)


def _one_offs(event: str) -> Callable[[Ductape, Settings, int], None]:
    def make(ductape: Ductape, settings: Settings, n: int) -> None:
        ductape.job.schedule_many(
            [
                {"env": "dev", "product_tag": PRODUCT, "event": event, "input": {**INPUT, "i": i}}
                for i in range(n)
            ]
        )
        _work(ductape, settings)

    return make


def sizing(bench: Bench, reps: int, n: int = N) -> list[Row]:
    """Figure 9 rows: bytes per stored schedule, retained run, finished one-off job, dead letter."""
    command = ".venv/bin/python -m bench --only 9"
    stored, stored_usage = _measure(bench, "s", lambda d, s, k: _schedules(d, s, k, due=False), n)
    with_run, run_usage = _measure(bench, "r", lambda d, s, k: _schedules(d, s, k, due=True), n)
    finished, finished_usage = _measure(bench, "o", _one_offs("noop"), n)
    dead, dead_usage = _measure(bench, "d", _one_offs("fail"), n)
    figures = [
        ("9 bytes per stored schedule (job, due, jobs, fingerprint)", stored, stored_usage),
        ("9 bytes per retained run of a schedule (run record, runs entry)", with_run - stored, run_usage),
        ("9 bytes per finished one-off job (job, run, indexes, retention)", finished, finished_usage),
        ("9 bytes per dead-lettered one-off job (with its traceback)", dead, dead_usage),
    ]
    return [
        row(
            name,
            "bytes",
            [value],
            [],
            "-",
            None,
            details={"memory_usage_of_one": usage, "n": n},
            command=command,
        )
        for name, value, usage in figures
    ]
