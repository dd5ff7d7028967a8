"""A plain Celery project with a ``beat_schedule``, as one switching to ductape-jobs has it.

``celery -A tests.beatapp beat -S beat.RedisScheduler`` imports its entries
(tests/e2e/test_beat_import.py); ``celery -A tests.beatapp worker -Q celery,slow`` runs them. Each
task records its call in Redis. BEATAPP_DROP names entries left out of the config (a restart with
an entry removed).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import redis
from celery import Celery, Task
from celery.schedules import crontab

PREFIX = os.environ.get("DUCTAPE_KEY_PREFIX", "ductape")

app = Celery("tests.beatapp", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    # the app's broker keys stay inside this test's prefix, beside (not among) ductape's own
    broker_transport_options={"global_keyprefix": f"{PREFIX}:app:"},
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)

ENTRIES: dict[str, dict[str, Any]] = {
    "add every second": {"task": "tests.beatapp.add", "schedule": 1.0, "args": (2, 3)},
    "greet": {
        "task": "tests.beatapp.greet",
        "schedule": timedelta(seconds=2),
        "kwargs": {"name": "ada"},
        "options": {"queue": "slow", "expires": 30},
    },
    "office hours": {
        "task": "tests.beatapp.add",
        "schedule": crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"),
        "args": (1, 1),
    },
}
_dropped = set(filter(None, os.environ.get("BEATAPP_DROP", "").split(",")))
app.conf.beat_schedule = {name: entry for name, entry in ENTRIES.items() if name not in _dropped}


def calls_key(task: str, prefix: str = PREFIX) -> str:
    """LIST: one JSON line per call of ``task``."""
    return f"{prefix}:beatapp:{task}"


def _record(task: Task, name: str, **seen: Any) -> None:
    info = task.request.delivery_info or {}
    line = {"id": task.request.id, "queue": info.get("routing_key"), **seen}
    client = redis.Redis.from_url(app.conf.broker_url)
    client.rpush(calls_key(name), json.dumps(line))
    client.close()


@app.task(bind=True)
def add(self: Task, x: int, y: int) -> int:
    """Adds, and records the call."""
    _record(self, "add", args=[x, y])
    return x + y


@app.task(bind=True)
def greet(self: Task, name: str) -> str:
    """Greets, and records the call."""
    _record(self, "greet", kwargs={"name": name})
    return f"hello {name}"
