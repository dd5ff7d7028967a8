"""Figure 6: beat release by schedules due per second, a curve: 100 to 20,000 schedules every
second, ours beside RedBeat.

For each rate, a real beat process runs on each side: ours (``ductape-beat``) and RedBeat
(``celery -A bench.plain_app beat -S bench.redbeat_probe:ProbedRedBeatScheduler``), one after the
other on the same server, the side going first alternating from rate to rate. A consumer in this
process pops every message off the broker list as it lands (BLMPOP, up to 1,000 a call: it keeps up
with any rate here, so it stands for workers that keep up; what is timed is the hand-over to the
broker, not a handler's start) and timestamps it; the due time comes from the run id (ours:
``<job_id>:<nominal_ms>``) or the header the probe adds (RedBeat). The same instrument measures
both sides.

After a warm-up second, the beat's run is cut into windows of ``WINDOW_S`` (one per repetition: a
beat process starts in about two seconds, so a fresh one per repetition would cost the whole
bench's time budget). For the messages that landed in a window: how many per second (the release
rate; a side that cannot keep up releases fewer than are due) and how late each was (landing time
minus due time; behind a backlog it grows window by window). Ours is also read from the run
records (``queued_ms - nominal_ms``: the tick's clock, before the batch is sent).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from bench.env import Bench, wait_for
from bench.load import load_ours, load_redbeat, template
from bench.plain_app import make_app, queue_key, redbeat_prefix
from bench.redbeat_probe import DUE_HEADER
from bench.report import Point, Row, row
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

WARMUP_S = 1  # messages landing in the first second after the first due time are left out
START_AFTER_S = 3.5  # first due time after the schedules are loaded: the beat starts meanwhile
WINDOW_S = 1.0  # one repetition: whole seconds, as the schedules fall due on them
RATES = (100, 1_000, 5_000, 20_000)  # schedules, each due every second


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


def _first_due_ms(schedules: int) -> int:
    """A whole second, after the load (~1 s per 4,000 on a loaded 2-core machine) and a beat's
    start-up."""
    lead_ms = int((START_AFTER_S + schedules / 4_000) * 1000)
    return (now_ms() + lead_ms) // 1000 * 1000 + 1000


@dataclass
class Landed:
    """One side's beat run at one rate: each message's landing and due times, ms."""

    start_ms: int  # the first due time
    ready_before_ms: int  # how long before it the beat held its lock (> 0: in time)
    at_due: list[tuple[int, int]]
    recorded: list[int] = field(default_factory=list)  # ours: queued_ms - nominal_ms

    def window(self, n: int) -> list[float]:
        """Lateness of the messages that landed in window n (after the warm-up second)."""
        lo = self.start_ms + int((WARMUP_S + n * WINDOW_S) * 1000)
        hi = lo + int(WINDOW_S * 1000)
        return [float(at - due) for at, due in self.at_due if lo <= at < hi]


def _run_ours(bench: Bench, schedules: int, windows: int) -> Landed:
    prefix = bench.prefix(f"f6-{schedules}")
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
    start_ms = _first_due_ms(schedules)
    store = Store(connect(settings), Keys(prefix))
    # Written by CREATE_JOBS as schedule() writes them; every slot released ('allow', as
    # RedBeat: no worker finishes these runs, the figure times their hand-over).
    load_ours(store, template(settings, 1_000), range(schedules), lambda n: start_ms)
    store.redis.close()
    consumer = Arrivals(bench.url, Keys(prefix).broker_prefix + settings.queue_for("dev"))
    consumer.start()
    env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers"}
    proc = bench.beat(env, "f6-ours-beat")
    ready = _watch(bench, proc, consumer, f"{prefix}:beat:lock", start_ms, windows)
    at_due: list[tuple[int, int]] = []
    runs: list[str] = []
    for at, message in consumer.seen:
        run_id = message["headers"]["id"]
        at_due.append((at, int(run_id.rsplit(":", 1)[1])))
        runs.append(run_id)
    db = bench.client()
    pipe = db.pipeline(transaction=False)
    for run_id in runs:
        pipe.hget(Keys(prefix).run(run_id), "queued_ms")
    recorded = [int(q) - int(r.rsplit(":", 1)[1]) for q, r in zip(pipe.execute(), runs, strict=True) if q]
    db.close()
    bench.drop(prefix)
    return Landed(start_ms, ready, at_due, recorded)


def _run_redbeat(bench: Bench, schedules: int, windows: int) -> Landed:
    prefix = bench.prefix(f"f6p-{schedules}")
    app = make_app(bench.url, prefix)
    start_ms = _first_due_ms(schedules)
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
    ready = _watch(bench, proc, consumer, f"{redbeat_prefix(prefix)}:lock", start_ms, windows)
    # RedBeat's next due time is the send time + 1 s, so a late run delays every later one.
    at_due = [(at, int(m["headers"][DUE_HEADER])) for at, m in consumer.seen if DUE_HEADER in m["headers"]]
    app.close()
    bench.drop(prefix)
    return Landed(start_ms, ready, at_due)


def _watch(bench: Bench, proc: Any, consumer: Arrivals, lock_key: str, start_ms: int, windows: int) -> int:
    """Let a beat run through the warm-up and the windows, then stop it and the consumer; returns
    how long before the first due time it led."""
    ready = _wait_ready(bench, proc, lock_key, start_ms)
    _sleep_until(start_ms + int((WARMUP_S + windows * WINDOW_S) * 1000), bench, proc)
    consumer.stop.set()
    consumer.join()
    bench.stop(proc)
    return ready


def _wait_ready(bench: Bench, proc: Any, lock_key: str, start_ms: int) -> int:
    db = bench.client()

    def leading() -> bool:
        bench.check_alive(proc)
        return bool(db.exists(lock_key))

    wait_for(leading, 60, f"beat to hold {lock_key}", poll_s=0.02)
    db.close()
    ready = start_ms - now_ms()  # > 0: the beat led before the first run was due
    if ready < 0:
        print(f" (a beat led {-ready} ms after the first due time: {lock_key})", end="", flush=True)
    return ready


def _sleep_until(at_ms: int, bench: Bench, proc: Any) -> None:
    while now_ms() < at_ms:
        bench.check_alive(proc)
        time.sleep(min(0.2, max(0.0, (at_ms - now_ms()) / 1000)))


def lateness(bench: Bench, reps: int, rates: tuple[int, ...] = RATES) -> list[Row]:
    """Figure 6: by schedules due per second, runs released per second and p50/p99 lateness, ours
    vs RedBeat: one real beat process per side and rate, ``reps`` windows of it."""
    rows: list[Row] = []
    for i, rate in enumerate(rates):
        order = [("ours", _run_ours), ("theirs", _run_redbeat)]
        runs = {side: fn(bench, rate, reps) for side, fn in (order if i % 2 == 0 else reversed(order))}
        rows += _rate_rows(runs, rate, reps)
    return rows


def _rate_rows(runs: dict[str, Landed], rate: int, reps: int) -> list[Row]:
    windows = {side: [run.window(n) for n in range(reps)] for side, run in runs.items()}

    def pct(side: str, q: float) -> list[float]:
        return [percentile(late, q) for late in windows[side]]

    def released(side: str) -> list[float]:
        return [len(late) / WINDOW_S for late in windows[side]]

    recorded = runs["ours"].recorded
    details = {
        "schedules": rate,
        "window_s": WINDOW_S,
        "windows": reps,
        "landed_per_window": {side: [len(w) for w in ws] for side, ws in windows.items()},
        "ours_run_record_p50_p99_ms": [percentile(recorded, 50), percentile(recorded, 99)],
        "max_ms": {side: [max(w, default=math.nan) for w in ws] for side, ws in windows.items()},
        "beat_ready_ms_before_first_due": {side: run.ready_before_ms for side, run in runs.items()},
    }
    command = ".venv/bin/python -m bench --only 6"
    chart, x_label = "6 beat release by schedules due per second", "schedules due per second"
    headline = rate == 1_000  # the figure's earlier single point keeps its targets
    return [
        row(
            f"6 (info) runs released per second, {rate:,} schedules every 1 s",
            "runs/s",
            released("ours"),
            released("theirs"),
            "-",
            None,
            theirs_label="RedBeat",
            details=details,
            command=command,
            point=Point(chart, "runs released per second", rate, x_label),
        ),
        row(
            f"6 lateness p50, {rate:,} schedules every 1 s",
            "ms",
            pct("ours", 50),
            pct("theirs", 50),
            "below RedBeat" if headline else "-",
            (lambda o, t, r: o < t) if headline else None,
            theirs_label="RedBeat",
            command=command,
            point=Point(chart, "lateness p50, ms", rate, x_label),
        ),
        row(
            f"6 lateness p99, {rate:,} schedules every 1 s",
            "ms",
            pct("ours", 99),
            pct("theirs", 99),
            "<= 100 ms and below RedBeat" if headline else "-",
            (lambda o, t, r: o <= 100 and o < t) if headline else None,
            theirs_label="RedBeat",
            command=command,
            point=Point(chart, "lateness p99, ms", rate, x_label),
        ),
    ]
