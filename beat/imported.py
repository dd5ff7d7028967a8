"""Reading a Celery app's ``beat_schedule`` into entries of ours (ductape_jobs.imported).

Numbers (seconds), ``timedelta`` and ``celery.schedules.schedule`` become ``every`` rules;
``crontab`` becomes a cron in the app's timezone; ``solar`` and anything else are refused, with
the entry named. Each entry's task is routed as ``app.send_task`` would route it (its options,
then ``task_routes``, then the default queue), once, here.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import Celery
from celery.schedules import crontab, schedule

from ductape_jobs.errors import JobValidationError
from ductape_jobs.imported import BeatSchedule, ImportedEntry
from ductape_jobs.settings import Settings
from ductape_jobs.terms import CeleryCall
from ductape_jobs.urls import is_sentinel, sentinel_target

if TYPE_CHECKING:
    from ductape_jobs.models import Repeat

log = logging.getLogger("beat")

# send_task options an imported entry may carry; the routing ones are resolved here.
OPTIONS = {
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "expires",
    "headers",
    "time_limit",
    "soft_time_limit",
    "ignore_result",
}
_FULL = {"minute": 60, "hour": 24, "day_of_week": 7, "day_of_month": 31, "month_of_year": 12}


def beat_schedule(app: Celery, settings: Settings) -> BeatSchedule | None:
    """The app's beat_schedule to import, or None when there is none or it cannot be (logged)."""
    config = app.conf.beat_schedule or {}
    if not config:
        return None
    master = (app.conf.broker_transport_options or {}).get("master_name")
    if not _same_redis(str(app.conf.broker_url or ""), settings, master):
        log.error(
            "beat_schedule not imported: the app's broker is not ductape's Redis (REDIS_URL); "
            "its tasks would be pushed where its workers do not look. Point broker_url at REDIS_URL"
        )
        return None
    entries = []
    for name, raw in config.items():
        try:
            entries.append(ImportedEntry(_call(app, str(name), raw), _repeat(app, raw.get("schedule"))))
        except (JobValidationError, ValueError, TypeError) as exc:
            log.error("beat_schedule entry %r not imported: %s", name, exc)
    return BeatSchedule(app.main or "celery", entries, settings)


def _call(app: Celery, name: str, raw: dict[str, Any]) -> CeleryCall:
    task = raw.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError(f"'task' must be a task name, not {task!r}")
    options = dict(raw.get("options") or {})
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"options {unknown} are not supported; use only {sorted(OPTIONS)}")
    if not isinstance(options.get("expires", 0), int | float):
        raise ValueError("options.expires must be seconds (a number), as the entry repeats")
    args, kwargs = list(raw.get("args") or ()), dict(raw.get("kwargs") or {})
    route = app.amqp.router.route(dict(options), task, args, kwargs)
    queue = route.pop("queue")
    if isinstance(queue, str):
        queue = app.amqp.queues[queue]
    route.update(
        queue=queue.name,
        exchange=route.get("exchange") or queue.exchange.name,
        routing_key=route.get("routing_key") or queue.routing_key or queue.name,
    )
    return CeleryCall(entry=name, task=task, args=args, kwargs=kwargs, options=route)


def _repeat(app: Celery, when: object) -> Repeat:
    """The entry's schedule as a repeat of ours (overlap 'allow': Celery beat has no such rule)."""
    from ductape_jobs.models import Repeat  # validated (pydantic): loaded only when there are entries

    if isinstance(when, int | float) and not isinstance(when, bool):
        when = timedelta(seconds=when)
    if isinstance(when, schedule):
        when = when.run_every
    if isinstance(when, timedelta):
        return Repeat(every=round(when.total_seconds() * 1000), overlap="allow")
    if isinstance(when, crontab):
        return Repeat(cron=_cron(when), tz=getattr(app.timezone, "key", "UTC"), overlap="allow")
    raise ValueError(
        f"its schedule (a {type(when).__name__}) cannot be imported: numbers, timedelta and "
        "crontab can (solar schedules cannot); move it to a crontab or an interval"
    )


def _cron(when: crontab) -> str:
    """The crontab as a 5-field cron, from the value sets Celery expanded (any syntax it reads)."""
    fields = {name: sorted(getattr(when, name)) for name in _FULL}
    if len(fields["day_of_week"]) < 7 and len(fields["day_of_month"]) < 31:
        raise ValueError(
            "it restricts both day_of_week and day_of_month: Celery runs when both match, a cron "
            "when either does; split it into two entries or drop one of the two"
        )
    text = [
        "*" if len(values) == _FULL[name] else ",".join(map(str, values)) for name, values in fields.items()
    ]
    minute, hour, dow, dom, month = text
    return f"{minute} {hour} {dom} {month} {dow}"


def _same_redis(broker_url: str, settings: Settings, master: str | None = None) -> bool:
    """Both name one Redis server and database (never logged: they may hold a password); behind
    Sentinel, one master (``master``: the app's ``master_name`` option) of the same sentinels."""
    ours = settings.sentinel_target()
    if ours is not None or is_sentinel(broker_url):
        if ours is None or not is_sentinel(broker_url):
            return False
        try:  # an app without master_name would not reach a broker at all: take ours
            theirs = sentinel_target(broker_url, master=master or ours.master)
        except ValueError:
            return False
        assert theirs is not None
        return (theirs.master, theirs.db, set(theirs.sentinels)) == (
            ours.master,
            ours.db,
            set(ours.sentinels),
        )
    a, b = urlsplit(broker_url), urlsplit(settings.url)
    host = {"localhost": "127.0.0.1", "::1": "127.0.0.1", None: "127.0.0.1"}
    where = [(host.get(u.hostname, u.hostname), u.port or 6379, u.path.strip("/") or "0") for u in (a, b)]
    return a.scheme.startswith(("redis", "rediss", "valkey")) and where[0] == where[1]
