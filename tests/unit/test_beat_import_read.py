"""Reading a Celery app's beat_schedule (beat/imported.py): no Redis, no processes."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab, schedule, solar

from beat.imported import beat_schedule
from ductape_jobs.imported import BeatSchedule, job_id_for
from ductape_jobs.settings import Settings

URL = "redis://127.0.0.1:6379/0"
SETTINGS = Settings(redis_url=URL, key_prefix="unit")


def read(entries: dict[str, Any], broker: str = URL, **conf: Any) -> BeatSchedule:
    app = Celery("proj", broker=broker)
    app.conf.update(beat_schedule=entries, **conf)
    got = beat_schedule(app, SETTINGS)
    assert got is not None
    return got


@pytest.mark.parametrize(
    ("when", "cron"),
    [
        (crontab(), "* * * * *"),
        (crontab(minute=0, hour=3), "0 3 * * *"),
        (crontab(minute="*/20", hour="9-11", day_of_week="mon-fri"), "0,20,40 9,10,11 * * 1,2,3,4,5"),
        (crontab(minute=30, hour=0, day_of_month="1,15", month_of_year="*/6"), "30 0 1,15 1,7 *"),
        (crontab(minute=0, hour=12, day_of_week="sun"), "0 12 * * 0"),
    ],
)
def test_a_crontab_becomes_a_cron_in_the_apps_timezone(when: crontab, cron: str) -> None:
    imported = read({"e": {"task": "t", "schedule": when}}, timezone="Europe/Paris")
    (entry,) = imported.entries
    assert (entry.repeat.cron, entry.repeat.tz, entry.repeat.overlap) == (cron, "Europe/Paris", "allow")


@pytest.mark.parametrize("when", [5, 5.0, timedelta(seconds=5), schedule(timedelta(seconds=5))])
def test_numbers_timedeltas_and_schedules_become_every(when: object) -> None:
    (entry,) = read({"e": {"task": "t", "schedule": when}}).entries
    assert entry.repeat.every == 5_000


def test_args_kwargs_and_options_are_kept_and_routed_as_send_task_would() -> None:
    imported = read(
        {
            "a": {"task": "t.a", "schedule": 5, "args": (1, 2), "kwargs": {"k": "v"}},
            "b": {"task": "t.b", "schedule": 5, "options": {"queue": "q", "priority": 6, "expires": 9}},
            "c": {"task": "t.routed", "schedule": 5},
        },
        task_routes={"t.routed": {"queue": "routed"}},
    )
    a, b, c = (e.call for e in imported.entries)
    assert (a.args, a.kwargs, a.options["queue"]) == ([1, 2], {"k": "v"}, "celery")
    assert (b.options["queue"], b.options["routing_key"], b.options["priority"], b.options["expires"]) == (
        "q", "q", 6, 9,
    )  # fmt: skip
    assert c.options["queue"] == "routed"
    rows, refused = imported.rows(1_900_000_000_000)
    assert refused == [] and [r.job_id for r in rows] == [job_id_for("proj", n) for n in "abc"]


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        # a solar needs the ephem package to be made; refusing it only looks at its type
        ({"task": "t", "schedule": object.__new__(solar)}, "(a solar) cannot be imported"),
        (
            {"task": "t", "schedule": crontab(day_of_week=1, day_of_month=1)},
            "both day_of_week and day_of_month",
        ),
        ({"task": "t", "schedule": 5, "options": {"countdown": 3}}, "['countdown'] are not supported"),
        ({"schedule": 5}, "'task' must be a task name"),
    ],
)
def test_an_entry_we_cannot_run_is_refused_with_its_name(
    entry: dict[str, Any], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "beat"):
        imported = read({"bad one": entry, "good": {"task": "t", "schedule": 5}})
    assert [e.call.entry for e in imported.entries] == ["good"]
    assert "beat_schedule entry 'bad one' not imported" in caplog.text and said in caplog.text


def test_an_entry_below_the_minimum_interval_is_refused_when_planned() -> None:
    rows, refused = read({"fast": {"task": "t", "schedule": 0.5}}).rows(1_900_000_000_000)
    assert (
        rows == []
        and "beat_schedule entry 'fast' not imported" in refused[0]
        and "repeat.every" in refused[0]
    )


def test_an_app_on_another_redis_imports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    app = Celery("proj", broker="redis://:hunter2@10.9.9.9:6379/3")
    app.conf.beat_schedule = {"e": {"task": "t", "schedule": 5}}
    with caplog.at_level(logging.ERROR, "beat"):
        assert beat_schedule(app, SETTINGS) is None
    assert "not ductape's Redis" in caplog.text and "hunter2" not in caplog.text
