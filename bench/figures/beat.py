"""Figures 4 and 7: releasing 10,000 due runs among 100,000 schedules, ours beside RedBeat.

Both schedulers are driven in-process on the same server: our ``BeatEngine.tick`` and
``RedBeatScheduler.tick``, each until its broker queue holds every due run. The round trips each
side makes are counted client-side, the commands it costs server-side (INFO commandstats).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from redbeat import RedBeatScheduler

from beat.engine import BeatEngine
from bench.env import Bench, calls_delta, command_calls, round_trips
from bench.load import load_ours, load_redbeat, template
from bench.plain_app import TASK, make_app, queue_key
from bench.report import Row, row
from ductape_jobs import scripts
from ductape_jobs.celery_app import create_app
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from ductape_jobs.wire import MessageBuilder

EVERY_MS = 3_600_000  # hourly schedules: the due ones were due a second ago, the rest later this hour


def _later_ms(n: int, now: int) -> int:
    # Spread over 10..60 minutes from now, so nothing else falls due while a side is measured.
    return now + 600_000 + (n * 7_919) % 3_000_000


def beat_release(bench: Bench, reps: int, stored: int = 100_000, due: int = 10_000) -> list[Row]:
    """Figure 4 (seconds until all due runs are in the broker) and figure 7 (trips, commands)."""
    ours_prefix, theirs_prefix = bench.prefix("f4"), bench.prefix("f4p")
    settings = Settings(redis_url=bench.url, key_prefix=ours_prefix, require_handler=False)
    store = Store(connect(settings), Keys(ours_prefix))
    engine = BeatEngine(store, settings, MessageBuilder(create_app(settings), settings), "bench")
    base = template(settings, EVERY_MS)
    app = make_app(bench.url, theirs_prefix, redbeat_lock=False)
    db = bench.client()
    ours_queue = Keys(ours_prefix).broker_prefix + settings.queue_for("dev")
    theirs_queue = queue_key(theirs_prefix)

    now = now_ms()
    load_ours(store, base, range(due, stored), lambda n, now=now: _later_ms(n, now))
    every, nowdt = timedelta(milliseconds=EVERY_MS), datetime.now(UTC)
    # RedBeat's next run is last_run_at + every: the same due times as ours.
    load_redbeat(
        app,
        (f"s{n}" for n in range(due, stored)),
        lambda name: nowdt + timedelta(milliseconds=_later_ms(int(name[1:]), 0)) - every,
        every,
    )

    # Warm both sides up (connections, scripts, Celery's lazy setup) without releasing anything.
    engine.leadership.lead()
    store.redis.script_load(scripts.CLAIM_DUE)
    engine.messages.build("warm:0", base.spec, now, now)
    scheduler = RedBeatScheduler(app=app, lazy=False)
    app.tasks[TASK].apply_async(producer=scheduler.producer)
    db.delete(theirs_queue)

    results: dict[str, list[Any]] = defaultdict(list)  # ours_s, theirs_trips, ...
    for rep in range(reps):
        now = now_ms()
        load_ours(store, base, range(due), lambda n, now=now: now - 1_000, restore=rep > 0)
        last = datetime.now(UTC) - every - timedelta(seconds=1)
        load_redbeat(app, (f"s{n}" for n in range(due)), lambda name, last=last: last, every)
        sides = [
            ("ours", lambda: engine.tick(now_ms()), ours_queue),
            ("theirs", scheduler.tick, theirs_queue),
        ]
        for side, tick, queue in sides if rep % 2 == 0 else reversed(sides):
            # untimed: RedBeat's turn may outlast our lock; a tick then only renews it
            engine.leadership.lead()
            db.delete(queue)
            before = command_calls(db)
            ticks = 0
            with round_trips() as trips:
                start = time.perf_counter()
                while db.llen(queue) < due:
                    tick()
                    ticks += 1
                    if time.perf_counter() - start > 300:
                        raise TimeoutError(f"{side}: only {db.llen(queue)} of {due} runs released in 300 s")
                elapsed = time.perf_counter() - start
            results[f"{side}_s"].append(elapsed)
            results[f"{side}_trips"].append(trips[0] - ticks - 1)  # less our own LLEN checks
            cmds = calls_delta(before, command_calls(db))
            cmds.pop("llen", None)
            results[f"{side}_cmds"].append(cmds)
            results[f"{side}_ticks"].append(ticks)
    # Released per second and the server's own ceiling, for figure 7.
    limit = redis_benchmark(bench)
    engine.step_down()
    store.redis.close()
    db.close()
    app.close()
    bench.drop(ours_prefix)
    bench.drop(theirs_prefix)
    return _rows(results, due, stored, settings.beat_batch, limit)


def _rows(
    results: dict[str, list[Any]], due: int, stored: int, batch: int, limit: dict[str, float]
) -> list[Row]:
    batches = math.ceil(due / batch)
    ours_cmds = [sum(c.values()) / due for c in results["ours_cmds"]]
    theirs_cmds = [sum(c.values()) / due for c in results["theirs_cmds"]]
    ours_rate = [due / s for s in results["ours_s"]]
    rows = [
        row(
            f"4 beat: {due:,} due among {stored:,} schedules, until all in the broker",
            "s",
            results["ours_s"],
            results["theirs_s"],
            "<= 0.10 (10x faster)",
            lambda o, t, r: r <= 0.10,
            theirs_label="RedBeat",
            details={"ticks": {k: results[f"{k}_ticks"] for k in ("ours", "theirs")}, "batch": batch},
            command=".venv/bin/python -m bench --only 4",
        ),
        row(
            f"7 round trips per {batch:,} released runs",
            "trips",
            [t / batches for t in results["ours_trips"]],
            [t / due * batch for t in results["theirs_trips"]],
            "batches, not 1 per run",
            lambda o, t, r: o <= 10,
            theirs_label="RedBeat",
            details={
                "ours_total": results["ours_trips"],
                "theirs_total": results["theirs_trips"],
                "batches": batches,
            },
            command=".venv/bin/python -m bench --only 7",
        ),
        row(
            "7 Redis commands per released run",
            "cmds",
            ours_cmds,
            theirs_cmds,
            "-",
            None,
            theirs_label="RedBeat",
            details={"ours": results["ours_cmds"][-1], "theirs": results["theirs_cmds"][-1]},
            command=".venv/bin/python -m bench --only 7",
        ),
    ]
    if limit:
        ceiling = min(limit.values()) / (sum(ours_cmds) / len(ours_cmds))
        rows.append(
            row(
                "7 beat release rate vs Redis ceiling (pipelined ops/s / commands per run)",
                "runs/s",
                ours_rate,
                [ceiling] * len(ours_rate),
                "-",
                None,
                theirs_label="ceiling",
                details={
                    "redis_benchmark_ops_per_s": limit,
                    "command": "redis-benchmark -P 16 -q -t set,lpush",
                },
                command=".venv/bin/python -m bench --only 7",
            )
        )
    return rows


def redis_benchmark(bench: Bench, requests: int = 200_000) -> dict[str, float]:
    """``redis-benchmark -P 16 -q -t set,lpush`` against the bench server, ops/s per command."""
    exe = shutil.which("redis-benchmark")
    url = urlparse(bench.url)
    if exe is None or url.scheme != "redis":
        return {}
    args = [
        exe,
        "-h",
        url.hostname or "127.0.0.1",
        "-p",
        str(url.port or 6379),
        "-P",
        "16",
        "-q",
        "-t",
        "set,lpush",
        "-n",
        str(requests),
    ]
    env = {"REDISCLI_AUTH": url.password} if url.password else {}
    got = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False).stdout
    return {m[0].lower(): float(m[1]) for m in re.findall(r"(\w+): ([\d.]+) requests per second", got)}
