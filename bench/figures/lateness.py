"""Figure 6: lateness (message in the broker minus due time) of 1,000 schedules every second.

A real beat process runs for ~15 s on each side: ours (``celery -A workers beat``) and RedBeat
(``celery -A bench.plain_app beat -S bench.redbeat_probe:ProbedRedBeatScheduler``). A consumer
in this process pops every message off the broker list as it lands (BLMPOP, up to 1,000 a
call) and timestamps it; the due time comes from the run id (ours: ``<job_id>:<nominal_ms>``) or
the header the probe adds (RedBeat). The same instrument measures both sides. Ours is also read
from the run records (``queued_ms - nominal_ms``: the tick's clock, before the batch is sent).
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from bench.env import Bench, wait_for
from bench.handlers import PRODUCT
from bench.load import load_redbeat
from bench.plain_app import make_app, queue_key, redbeat_prefix
from bench.redbeat_probe import DUE_HEADER
from bench.report import Row, row
from ductape_jobs import Ductape
from ductape_jobs.clock import now_ms
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings

WARMUP_S = 1  # runs due in the first second after the start are left out
START_AFTER_S = 4  # first due time after the schedules are loaded: the beat starts meanwhile


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Arrivals(threading.Thread):
    """Pops messages off one broker list and records when each batch of them landed."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.key = key
        self.landed: list[tuple[int, list[bytes]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        # Raw bytes only while measuring: parsing every message here grew this process's heap
        # by ~400,000 objects a run, and the collector's full passes over it stalled the clock.
        while not self.stop.is_set():
            got = self.client.blmpop(0.2, 1, self.key, direction="RIGHT", count=1_000)
            if got:
                self.landed.append((now_ms(), got[1]))

    @property
    def seen(self) -> list[tuple[int, dict[str, Any]]]:
        """(arrival ms, message) for every message popped, parsed after the run."""
        return [(at, json.loads(raw)) for at, batch in self.landed for raw in batch]


def _window(start_ms: int, duration_s: float) -> tuple[int, int]:
    return start_ms + WARMUP_S * 1000, start_ms + int(duration_s * 1000)


def _run_ours(bench: Bench, schedules: int, duration_s: float) -> dict[str, Any]:
    prefix = bench.prefix("f6")
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
    ductape = Ductape(settings=settings)
    start_ms = (now_ms() // 1000 + START_AFTER_S) * 1000
    requests = [
        {
            "env": "dev",
            "product_tag": PRODUCT,
            "event": "noop",
            "start_at": start_ms,
            "input": {"n": n},
            # no worker finishes these runs (the figure times their hand-over), and RedBeat
            # releases every slot: 'allow', not the default 'skip'
            "repeat": {"every": 1000, "overlap": "allow"},
        }
        for n in range(schedules)
    ]
    ductape.job.schedule_many(requests)
    consumer = Arrivals(bench.url, Keys(prefix).broker_prefix + settings.queue_for("dev"))
    consumer.start()
    env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers"}
    schedule_file = str(bench.log_dir / f"{prefix}.schedule")
    proc = bench.spawn("workers", ["beat", "--loglevel", "WARNING", "-s", schedule_file], env, "f6-ours-beat")
    ready, lo, hi = _watch(bench, proc, consumer, f"{prefix}:beat:lock", start_ms, duration_s)
    late: list[float] = []
    runs: list[str] = []
    for at, message in consumer.seen:
        run_id = message["headers"]["id"]
        nominal = int(run_id.rsplit(":", 1)[1])
        if lo <= nominal < hi:
            late.append(at - nominal)
            runs.append(run_id)
    db = bench.client()
    pipe = db.pipeline(transaction=False)
    for run_id in runs:
        pipe.hget(Keys(prefix).run(run_id), "queued_ms")
    recorded = [int(q) - int(r.rsplit(":", 1)[1]) for q, r in zip(pipe.execute(), runs, strict=True) if q]
    db.close()
    ductape.close()
    bench.drop(prefix)
    expected = schedules * (hi - lo) // 1000
    return {"late": late, "recorded": recorded, "expected": expected, "ready_before_ms": ready}


def _run_redbeat(bench: Bench, schedules: int, duration_s: float) -> dict[str, Any]:
    prefix = bench.prefix("f6p")
    app = make_app(bench.url, prefix)
    start_ms = (now_ms() // 1000 + START_AFTER_S) * 1000
    every = timedelta(seconds=1)
    last = datetime.fromtimestamp(start_ms / 1000, UTC) - every  # first due at start_ms
    load_redbeat(app, (f"lat-{n}" for n in range(schedules)), lambda name, last=last: last, every)
    consumer = Arrivals(bench.url, queue_key(prefix))
    consumer.start()
    scheduler = "bench.redbeat_probe:ProbedRedBeatScheduler"
    proc = bench.spawn(
        "bench.plain_app",
        ["beat", "--loglevel", "WARNING", "-S", scheduler],
        {"BENCH_PREFIX": prefix},
        "f6-redbeat",
    )
    ready, lo, hi = _watch(bench, proc, consumer, f"{redbeat_prefix(prefix)}:lock", start_ms, duration_s)
    late = []
    for at, message in consumer.seen:
        due = message["headers"].get(DUE_HEADER)
        if due is not None and lo <= due < hi:
            late.append(at - due)
    app.close()
    bench.drop(prefix)
    # RedBeat's next due time is the send time + 1 s, so a late run delays every later one.
    expected = schedules * (hi - lo) // 1000
    return {"late": late, "recorded": [], "expected": expected, "ready_before_ms": ready}


def _watch(
    bench: Bench, proc: Any, consumer: Arrivals, lock_key: str, start_ms: int, duration_s: float
) -> tuple[int, int, int]:
    """Let a beat run through the measured window, then stop it and the consumer; returns how
    long before the first due time it led, and the window of due times measured."""
    ready = _wait_ready(bench, proc, lock_key, start_ms)
    lo, hi = _window(start_ms, duration_s)
    _sleep_until(hi + 1_500, bench, proc)
    bench.stop(proc)
    consumer.stop.set()
    consumer.join()
    return ready, lo, hi


def _wait_ready(bench: Bench, proc: Any, lock_key: str, start_ms: int) -> int:
    db = bench.client()

    def leading() -> bool:
        bench.check_alive(proc)
        return bool(db.exists(lock_key))

    wait_for(leading, 60, f"beat to hold {lock_key}", poll_s=0.02)
    db.close()
    return start_ms - now_ms()  # > 0: the beat led before the first run was due


def _sleep_until(at_ms: int, bench: Bench, proc: Any) -> None:
    while now_ms() < at_ms:
        bench.check_alive(proc)
        time.sleep(min(0.2, max(0.0, (at_ms - now_ms()) / 1000)))


def lateness(bench: Bench, reps: int, schedules: int = 1_000, duration_s: float = 15.0) -> list[Row]:
    """Figure 6: p50 and p99 lateness, ours vs RedBeat, each a real beat process for duration_s."""
    sides: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    for rep in range(reps):
        order = [("ours", _run_ours), ("theirs", _run_redbeat)]
        for side, fn in order if rep % 2 == 0 else reversed(order):
            sides[side].append(fn(bench, schedules, duration_s))

    def pct(side: str, q: float, what: str = "late") -> list[float]:
        return [percentile(r[what], q) for r in sides[side]]

    details = {
        "schedules": schedules,
        "seconds": duration_s - WARMUP_S,
        "runs_delivered": {s: [len(r["late"]) for r in sides[s]] for s in sides},
        "runs_due_at_fixed_rate": sides["ours"][0]["expected"] if sides["ours"] else 0,
        "ours_run_record_p50_p99_ms": [pct("ours", 50, "recorded"), pct("ours", 99, "recorded")],
        "max_ms": {s: [max(r["late"], default=math.nan) for r in sides[s]] for s in sides},
        "beat_ready_ms_before_first_due": {s: [r["ready_before_ms"] for r in sides[s]] for s in sides},
    }
    command = ".venv/bin/python -m bench --only 6"
    return [
        row(
            f"6 lateness p50, {schedules:,} schedules every 1 s",
            "ms",
            pct("ours", 50),
            pct("theirs", 50),
            "below RedBeat",
            lambda o, t, r: o < t,
            theirs_label="RedBeat",
            details=details,
            command=command,
        ),
        row(
            f"6 lateness p99, {schedules:,} schedules every 1 s",
            "ms",
            pct("ours", 99),
            pct("theirs", 99),
            "<= 100 ms and below RedBeat",
            lambda o, t, r: o <= 100 and o < t,
            theirs_label="RedBeat",
            details=details,
            command=command,
        ),
    ]
