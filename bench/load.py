"""Loading stored schedules fast (pipelines, untimed): ours through CREATE_JOBS, RedBeat's entries.

Ours go through the library's own ``Store.create_jobs`` (the CREATE_JOBS script), so the records
are exactly what ``schedule()`` writes; only planning is done once, from a template, and copied.
RedBeat's are ``RedBeatSchedulerEntry`` objects written the way ``entry.save()`` writes them,
many per round trip instead of one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import schedule as interval
from redbeat.decoder import RedBeatJSONEncoder, to_timestamp
from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

from bench.handlers import PRODUCT
from bench.plain_app import TASK
from ductape_jobs import ops
from ductape_jobs.clock import now_ms
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.records import NewJob
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

CHUNK = 5_000


def job_id(n: int) -> str:
    """A deterministic 32-character job id (as long as the uuid4 hex ids schedule() makes)."""
    return f"b{n:031d}"


def template(settings: Settings, every_ms: int) -> NewJob:
    """A recurring no-op job as ``schedule()`` plans it (start in the future, so not released)."""
    now = now_ms()
    req = JobRequest.parse(
        {
            "env": "dev",
            "product_tag": PRODUCT,
            "event": "noop",
            "start_at": now + 86_400_000,
            "input": {},
            "repeat": {"every": every_ms, "overlap": "allow"},  # as RedBeat: every slot released
        }
    )
    return plan_job(req, settings, Sessions({}), now, "template")


def load_ours(
    store: Store,
    base: NewJob,
    numbers: Iterable[int],
    due_ms: Callable[[int], int],
    *,
    restore: bool = False,
    input_of: Callable[[int], dict[str, Any]] = lambda n: {"n": n},
    chunk: int = CHUNK,
) -> int:
    """Write schedules ``numbers`` (each input unique: ``input_of(n)``), schedule n falling due at
    ``due_ms(n)``, ``chunk`` jobs per CREATE_JOBS call.

    ``restore`` rewrites existing ones (to make them due again between repetitions): it skips the
    duplicate check, which would otherwise return the live job instead of writing.
    """
    now = now_ms()
    written = 0
    batch: list[NewJob] = []
    for n in numbers:
        due = due_ms(n)
        spec = replace(base.spec, input=input_of(n), start_ms=due, created_ms=now)
        batch.append(
            replace(
                base,
                job_id=job_id(n),
                spec=spec,
                next_run_ms=due,
                anchor_ms=due,
                due_ms=due,
                dedupe=not restore,
            )
        )
        if len(batch) >= chunk:
            written += sum(created for _, created in store.run(ops.create_jobs(store.keys, batch, now)))
            batch.clear()
    if batch:
        written += sum(created for _, created in store.run(ops.create_jobs(store.keys, batch, now)))
    return written


def load_redbeat(
    app: Celery,
    names: Iterable[str],
    last_run_at: Callable[[str], datetime],
    every: timedelta,
) -> int:
    """Write RedBeat entries of ``schedule(every)`` for task TASK, each last run at ``last_run_at(name)``."""
    client = get_redis(app)
    schedule_key = app.redbeat_conf.schedule_key  # type: ignore[attr-defined]
    written = 0
    pipe = client.pipeline(transaction=False)
    for name in names:
        entry = RedBeatSchedulerEntry(name=name, task=TASK, schedule=interval(every), app=app)
        entry.last_run_at = last_run_at(name)
        # What entry.save() writes, with meta overwritten so a rerun makes it due again.
        definition = {
            "name": entry.name,
            "task": entry.task,
            "args": entry.args,
            "kwargs": entry.kwargs,
            "options": entry.options,
            "schedule": entry.schedule,
            "enabled": entry.enabled,
        }
        pipe.hset(entry.key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
        pipe.hset(entry.key, "meta", json.dumps({"last_run_at": entry.last_run_at}, cls=RedBeatJSONEncoder))
        # The score RedBeat wrote when the entry last ran (entry.score taken now would add the
        # time left until due to last_run_at, a moment ago, and file it too early).
        pipe.zadd(schedule_key, {entry.key: to_timestamp(entry.last_run_at + every)})
        written += 1
        if len(pipe) >= 3 * CHUNK:
            pipe.execute()
    pipe.execute()
    return written
