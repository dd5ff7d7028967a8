"""Celery's task-sent events for every run we hand over, over real Redis, heard by a real event
receiver (what Flower and ``celery events`` run): from both clients (due now, within the horizon
with its ETA, triggered, backfilled, a batch) and from beat (a released run, a retry
released from the due index, a lost run sent again), and none at all while events are off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from beat.engine import BeatEngine
from beat.lost import LostRuns
from ductape_jobs import AsyncDuctape, Ductape, JobStatus
from ductape_jobs.celery_app import create_app
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.events import SentEvents
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from ductape_jobs.terms import ms_to_datetime
from ductape_jobs.wire import MessageBuilder
from tests.e2e.test_sessions_e2e import EventTap
from tests.integration.test_backfill import echo, past_schedule
from tests.support import wait_for

MIN = 60_000


@pytest.fixture
def on(settings: Settings) -> Settings:
    return settings.replace(**{"task_events": True})


@pytest.fixture
def tap(settings: Settings) -> Iterator[EventTap]:
    with EventTap(settings) as tap:
        yield tap


def sent(tap: EventTap, run_id: str) -> dict[str, Any]:
    """The one task-sent event of a run (waiting for it)."""
    return tap.wait(run_id, "task-sent")["task-sent"]


def sent_all(tap: EventTap, run_id: str) -> list[dict[str, Any]]:
    """Every task-sent event of a run heard so far."""
    return [e for e in list(tap.events) if e["type"] == "task-sent" and e["uuid"] == run_id]


def test_the_producer_sends_task_sent_as_celery_would_for_each_run_it_hands_over(
    on: Settings, tap: EventTap
) -> None:
    with Ductape(settings=on) as ductape:
        now = ductape.job.schedule(**echo(input={"note": "now"}))
        soon_at = now_ms() + 20_000  # within the horizon: sent at once, with its ETA
        soon = ductape.job.schedule(**echo(start_at=soon_at, input={"note": "soon"}))
        later = ductape.job.schedule(**echo(start_at=now_ms() + 10 * MIN))  # waits for beat
        batch = ductape.job.schedule_many([echo(input={"i": i}) for i in range(3)])  # twins of one shape
        again = ductape.job.schedule(**echo(input={"note": "now"}))  # a new one-off: a new job
        runs = {h.job_id: ductape.job.get(h.job_id).last_run_id for h in (now, soon, *batch, again)}
        job_id, start, _ = past_schedule(ductape, minutes=3)
        backfilled = ductape.job.backfill(job_id, start, now_ms() - MIN)
        triggered = ductape.job.trigger(job_id)

    first = sent(tap, runs[now.job_id])
    assert first == {
        **first,
        "uuid": runs[now.job_id],
        "root_id": runs[now.job_id],
        "parent_id": None,
        "name": "tests.echo",
        "args": "{'note': 'now'}",
        "kwargs": repr({"job_id": now.job_id}),
        "retries": 0,
        "eta": None,
        "expires": None,
        "queue": on.queue_for("dev"),
        "exchange": on.queue_for("dev"),
        "routing_key": on.queue_for("dev"),
    }
    assert sent(tap, runs[soon.job_id])["eta"] == ms_to_datetime(soon_at).isoformat()  # type: ignore[union-attr]
    for handle in batch:
        assert sent(tap, runs[handle.job_id])["kwargs"] == repr({"job_id": handle.job_id})
    assert backfilled and all(sent(tap, run_id) for run_id in [*backfilled, triggered])
    # Nothing for a run not handed over yet (beat sends it at its time), nor twice for any run.
    assert not [e for e in tap.events if e.get("kwargs") == repr({"job_id": later.job_id})]
    uuids = [e["uuid"] for e in tap.events if e["type"] == "task-sent"]
    assert len(uuids) == len(set(uuids))


def test_beat_sends_task_sent_for_released_runs_and_retries(
    on: Settings, settings: Settings, tap: EventTap
) -> None:
    app = create_app(on)
    handed = SentEvents(app)
    store = Store(connect(on), Keys(on.key_prefix), Retention.of(on))
    engine = BeatEngine(store, on, MessageBuilder(app, on), "beat-a", handed=handed)
    with Ductape(settings=settings) as ductape:  # events off here: only beat sends
        handle = ductape.job.schedule(**echo(start_at=now_ms() + 10 * MIN, retries=1))
        job = ductape.job.get(handle.job_id)
        assert job.status == JobStatus.SCHEDULED and job.next_run_ms is not None
        engine.tick(job.next_run_ms)
        run_id = ductape.job.get(handle.job_id).last_run_id or ""
        assert sent(tap, run_id)["kwargs"] == repr({"job_id": handle.job_id})
        # A retry waiting out a long backoff in the due index, released by beat: sent again.
        due_ms = job.next_run_ms + 10 * MIN
        store.redis.hset(store.keys.run(run_id), "status", "retrying")
        store.redis.zadd(store.keys.due, {f"r:{run_id}": due_ms})
        engine.tick(due_ms)
        wait_for(lambda: len(sent_all(tap, run_id)) == 2, 30, "the retry's task-sent")
    handed.close()
    store.redis.close()
    app.close()


def test_beat_sends_task_sent_for_a_lost_run_it_sends_again(
    on: Settings, settings: Settings, tap: EventTap
) -> None:
    app = create_app(on)
    handed = SentEvents(app)
    with Ductape(settings=settings) as ductape:  # events off here: only beat's sweep sends
        lost = LostRuns(ductape.store, on, MessageBuilder(app, on), handed)
        handle = ductape.job.schedule(**echo())
        run_id = ductape.job.get(handle.job_id).last_run_id or ""
        # Popped by a worker that died before kombu recorded it as unacknowledged: gone.
        assert ductape.store.redis.rpop(ductape.store.keys.broker_prefix + on.queue_for("dev"))
        assert lost.sweep(now_ms() + lost.after_ms + 1) == 1
    assert sent(tap, run_id)["kwargs"] == repr({"job_id": handle.job_id})
    handed.close()
    app.close()


def test_no_event_while_events_are_off(settings: Settings, tap: EventTap) -> None:
    with Ductape(settings=settings) as ductape:
        handle = ductape.job.schedule(**echo())
        assert not ductape.sent.enabled
        run_id = ductape.job.get(handle.job_id).last_run_id or ""
    with Ductape(settings=settings.replace(**{"task_events": True})) as ductape:
        marker = ductape.job.schedule(**echo())  # sent after the first: once it is heard, so would be that
        sent(tap, ductape.job.get(marker.job_id).last_run_id or "")
    assert "task-sent" not in tap.of(run_id)


def test_the_async_client_sends_them_too(on: Settings, tap: EventTap) -> None:
    async def main() -> tuple[str, str]:
        async with AsyncDuctape(settings=on) as ductape:
            handle = await ductape.job.schedule(**echo(input={"from": "async"}))
            return handle.job_id, (await ductape.job.get(handle.job_id)).last_run_id or ""

    job_id, run_id = asyncio.run(main())
    assert sent(tap, run_id)["kwargs"] == repr({"job_id": job_id})
