"""Figure 3: draining pre-filled no-op jobs (1,000 by default, ``--drain N``) until all are recorded
done, real prefork workers.

Three warm workers run side by side, idle but for their turn: ours (``celery -A workers worker``),
plain Celery with our delivery settings (late acks, reject on worker lost, the same prefetch, no
task events: the headline's baseline, so the ratio is the cost of our code alone) and plain
Celery with its defaults (beside it: what a user gets out of the box).

Each side is measured the same way: its worker stops consuming (Celery's ``cancel_consumer``
control, answered before the queue is filled), its queue is filled with the jobs (untimed: ours
with ``schedule_many``, plain Celery with ``apply_async`` in kombu's ``Producer.batch()``), the
count in the queue is checked, and the clock runs from ``add_consumer`` until the last run is
recorded done. Done means, for ours, the run recorded completed in Redis by the worker's
FINISH_RUN (a completed one-off job enters the ``retired`` index there; after the clock stops,
every job is read back and must be ``completed``); for plain Celery, the handler's own record
(one INCR, which our handler also does, so both run the same work).

The same drains are also timed without their start-up (from the moment a tenth of the jobs are
done: the worker has resumed consuming and its pipeline is full), an info row for throughput alone.

After each no-op drain each worker's main process RSS is read (an info row): a busy worker
should not grow with the runs it has done.

With ``--against REF`` a fourth worker, ours built from git REF (a work tree of it, removed after),
drains in turn with the others: an info row compares this checkout's worker with that commit's on
one server, in one run (an A/B of a change, with its spread).

Beside the no-op headline, a curve by handler work: the same drain, ours and Celery with the same
delivery settings, of handlers that do 1 ms of CPU or sleep 10 ms before their INCR (fewer jobs:
``WORK_JOBS``), in jobs per second.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from bench.env import ROOT, Bench, calls_delta, checked_out, command_calls, status_mb, wait_for
from bench.figures.producer import REQUEST
from bench.handlers import counter_key
from bench.plain_app import QUEUE, TASK, WORK_TASK, make_app, queue_key
from bench.report import Point, Row, row
from ductape_jobs import Ductape
from ductape_jobs.celery_app import create_app
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings

CHUNK = 1_000  # schedule_many calls of this many jobs
NO_OP = "no-op"
WORK_JOBS = {"1 ms CPU": 300, "10 ms sleep": 200}  # jobs per drain of the handler-work curve
BRPOP_S = 1.5  # kombu's BRPOP timeout (1 s) and a margin


@dataclass
class Side:
    """One worker, the app that steers it, how to fill its queue and how to count what is done."""

    prefix: str
    app: Celery
    queue: str  # the Celery queue name
    queue_key: str  # the Redis list holding it
    hostname: str
    worker: subprocess.Popen[bytes]
    ready: Callable[[], bool]
    fill: Callable[[int, str], None]  # n jobs whose handler does the named work
    done: Callable[[], int]  # runs recorded done so far
    check: Callable[[int], None] = lambda n: None  # after the clock: every one of n recorded done
    drain_s: list[float] = field(default_factory=list)
    steady_s: list[float] = field(default_factory=list)  # each no-op drain less its first tenth
    cpu_us: list[dict[str, float]] = field(default_factory=list)  # per job: main, pool, redis
    calls: list[dict[str, float]] = field(default_factory=list)  # per job: Redis commands, by name
    main_rss_mb: list[float] = field(default_factory=list)  # the main process's RSS after each no-op drain
    work_jobs_per_s: dict[str, list[float]] = field(default_factory=dict)


def _control(side: Side, command: str) -> None:
    """``cancel_consumer`` or ``add_consumer`` on the side's worker, waiting for its reply."""
    replies = getattr(side.app.control, command)(
        side.queue, destination=[side.hostname], reply=True, timeout=10
    )
    if not replies or any("error" in r.get(side.hostname, {}) for r in replies):
        raise RuntimeError(f"{command} {side.queue} on {side.hostname}: {replies!r}")


def _ours(bench: Bench, pool: list[str], tree: Path = ROOT, name: str = "ours") -> tuple[Side, Ductape]:
    """Our worker, its code from ``tree`` (``--against``: another commit's)."""
    prefix = bench.prefix("f3" if tree == ROOT else "f3r")
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
    ductape = Ductape(settings=settings)
    keys, db = Keys(prefix), bench.client()
    env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers", "DUCTAPE_WORKER_ENVS": "dev"}
    hostname = f"{name}-{prefix}@{socket.gethostname()}"
    queue = settings.queue_for("dev")
    filled: list[str] = []  # job ids of the current fill

    def fill(n: int, work: str) -> None:
        filled.clear()
        for start in range(0, n, CHUNK):
            numbers = range(start, min(start + CHUNK, n))
            if work == NO_OP:
                batch = [{**REQUEST, "input": {"n": i}} for i in numbers]
            else:
                batch = [{**REQUEST, "event": "work", "input": {"n": i, "work": work}} for i in numbers]
            filled.extend(h.job_id for h in ductape.job.schedule_many(batch))

    def check(n: int) -> None:
        pipe = db.pipeline(transaction=False)
        for job_id in filled:
            pipe.hget(keys.job(job_id), "status")
        completed = sum(1 for s in pipe.execute() if s == b"completed")
        if completed != n or len(filled) != n:
            raise RuntimeError(f"ours: {completed} of {n} jobs recorded completed")

    side = Side(
        prefix,
        create_app(settings),
        queue,
        keys.broker_prefix + queue,
        hostname,
        bench.spawn("workers", [*pool, "-n", hostname], env, f"f3-{name}-worker", tree),
        lambda: bool(db.hlen(keys.workers)),
        fill,
        lambda: int(db.zcard(keys.retired)),  # FINISH_RUN retires a completed one-off job
        check,
    )
    return side, ductape


def _plain(bench: Bench, pool: list[str], delivery: str) -> Side:
    prefix = bench.prefix(f"f3{delivery[0]}")
    app = make_app(bench.url, prefix, delivery=delivery)
    db = bench.client()
    task, work_task = app.tasks[TASK], app.tasks[WORK_TASK]
    hostname = f"plain-{prefix}@{socket.gethostname()}"

    def fill(n: int, work: str) -> None:
        with app.producer_or_acquire() as producer, producer.batch():
            for _ in range(n):
                if work == NO_OP:
                    task.apply_async(producer=producer)
                else:
                    work_task.apply_async(args=[work], producer=producer)

    return Side(
        prefix,
        app,
        QUEUE,
        queue_key(prefix),
        hostname,
        bench.spawn(
            "bench.plain_app",
            [*pool, "-n", hostname, "-Q", QUEUE],
            {"BENCH_PREFIX": prefix, "BENCH_DELIVERY": delivery},
            f"f3-plain-{delivery}-worker",
        ),
        lambda: bool(db.exists(f"{prefix}:bench:plain-ready")),
        fill,
        lambda: int(db.get(counter_key(prefix)) or 0),
    )


def drain(bench: Bench, side: Side, n: int, work: str = NO_OP) -> float:
    """Seconds from ``add_consumer`` until n pre-filled jobs are recorded done."""
    db = bench.client()
    _control(side, "cancel_consumer")
    time.sleep(BRPOP_S)  # a BRPOP sent before the cancel would still take a message
    side.fill(n, work)
    waiting = int(db.llen(side.queue_key))
    if waiting != n:
        raise RuntimeError(f"{side.prefix}: {waiting} messages in the queue, expected {n}")
    before = side.done()
    cpu_before = _cpu_s(side.worker.pid, db)
    calls_before = command_calls(db)
    start = time.perf_counter()
    _control(side, "add_consumer")

    tenth: list[float] = []  # when the first tenth was done: start-up (add_consumer, first fetch) is behind

    def finished() -> bool:
        bench.check_alive(side.worker)
        done = side.done() - before
        if not tenth and done >= n // 10:
            tenth.append(time.perf_counter())
        return done >= n

    wait_for(finished, 300, f"{n} runs recorded done under {side.prefix}", poll_s=0.005)
    end = time.perf_counter()
    cpu_after = _cpu_s(side.worker.pid, db)
    calls = calls_delta(calls_before, command_calls(db))
    if work == NO_OP:  # the headline's: the handler-work curve's drains are left out
        side.steady_s.append(end - tenth[0])
        side.cpu_us.append({k: round((cpu_after[k] - cpu_before[k]) / n * 1e6, 1) for k in cpu_after})
        side.calls.append({k: round(c / n, 2) for k, c in calls.items() if c / n >= 0.01})
        side.main_rss_mb.append(round(status_mb(side.worker.pid, "VmRSS"), 1))
    side.check(n)
    db.close()
    return end - start


def _cpu_s(pid: int, db: Any) -> dict[str, float]:
    """CPU seconds used so far by a worker's main process, its pool processes, and the server
    (shared, but the sides drain one at a time): where the time per job goes."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(proc: int) -> float:
        try:
            with open(f"/proc/{proc}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # not Linux, or a pool process replaced meanwhile
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    info = db.info("cpu")
    return {
        "main": used(pid),
        "pool": sum(used(c) for c in children),
        "redis": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
    }


def end_to_end(
    bench: Bench,
    reps: int,
    n: int = 10_000,
    concurrency: int = 2,
    work_jobs: dict[str, int] = WORK_JOBS,
    against: str | None = None,
) -> list[Row]:
    """Ours vs plain Celery with our delivery settings (headline) and with its defaults, seconds;
    and ours vs the same settings by handler work, jobs per second. ``against``: a git ref whose
    worker drains too, in turn with the others (an A/B of two commits on one server)."""
    with checked_out(against) if against else contextlib.nullcontext() as tree:
        return _end_to_end(bench, reps, n, concurrency, work_jobs, tree, against)


def _end_to_end(
    bench: Bench,
    reps: int,
    n: int,
    concurrency: int,
    work_jobs: dict[str, int],
    tree: Path | None,
    against: str | None,
) -> list[Row]:
    pool = ["worker", "-P", "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle"]
    pool += ["--loglevel", "WARNING"]
    ours, ductape = _ours(bench, pool)
    sides = {
        "ours": ours,
        "theirs_same_settings": _plain(bench, pool, "ours"),
        "theirs_defaults": _plain(bench, pool, "celery"),
    }
    clients, named = [ductape], ""
    if tree is not None:
        # the ref as given, and the commit it named then (HEAD~1 names another one tomorrow)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
        )
        named = f"{against} ({commit.stdout.strip()})"
        sides["ours_at_ref"], at_ref = _ours(bench, pool, tree, "ref")
        clients.append(at_ref)

    def all_ready() -> bool:
        for s in sides.values():
            bench.check_alive(s.worker)
        return all(s.ready() for s in sides.values())

    try:
        wait_for(all_ready, 120, "the workers to be ready", poll_s=0.1)
        for s in sides.values():
            drain(bench, s, 200)  # warm-up: connections, scripts, pool children
            s.steady_s.clear()  # (kept out of the figures)
            s.cpu_us.clear()
            s.calls.clear()
            s.main_rss_mb.clear()
        order = list(sides.values())
        for rep in range(reps):
            for s in order if rep % 2 == 0 else reversed(order):
                s.drain_s.append(drain(bench, s, n))
        pair = [sides["ours"], sides["theirs_same_settings"]]
        for rep in range(reps):
            for work, jobs in work_jobs.items():
                for s in pair if rep % 2 == 0 else reversed(pair):
                    s.work_jobs_per_s.setdefault(work, []).append(jobs / drain(bench, s, jobs, work))
    finally:
        for s in sides.values():
            bench.stop(s.worker)
            s.app.close()
            bench.drop(s.prefix)
        for client in clients:
            client.close()
    return _rows(sides, n, concurrency, against, named) + _work_rows(sides, n, work_jobs)


def _rows(
    sides: dict[str, Side], n: int, concurrency: int, against: str | None = None, named: str = ""
) -> list[Row]:
    ours, same, plain = sides["ours"], sides["theirs_same_settings"], sides["theirs_defaults"]
    details: dict[str, Any] = {
        "jobs": n,
        "pool": f"prefork -c {concurrency}",
        "drain_s": {k: s.drain_s for k, s in sides.items()},
        "steady_s": {k: s.steady_s for k, s in sides.items()},
        "jobs_per_s": {k: [n / t for t in s.drain_s] for k, s in sides.items()},
        "cpu_us_per_job": {k: s.cpu_us for k, s in sides.items()},
        # INFO commandstats over each drain, per job: what Redis was asked, server-wide (the
        # draining worker's calls, the bench's polling of the done count, and whatever the idle
        # workers send meanwhile; commands a script ran count under their own names too)
        "redis_calls_per_job": {k: s.calls for k, s in sides.items()},
        # after each no-op drain, in the order run: a busy worker's main process should not grow
        "main_rss_mb": {k: s.main_rss_mb for k, s in sides.items()},
        "measured": "queue pre-filled, worker not consuming; add_consumer until all recorded done",
        "done": "ours: job recorded completed (FINISH_RUN); plain: the handler's INCR",
    }
    command = ".venv/bin/python -m bench --only 3"
    return [
        row(
            f"3 end to end, drain {n:,} no-op jobs until recorded done",
            "s",
            ours.drain_s,
            same.drain_s,
            "<= 0.83 (>= 1.2x speed)",
            lambda o, t, r: r <= 1 / 1.2,
            theirs_label="Celery, same delivery settings",
            details=details,
            command=command,
        ),
        row(
            f"3 (info) the same drains without their start-up: the last {n - n // 10:,} jobs",
            "s",
            ours.steady_s,
            same.steady_s,
            "-",
            None,
            theirs_label="Celery, same delivery settings",
            details=details,
            command=command,
        ),
        row(
            "3 (info) the worker's main process RSS after each no-op drain",
            "MB",
            ours.main_rss_mb,
            same.main_rss_mb,
            "-",
            None,
            theirs_label="Celery, same delivery settings",
            details=details,
            command=command,
        ),
        row(
            "3 (info) the same, plain Celery with its defaults",
            "s",
            ours.drain_s,
            plain.drain_s,
            "-",
            None,
            theirs_label="Celery defaults",
            details=details,
            command=command,
        ),
    ] + (
        [
            row(
                f"3 (info) ours against ours at {named}, the same drains",
                "s",
                ours.drain_s,
                sides["ours_at_ref"].drain_s,
                "-",
                None,
                theirs_label=f"ours at {named}",
                details=details,
                command=f"{command} --against {against}",
            )
        ]
        if against
        else []
    )


def _work_rows(sides: dict[str, Side], n: int, work_jobs: dict[str, int]) -> list[Row]:
    ours, same = sides["ours"], sides["theirs_same_settings"]
    kinds = [NO_OP, *work_jobs]
    for s in (ours, same):
        s.work_jobs_per_s[NO_OP] = [n / t for t in s.drain_s]  # the headline's drains
    jobs = {NO_OP: n, **work_jobs}
    return [
        row(
            f"3 (info) end to end, drain {jobs[kind]:,} jobs, handler: {kind}",
            "jobs/s",
            ours.work_jobs_per_s[kind],
            same.work_jobs_per_s[kind],
            "-",
            None,
            theirs_label="Celery, same delivery settings",
            command=".venv/bin/python -m bench --only 3",
            point=Point("3 end to end by handler work", "jobs/s, prefork -c 2", at, "handler work", kind),
        )
        for at, kind in enumerate(kinds)
    ]
