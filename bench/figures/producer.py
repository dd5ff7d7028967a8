"""Figures 1 and 2: producing immediate jobs, ours beside plain Celery ``apply_async``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.env import Bench
from bench.handlers import PRODUCT
from bench.plain_app import TASK, make_app
from bench.report import Row, row
from ductape_jobs import Ductape
from ductape_jobs.settings import Settings

REQUEST: dict[str, Any] = {"env": "dev", "product_tag": PRODUCT, "event": "noop", "start_at": 0, "input": {}}
WARMUP = 50


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _sides(bench: Bench, name: str) -> tuple[Ductape, Any, Any]:
    ductape = Ductape(
        settings=Settings(redis_url=bench.url, key_prefix=bench.prefix(name), require_handler=False)
    )
    plain = make_app(bench.url, bench.prefix(name + "p"))
    noop = plain.tasks[TASK]
    for _ in range(WARMUP):  # connections, script cache, Celery's lazy setup
        ductape.job.schedule(**REQUEST)
        noop.apply_async()
    return ductape, plain, noop


def _rates(
    bench: Bench,
    reps: int,
    n: int,
    sides: tuple[Ductape, Any],
    ours: Callable[[], object],
    theirs: Callable[[], object],
    *more: Callable[[], object],
) -> list[list[float]]:
    """Jobs/s of each way of producing n jobs, per repetition: ours and theirs alternate who goes
    first, ``more`` follow; both sides' keys are dropped after each repetition, then closed."""
    ductape, plain = sides
    rates: list[list[float]] = [[] for _ in range(2 + len(more))]
    for rep in range(reps):
        pair = [(0, ours), (1, theirs)]
        for at, run in [*(pair if rep % 2 == 0 else reversed(pair)), *enumerate(more, 2)]:
            rates[at].append(n / timed(run))
        bench.drop(ductape.settings.key_prefix)
        bench.drop(plain.conf.bench_prefix)
    ductape.close()
    plain.close()
    return rates


def schedule_one_by_one(bench: Bench, reps: int, n: int = 3_000) -> list[Row]:
    """Figure 1: ``schedule()`` in a loop vs ``apply_async()`` in a loop, one producer, jobs/s."""
    ductape, plain, noop = _sides(bench, "f1")
    ours, theirs = _rates(
        bench,
        reps,
        n,
        (ductape, plain),
        lambda: [ductape.job.schedule(**REQUEST) for _ in range(n)],
        lambda: [noop.apply_async() for _ in range(n)],
    )
    return [
        row(
            "1 schedule() one by one",
            "jobs/s",
            ours,
            theirs,
            ">= 0.8x",
            lambda o, t, r: r >= 0.8,
            theirs_label="apply_async",
            details={"jobs_per_rep": n},
            command=".venv/bin/python -m bench --only 1",
        )
    ]


def schedule_batch(bench: Bench, reps: int, n: int = 10_000) -> list[Row]:
    """Figure 2: one ``schedule_many()`` of n jobs vs a loop of n ``apply_async()``, jobs/s."""
    ductape, plain, noop = _sides(bench, "f2")
    batch = [{**REQUEST, "input": {"n": i}} for i in range(n)]  # as a real batch: each its own input

    def celery_batched() -> None:
        # kombu 5.7's Producer.batch(): the best a Celery user can do; shown, not the target.
        with plain.producer_or_acquire() as producer, producer.batch():
            for _ in range(n):
                noop.apply_async(producer=producer)

    ours, theirs, kombu_batch = _rates(
        bench,
        reps,
        n,
        (ductape, plain),
        lambda: ductape.job.schedule_many(batch),
        lambda: [noop.apply_async() for _ in range(n)],
        celery_batched,
    )
    return [
        row(
            "2 schedule_many(10,000) in one call",
            "jobs/s",
            ours,
            theirs,
            ">= 10x",
            lambda o, t, r: r >= 10,
            theirs_label="apply_async loop",
            details={"jobs_per_rep": n},
            command=".venv/bin/python -m bench --only 2",
        ),
        row(
            "2 (info) the same, Celery with kombu's Producer.batch()",
            "jobs/s",
            ours,
            kombu_batch,
            "-",
            None,
            theirs_label="apply_async in a batch",
            details={"jobs_per_rep": n},
            command=".venv/bin/python -m bench --only 2",
        ),
    ]
