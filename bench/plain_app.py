"""The baseline: a plain Celery app on the same Redis, with a no-op task that INCRs a counter.

``celery -A bench.plain_app worker`` and ``celery -A bench.plain_app beat -S ...`` read
``REDIS_URL``, ``BENCH_PREFIX`` and ``BENCH_DELIVERY``; the bench process builds its own with
``make_app``. Celery's defaults are kept (what a user gets), except that there is no result
backend, as in ours. ``BENCH_DELIVERY=ours`` gives it our workers' delivery defaults instead
(late acks, prefetch 2, no task events), to tell the cost of those settings from the cost of our
code.
"""

from __future__ import annotations

import os

import redis
from celery import Celery
from celery.signals import worker_ready

from bench.counter import counter_key
from bench.work import do_work

QUEUE = "plain"
TASK = "bench.plain.noop"
WORK_TASK = "bench.plain.work"  # the same INCR after the work its argument names (figure 3)


def queue_key(prefix: str) -> str:
    """The Redis list kombu keeps the plain queue in."""
    return f"{prefix}:broker:{QUEUE}"


def redbeat_prefix(prefix: str) -> str:
    """RedBeat's key prefix for this run."""
    return f"{prefix}:rb:"


# Our workers' delivery defaults (ductape_jobs/celery_app.py, settings.py), written out rather than
# read from Settings: a plain worker must not load our package, or its memory figure carries ours
# (tests/integration/test_bench_runs.py checks they still match).
OUR_DELIVERY = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 2,
    "worker_send_task_events": False,
}


def make_app(redis_url: str, prefix: str, *, redbeat_lock: bool = True, delivery: str = "celery") -> Celery:
    """A plain Celery app whose broker keys and RedBeat keys live under ``prefix``."""
    app = Celery("bench_plain", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_transport_options={"global_keyprefix": f"{prefix}:broker:"},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        bench_prefix=prefix,
        enable_utc=True,
        redbeat_redis_url=redis_url,
        redbeat_redis_options={},
        redbeat_key_prefix=redbeat_prefix(prefix),
        # In-process ticking (figure 4) runs without the lock: one scheduler, nobody to fence.
        redbeat_lock_key=f"{redbeat_prefix(prefix)}:lock" if redbeat_lock else None,
    )
    if delivery == "ours":
        app.conf.update(OUR_DELIVERY)

    counter = counter_key(prefix)
    client: list[redis.Redis] = []

    def count() -> None:
        if not client:  # opened lazily: one connection per prefork child
            client.append(redis.Redis.from_url(redis_url))
        client[0].incr(counter)

    @app.task(name=TASK, ignore_result=True, shared=False)
    def noop(*_: object) -> None:
        count()

    @app.task(name=WORK_TASK, ignore_result=True, shared=False)
    def work(kind: str) -> None:
        do_work(kind)
        count()

    @worker_ready.connect(weak=False)
    def ready(**_: object) -> None:
        redis.Redis.from_url(redis_url).set(f"{prefix}:bench:plain-ready", 1)

    return app


app = make_app(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_PREFIX", "bench"),
    delivery=os.environ.get("BENCH_DELIVERY", "celery"),
)
