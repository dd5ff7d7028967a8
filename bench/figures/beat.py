"""Figures 4 and 7: releasing 10,000 due runs among 100,000 schedules, ours beside RedBeat.

Both schedulers are driven in-process on the same server: our ``BeatEngine.tick`` and
``RedBeatScheduler.tick``, each until its broker queue holds every due run. The round trips and
commands each side sends are counted client-side, the commands they cost server-side (INFO
commandstats, with those scripts run), and the server CPU they cost as each sent command's usec
per call (commandstats) times the calls sent: a script's usec covers the commands it runs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from redbeat import RedBeatScheduler

from beat.engine import BeatEngine
from bench.env import Bench, calls_delta, command_calls, command_usec, redis_cpu_us, round_trips
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
            before, before_us = command_calls(db), command_usec(db)
            ticks = 0
            with round_trips() as sent:
                start = time.perf_counter()
                while db.llen(queue) < due:
                    tick()
                    ticks += 1
                    if time.perf_counter() - start > 300:
                        raise TimeoutError(f"{side}: only {db.llen(queue)} of {due} runs released in 300 s")
                elapsed = time.perf_counter() - start
            results[f"{side}_s"].append(elapsed)
            after, after_us = command_calls(db), command_usec(db)
            results[f"{side}_trips"].append(sent.trips - ticks - 1)  # less our own LLEN checks
            cmds = calls_delta(before, after)
            usec = calls_delta(before_us, after_us)
            results[f"{side}_cpu_us"].append(redis_cpu_us(sent.commands, cmds, usec))
            results[f"{side}_sent"].append(sent.commands)
            cmds.pop("llen", None)
            results[f"{side}_cmds"].append(cmds)
            results[f"{side}_ticks"].append(ticks)
    engine.step_down()
    store.redis.close()
    db.close()
    app.close()
    bench.drop(ours_prefix)
    bench.drop(theirs_prefix)
    return _rows(results, due, stored, settings.beat_batch)


def _rows(results: dict[str, list[Any]], due: int, stored: int, batch: int) -> list[Row]:
    batches = math.ceil(due / batch)
    ours_cmds = [sum(c.values()) / due for c in results["ours_cmds"]]
    theirs_cmds = [sum(c.values()) / due for c in results["theirs_cmds"]]
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
    rows.append(
        row(
            "7 Redis CPU per released run (INFO commandstats: usec per call x calls sent)",
            "us",
            [us / due for us in results["ours_cpu_us"]],
            [us / due for us in results["theirs_cpu_us"]],
            "-",
            None,
            theirs_label="RedBeat",
            details={"ours_sent": results["ours_sent"][-1], "theirs_sent": results["theirs_sent"][-1]},
            command=".venv/bin/python -m bench --only 7",
        )
    )
    return rows
