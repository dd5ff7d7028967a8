"""Figure 3: 10,000 immediate no-op jobs, enqueue to all completed, on real prefork workers.

Three workers run side by side, idle but for their turn: ours (``celery -A workers worker``),
plain Celery with its defaults (the target's baseline), and plain Celery with our delivery
settings (late acks, prefetch 2, no task events), which tells the cost of those settings apart
from the cost of our code. Each side's no-op task does one INCR; the clock stops when the
counter reaches 10,000.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.env import Bench, wait_for
from bench.figures.producer import REQUEST
from bench.handlers import counter_key
from bench.plain_app import TASK, make_app
from bench.report import Row, row
from ductape_jobs import Ductape
from ductape_jobs.settings import Settings

CHUNK = 1_000  # schedule_many calls of this many jobs while the workers already consume


@dataclass
class Side:
    """One producer + worker pair and what it measured."""

    prefix: str
    enqueue: Callable[[int], None]
    worker: subprocess.Popen[bytes]
    ready: Callable[[], bool]
    total_s: list[float] = field(default_factory=list)
    enqueue_s: list[float] = field(default_factory=list)


def end_to_end(bench: Bench, reps: int, n: int = 10_000, concurrency: int = 2) -> list[Row]:
    """Ours (schedule_many, our worker) vs plain Celery (apply_async loop, plain worker), seconds."""
    db = bench.client()
    pool = ["worker", "-P", "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle"]
    pool += ["--loglevel", "WARNING"]

    ours_prefix = bench.prefix("f3")
    ductape = Ductape(settings=Settings(redis_url=bench.url, key_prefix=ours_prefix, require_handler=False))
    env = {
        "DUCTAPE_KEY_PREFIX": ours_prefix,
        "DUCTAPE_HANDLERS": "bench.handlers",
        "DUCTAPE_WORKER_ENVS": "dev",
    }

    requests = [{**REQUEST, "input": {"n": i}} for i in range(n)]  # each job its own input

    def ours_enqueue(count: int) -> None:
        for start in range(0, count, CHUNK):
            ductape.job.schedule_many(requests[start : min(start + CHUNK, count)])

    sides = {
        "ours": Side(
            ours_prefix,
            ours_enqueue,
            bench.spawn("workers", [*pool, "-n", f"ours-{ours_prefix}@%h"], env, "f3-ours-worker"),
            lambda: bool(db.hlen(f"{ours_prefix}:workers")),
        )
    }
    apps = []
    for side, delivery in (("theirs", "celery"), ("theirs_our_delivery", "ours")):
        prefix = bench.prefix(f"f3{delivery[0]}")
        app = make_app(bench.url, prefix, delivery=delivery)
        apps.append(app)
        task = app.tasks[TASK]
        worker = bench.spawn(
            "bench.plain_app",
            [*pool, "-n", f"plain-{prefix}@%h", "-Q", "plain"],
            {"BENCH_PREFIX": prefix, "BENCH_DELIVERY": delivery},
            f"f3-plain-{delivery}-worker",
        )

        def plain_enqueue(count: int, task: object = task) -> None:
            for _ in range(count):
                task.apply_async()  # type: ignore[attr-defined]

        def plain_ready(prefix: str = prefix) -> bool:
            return bool(db.exists(f"{prefix}:bench:plain-ready"))

        sides[side] = Side(prefix, plain_enqueue, worker, plain_ready)

    def all_ready() -> bool:
        for s in sides.values():
            bench.check_alive(s.worker)
        return all(s.ready() for s in sides.values())

    wait_for(all_ready, 120, "the workers to be ready", poll_s=0.1)

    def run(s: Side, count: int) -> tuple[float, float]:
        key = counter_key(s.prefix)
        db.delete(key)
        start = time.perf_counter()
        s.enqueue(count)
        enqueued = time.perf_counter() - start

        def done() -> bool:
            bench.check_alive(s.worker)
            return int(db.get(key) or 0) >= count

        wait_for(done, 300, f"{count} runs to complete under {s.prefix}", poll_s=0.005)
        return time.perf_counter() - start, enqueued

    for s in sides.values():
        run(s, 100)  # warm-up: connections, scripts, pool children
    order = list(sides.values())
    for rep in range(reps):
        for s in order if rep % 2 == 0 else reversed(order):
            total, queued = run(s, n)
            s.total_s.append(total)
            s.enqueue_s.append(queued)
    for s in sides.values():
        bench.stop(s.worker)
        bench.drop(s.prefix)
    ductape.close()
    for app in apps:
        app.close()
    db.close()

    ours, theirs, same = sides["ours"], sides["theirs"], sides["theirs_our_delivery"]
    details = {
        "jobs": n,
        "pool": f"prefork -c {concurrency}",
        "enqueue_s": {k: s.enqueue_s for k, s in sides.items()},
        "jobs_per_s": {k: [n / t for t in s.total_s] for k, s in sides.items()},
        "enqueue": "ours: schedule_many of 1,000 at a time; plain: a loop of apply_async",
    }
    command = ".venv/bin/python -m bench --only 3"
    return [
        row(
            "3 end to end, 10,000 no-op jobs",
            "s",
            ours.total_s,
            theirs.total_s,
            "<= 1.25 (>= 0.8x speed)",
            lambda o, t, r: r <= 1.25,
            theirs_label="plain Celery",
            details=details,
            command=command,
        ),
        row(
            "3 (info) the same, plain Celery with our delivery settings",
            "s",
            ours.total_s,
            same.total_s,
            "-",
            None,
            theirs_label="acks_late, prefetch 2",
            details=details,
            command=command,
        ),
    ]
