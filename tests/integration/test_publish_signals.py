"""Celery's before/after_task_publish fire for every run we hand over, as Celery's own publish
fires them: from the producer and from beat, over real Redis, with the headers a receiver adds
carried in the message the script pushes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from kombu import Queue

from ductape_jobs import Ductape
from ductape_jobs.brief import JobBrief
from ductape_jobs.celery_app import create_app
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from ductape_jobs.wire import EMBED
from tests.integration.test_beat_engine import T0, engine_for, schedule

TASK = "tests.echo"


class Heard:
    """What the publish signals' receivers were given; ``before`` adds a header, as
    OpenTelemetry's instrumentation adds ``traceparent``."""

    def __init__(self) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[dict[str, Any]] = []

    def on_before(self, **kwargs: Any) -> None:
        kwargs.pop("signal")
        kwargs["headers"]["x-added"] = f"seen:{kwargs['headers']['id']}"
        self.before.append(kwargs)

    def on_after(self, **kwargs: Any) -> None:
        kwargs.pop("signal")
        self.after.append(kwargs)


@pytest.fixture
def heard() -> Iterator[Heard]:
    got = Heard()
    before_task_publish.connect(got.on_before, weak=False)
    after_task_publish.connect(got.on_after, weak=False)
    try:
        yield got
    finally:
        before_task_publish.disconnect(got.on_before)
        after_task_publish.disconnect(got.on_after)


def queued(r: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """The messages on the dev queue of ``settings``' deployment, oldest first."""
    raw = r.lrange(Keys(settings.key_prefix).broker_prefix + settings.queue_for("dev"), 0, -1)
    return [json.loads(m) for m in reversed(raw)]


def test_producer_fires_both_signals_as_celery_does_and_pushes_the_added_header(
    heard: Heard, ductape: Ductape, settings: Settings, r: redis.Redis
) -> None:
    celery_heard = celery_publish(ductape.celery, settings, heard, r)
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"n": 1})
    run_id = f"{handle.job_id}:{int(handle.scheduled_at.timestamp() * 1000)}"
    [before], [after] = heard.before, heard.after
    assert before["sender"] == TASK
    assert before["body"] == ([run_id], {}, EMBED)
    assert before["exchange"] == "" and before["routing_key"] == settings.queue_for("dev")
    assert [q.name for q in before["declare"]] == [settings.queue_for("dev")]
    assert isinstance(before["declare"][0], Queue)
    assert before["properties"] == {"correlation_id": run_id, "reply_to": ""}
    assert before["retry_policy"] == celery_heard["retry_policy"]
    # Celery's own publish of the same task gives the same argument names and header names.
    assert set(before) == set(celery_heard)
    assert set(before["headers"]) == set(celery_heard["headers"])
    assert before["headers"]["id"] == run_id and before["headers"]["task"] == TASK
    assert after == {k: before[k] for k in ("sender", "body", "headers", "exchange", "routing_key")}
    [message] = queued(r, settings)
    assert message["headers"]["x-added"] == f"seen:{run_id}"  # what the receiver added was sent
    assert message["headers"]["id"] == run_id


def celery_publish(app: Celery, settings: Settings, heard: Heard, r: redis.Redis) -> dict[str, Any]:
    """What the receivers get from Celery's own send_task of TASK to the dev queue (the message
    is sent to the real broker and taken off again)."""
    app.send_task(TASK, args=["x:1"], queue=settings.queue_for("dev"))
    got = heard.before.pop()
    heard.after.pop()
    r.delete(Keys(settings.key_prefix).broker_prefix + settings.queue_for("dev"))
    return got


def test_beat_fires_both_signals_for_what_it_releases_and_pushes_the_added_header(
    heard: Heard, store: Store, settings: Settings, celery_app: Celery, r: redis.Redis
) -> None:
    job_id = schedule(store, settings, T0, start_at=T0 + 1_000, repeat={"every": 60_000, "limit": 2})
    engine, _ = engine_for(store, settings, celery_app)
    engine.tick(T0 + 1_000)
    run_id = f"{job_id}:{T0 + 1_000}"
    [before], [after] = heard.before, heard.after
    assert before["sender"] == TASK and before["body"] == ([run_id], {}, EMBED)
    assert after["headers"] is before["headers"] and after["sender"] == TASK
    [message] = queued(r, settings)
    assert message["headers"]["x-added"] == f"seen:{run_id}"
    assert json.loads(base64.b64decode(message["body"]))[0] == [run_id]


def test_without_receivers_nothing_is_added_nor_fired(
    store: Store, settings: Settings, celery_app: Celery, r: redis.Redis
) -> None:
    # Receivers another module connected at import (bench's RedBeat probe does) are set aside
    # for the test, and put back.
    saved = before_task_publish.receivers, after_task_publish.receivers
    before_task_publish.receivers, after_task_publish.receivers = [], []
    try:
        job_id = schedule(store, settings, T0, start_at=T0 + 1_000, repeat={"every": 60_000, "limit": 2})
        engine, _ = engine_for(store, settings, celery_app)
        brief = JobBrief(env="dev", product_tag="tests", event="echo")
        built = engine.messages.from_brief("j:1", brief, 1, 2)
        engine.tick(T0 + 1_000)
    finally:
        before_task_publish.receivers, after_task_publish.receivers = saved
    assert built.after is None  # nothing to fire after the write
    [message] = queued(r, settings)
    assert message["headers"]["id"] == f"{job_id}:{T0 + 1_000}" and "x-added" not in message["headers"]
    assert set(message["headers"]) == set(celery_app.amqp.create_task_message("x", TASK, [])[0])


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    app = create_app(settings)
    yield app
    app.close()


@pytest.fixture
def store(r: redis.Redis, prefix: str) -> Store:
    return Store(r, Keys(prefix))
