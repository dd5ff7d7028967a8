"""Figures 1 and 2: producing immediate jobs, ours beside plain Celery ``apply_async``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from bench.env import Bench
from bench.handlers import PRODUCT
from bench.plain_app import TASK, make_app
from bench.report import Point, Row, row
from ductape_jobs import Ductape
from ductape_jobs.settings import Settings

REQUEST: dict[str, Any] = {"env": "dev", "product_tag": PRODUCT, "event": "noop", "start_at": 0, "input": {}}
WARMUP = 50


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


SESSIONS = {"user-session": {"secret": "bench-session-secret-" + "x" * 32, "expiry_s": 3_600}}


def _sides(bench: Bench, name: str) -> tuple[Ductape, Any, Any]:
    ductape = Ductape(
        settings=Settings(
            redis_url=bench.url, key_prefix=bench.prefix(name), require_handler=False, sessions=SESSIONS
        )
    )
    plain = make_app(bench.url, bench.prefix(name + "p"))
    noop = plain.tasks[TASK]
    for _ in range(WARMUP):  # connections, script cache, Celery's lazy setup
        ductape.job.schedule(**REQUEST)
        noop.apply_async()
    return ductape, plain, noop


def _rates(
    bench: Bench, reps: int, n: int, sides: tuple[Ductape, Any], ways: dict[str, Callable[[], object]]
) -> dict[str, list[float]]:
    """Jobs/s of each way of producing n jobs, per repetition: the order of the ways reverses every
    other repetition; both sides' keys are dropped after each repetition, then closed."""
    ductape, plain = sides
    rates: dict[str, list[float]] = {name: [] for name in ways}
    order = list(ways.items())
    for rep in range(reps):
        for name, run in order if rep % 2 == 0 else reversed(order):
            rates[name].append(n / timed(run))
        bench.drop(ductape.settings.key_prefix)
        bench.drop(plain.conf.bench_prefix)
    ductape.close()
    plain.close()
    return rates


def schedule_one_by_one(bench: Bench, reps: int, n: int = 3_000) -> list[Row]:
    """Figure 1: ``schedule()`` in a loop vs ``apply_async()`` in a loop, one producer, jobs/s."""
    ductape, plain, noop = _sides(bench, "f1")
    rates = _rates(
        bench,
        reps,
        n,
        (ductape, plain),
        {
            "ours": lambda: [ductape.job.schedule(**REQUEST) for _ in range(n)],
            "theirs": lambda: [noop.apply_async() for _ in range(n)],
        },
    )
    return [
        row(
            "1 schedule() one by one",
            "jobs/s",
            rates["ours"],
            rates["theirs"],
            ">= 0.8x",
            lambda o, t, r: r >= 0.8,
            theirs_label="apply_async",
            details={"jobs_per_rep": n},
            command=".venv/bin/python -m bench --only 1",
        )
    ]


def batches(n: int, token_of: Callable[[int], str]) -> dict[str, list[dict[str, Any]]]:
    """The kinds of batch figure 2 measures, n requests each."""
    start_s = int(time.time()) + 86_400
    return {
        # the best case: requests that differ only in input share one check and plan (twins)
        "twins": [{**REQUEST, "input": {"n": i}} for i in range(n)],
        # no two alike: each its own app tag, retries, timeout and start, two events
        "mixed": [
            {
                **REQUEST,
                "event": "noop" if i % 2 else "fail",
                "app": f"app-{i}",
                "retries": i % 26,
                "timeout": 10 + i % 500,
                "start_at": 0 if i % 3 else start_s + i,
                "input": {"n": i, "user": f"user-{i}"},
            }
            for i in range(n)
        ],
        "recurring": [
            {**REQUEST, "start_at": start_s, "repeat": {"every": 3_600_000}, "input": {"n": i}}
            for i in range(n)
        ],
        "session": [
            {
                **REQUEST,
                "input": {"userId": "$Session{user}{id}", "n": i},
                "session": {"tag": "user-session", "token": token_of(i)},
            }
            for i in range(n)
        ],
    }


BATCH_LABELS = {
    "twins": "one event, inputs differ (the best case: twins share checks and plan)",
    "mixed": "mixed (every request its own app, retries, timeout, start; two events)",
    "recurring": "recurring (every hour)",
    "session": "with a session (each its own token, $Session placeholders)",
}


def schedule_batch(bench: Bench, reps: int, n: int = 10_000) -> list[Row]:
    """Figure 2: one ``schedule_many()`` of n jobs of each kind vs kombu's ``Producer.batch()`` of n
    ``apply_async()`` (like for like: both batched), and vs a loop of ``apply_async()``, jobs/s."""
    ductape, plain, noop = _sides(bench, "f2")
    tokens = [ductape.sessions.start("user-session", {"user": {"id": f"user-{i}"}}) for i in range(n)]
    kinds = batches(n, tokens.__getitem__)

    def celery_batched() -> None:
        # kombu's Producer.batch(): the messages of a batch go in pipelined writes
        with plain.producer_or_acquire() as producer, producer.batch():
            for _ in range(n):
                noop.apply_async(producer=producer)

    ways: dict[str, Callable[[], object]] = {
        kind: (lambda batch=batch: ductape.job.schedule_many(batch)) for kind, batch in kinds.items()
    }
    ways["kombu_batch"] = celery_batched
    ways["apply_async_loop"] = lambda: [noop.apply_async() for _ in range(n)]
    rates = _rates(bench, reps, n, (ductape, plain), ways)
    command = ".venv/bin/python -m bench --only 2"
    details = {"jobs_per_rep": n, "jobs_per_s": rates}
    rows = [
        row(
            f"2 schedule_many({n:,}), {BATCH_LABELS['twins']}",
            "jobs/s",
            rates["twins"],
            rates["kombu_batch"],
            ">= 1x (batched like for like)",
            lambda o, t, r: r >= 1,
            theirs_label="apply_async in Producer.batch()",
            details=details,
            command=command,
        )
    ]
    rows += [
        row(
            f"2 (info) schedule_many({n:,}), {BATCH_LABELS[kind]}",
            "jobs/s",
            rates[kind],
            rates["kombu_batch"],
            "-",
            None,
            theirs_label="apply_async in Producer.batch()",
            command=command,
        )
        for kind in ("mixed", "recurring", "session")
    ]
    rows.append(
        row(
            f"2 (info) schedule_many({n:,}), one event, vs an unbatched loop",
            "jobs/s",
            rates["twins"],
            rates["apply_async_loop"],
            "-",
            None,
            theirs_label="apply_async loop",
            command=command,
        )
    )
    return rows


INPUT_SIZES = {"100 B": 100, "10 KB": 10_000, "200 KB": 200_000}
CURVE = "11 schedule() latency by input size"
CALLS = {100: 1_000, 10_000: 500, 200_000: 100}  # calls per size and side in a repetition


def _payload(size: int) -> dict[str, Any]:
    """A JSON object of about ``size`` bytes serialized."""
    return {"blob": "x" * max(0, size - 12)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def schedule_latency(bench: Bench, reps: int, calls_per_size: dict[int, int] = CALLS) -> list[Row]:
    """Figure 11: ``schedule()`` vs ``apply_async()`` latency, p50 and p99 per call, by input size
    (the same object as the task's argument), one producer; a short curve, both sides."""
    ductape, plain, noop = _sides(bench, "f11")
    lat: dict[tuple[int, str], list[list[float]]] = {}
    for size in INPUT_SIZES.values():
        payload, calls = _payload(size), calls_per_size[size]
        ways = [
            ("ours", lambda payload=payload: ductape.job.schedule(**{**REQUEST, "input": payload})),
            ("theirs", lambda payload=payload: noop.apply_async(args=[payload])),
        ]
        for rep in range(reps):
            for side, call in ways if rep % 2 == 0 else reversed(ways):
                lat.setdefault((size, side), []).append([timed(call) * 1000 for _ in range(calls)])
            bench.drop(ductape.settings.key_prefix)
            bench.drop(plain.conf.bench_prefix)
    ductape.close()
    plain.close()
    rows = []
    for label, size in INPUT_SIZES.items():
        for q in (50, 99):
            rows.append(
                row(
                    f"11 schedule() p{q} latency, {label} input",
                    "ms",
                    [_percentile(r, q) for r in lat[(size, "ours")]],
                    [_percentile(r, q) for r in lat[(size, "theirs")]],
                    "-",
                    None,
                    theirs_label="apply_async",
                    details={"calls_per_rep": calls_per_size[size], "input_bytes": size},
                    command=".venv/bin/python -m bench --only 11",
                    point=Point(CURVE, f"p{q} per call, ms", size, "input, bytes"),
                )
            )
    return rows
