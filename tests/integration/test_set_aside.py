"""Poison records written straight into real Redis: beat sets each aside with its reason, and the
other schedules run on time; listing skips and reports them (engine ticked at chosen instants)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from celery import Celery
from click.testing import CliRunner

from ductape_jobs import Ductape, RecordUnreadableError, jobfields, ops
from ductape_jobs.cli.main import cli
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from tests.integration.test_beat_engine import (
    MIN,
    T0,
    celery_app,
    client,
    due_members,
    engine_for,
    job_state,
    schedule,
    store,
)
from tests.old_layout import to_old_layout

__all__ = ["celery_app", "client", "store"]  # fixtures, imported for pytest

POISON = {
    "garbage": "{not json",
    "wrong shape": '{"not": "a brief"}',
    "unknown zone": None,  # a brief whose zone this beat's tzdata lacks (filled in below)
    "deciding raises": None,  # a rule the occurrence maths cannot take
}


# The same in today's layout (jobfields.py): fields a beat cannot read or decide.
FIELD_POISON = {
    "fields: bad number": {"every": "soon"},
    "fields: unknown zone": {"cron": "0 * * * *", "tz": "Mars/Olympus"},
}


def poison_briefs(store: Store, healthy: str) -> dict[str, str]:
    """A brief for each poison case, built from a real one so only the poison differs."""
    found = jobfields.fields(store.redis.hgetall(store.keys.job(healthy)))
    brief = dataclasses.asdict(jobfields.brief_of(found))
    zone = {**brief, "rule": {**brief["rule"], "cron": "0 * * * *", "every_ms": None, "tz": "Mars/Olympus"}}
    raises = {**brief, "rule": {**brief["rule"], "not_a_rule_field": 1}}
    return {
        **POISON,
        "unknown zone": json.dumps(zone),
        "deciding raises": json.dumps(raises),
    }


def test_entries_beat_cannot_read_or_decide_are_set_aside_and_the_others_run_on_time(
    store: Store, settings: Settings, celery_app: Celery, ductape: Ductape
):
    every = {"every": MIN, "limit": 3}
    first = schedule(store, settings, T0, start_at=T0 + MIN, repeat=every, input={"n": "first"})
    briefs = poison_briefs(store, first)
    poisoned = {}
    for case, brief in briefs.items():
        job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN}, input={"n": case})
        to_old_layout(store.redis, store.keys.job(job_id))  # a record in the layout before
        store.redis.hset(store.keys.job(job_id), "brief", brief)
        poisoned[case] = job_id
    for case, damage in FIELD_POISON.items():  # today's layout: one field damaged
        job_id = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN}, input={"n": case})
        store.redis.hset(store.keys.job(job_id), mapping=damage)
        if "cron" in damage:
            store.redis.hdel(store.keys.job(job_id), "every")
        poisoned[case] = job_id
    last = schedule(store, settings, T0, start_at=T0 + MIN, repeat=every, input={"n": "last"})
    engine, queues = engine_for(store, settings, celery_app)

    report = engine.tick(T0 + MIN)
    assert report.released == 2 and queues.nominal(first) == queues.nominal(last) == [T0 + MIN]
    assert {c.entry.job_id for c in report.set_aside} == set(poisoned.values())
    for case, job_id in poisoned.items():
        state = job_state(store, job_id)
        assert state["status"] == "failed", case
        assert f"j:{job_id}" not in due_members(store), case
        assert queues.nominal(job_id) == [], case
        assert store.redis.zscore(store.keys.retired, job_id) is not None, case  # leaves after retention
    reasons = {a.job_id: a.reason for a in ductape.job.set_aside()}
    assert set(reasons) == set(poisoned.values())
    assert "could not read" in reasons[poisoned["garbage"]]
    assert "could not read" in reasons[poisoned["wrong shape"]]
    assert "Mars/Olympus" in reasons[poisoned["unknown zone"]]
    assert "Mars/Olympus" in reasons[poisoned["fields: unknown zone"]]
    assert "could not read" in reasons[poisoned["fields: bad number"]]
    assert "not_a_rule_field" in reasons[poisoned["deciding raises"]]
    assert ductape.job.get(poisoned["unknown zone"]).last_error == reasons[poisoned["unknown zone"]]
    # The healthy schedules go on at their times; nothing poisoned comes back.
    assert engine.tick(T0 + 2 * MIN).released == 2
    assert engine.tick(T0 + 3 * MIN).released == 2
    assert queues.nominal(first) == queues.nominal(last) == [T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN]
    assert due_members(store) == {}
    # A set-aside schedule is no live twin: the same request makes a new schedule.
    again = schedule(
        store, settings, T0 + 3 * MIN, start_at=T0 + 4 * MIN, repeat={"every": MIN}, input={"n": "garbage"}
    )
    assert again != poisoned["garbage"]


def test_an_entry_decided_ahead_is_set_aside_too(store: Store, settings: Settings, celery_app: Celery):
    healthy = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "limit": 2})
    broken = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN}, input={"n": 2})
    store.redis.hset(store.keys.job(broken), mapping=FIELD_POISON["fields: unknown zone"])
    store.redis.hdel(store.keys.job(broken), "every")
    engine, queues = engine_for(store, settings, celery_app)
    engine.tick(T0 + MIN - 100)  # decides what falls due within the next 250 ms
    report = engine.tick(T0 + MIN)
    assert report.released == 1 and queues.nominal(healthy) == [T0 + MIN]
    assert [c.entry.job_id for c in report.set_aside] == [broken]
    assert job_state(store, broken)["status"] == "failed"


def test_a_retry_of_an_unreadable_job_is_dead_lettered_with_the_reason(
    store: Store, settings: Settings, celery_app: Celery, ductape: Ductape
):
    job_id = schedule(store, settings, T0, start_at=0, retries=3)
    run_id = f"{job_id}:{T0}"
    started = store.begin_run(run_id, job_id, T0, 300_000, "test:0:200")
    retry_at = T0 + 5 * MIN
    assert store.finish_run(
        run_id, job_id, started.attempt, T0 + 10, "retry_due", error="boom", due_ms=retry_at
    )
    healthy = schedule(store, settings, T0, start_at=retry_at)
    store.redis.hset(store.keys.job(job_id), "brief", "{not json")
    engine, queues = engine_for(store, settings, celery_app)
    report = engine.tick(retry_at)
    assert report.released == 1 and queues.nominal(healthy) == [retry_at]
    assert [c.entry.member for c in report.set_aside] == [f"r:{run_id}"]
    [dead] = ductape.job.failed()
    assert dead.run_id == run_id and "could not read" in (dead.error or "")
    assert job_state(store, job_id)["status"] == "failed" and due_members(store) == {}


def test_the_lost_run_sweep_sets_aside_a_run_whose_job_it_cannot_read(
    store: Store, settings: Settings, celery_app: Celery, ductape: Ductape
):
    # Two runs handed to Celery whose messages were lost; one job's record is damaged.
    broken = schedule(store, settings, T0, start_at=0)
    healthy = schedule(store, settings, T0, start_at=0)
    store.redis.delete(store.keys.broker_prefix + settings.queue_for("dev"))
    store.redis.hset(store.keys.job(broken), "brief", '{"not": "a brief"}')
    engine, queues = engine_for(store, settings, celery_app)
    later = T0 + 10 * MIN  # past the point where an unmoved run is looked at
    report = engine.tick(later)
    assert report.resent == 1 and queues.run_ids == [f"{healthy}:{T0}"]
    assert report.runs_set_aside == 1
    [dead] = ductape.job.failed()
    assert dead.run_id == f"{broken}:{T0}" and "could not read" in (dead.error or "")
    assert [a.job_id for a in ductape.job.set_aside()] == [broken]
    assert store.redis.zscore(store.keys.inflight, f"{broken}:{T0}") is None
    assert store.redis.zscore(store.keys.retired, broken) is not None  # leaves after retention
    again = engine.tick(later + 10 * MIN)  # the next pass: nothing left to trip over
    assert again.runs_set_aside == 0 and again.resent == 0  # the healthy message waits in its queue


@pytest.mark.parametrize(
    "damage",
    [
        {"spec": "{not json"},
        {"spec": '{"env": "dev"}'},
        {"status": "no-such-status"},
        {"created_ms": "yesterday"},
        {"result": "{not json"},
    ],
    ids=["garbage-spec", "partial-spec", "bad-status", "bad-number", "bad-result"],
)
def test_listing_skips_and_reports_unreadable_records(
    store: Store, settings: Settings, ductape: Ductape, damage: dict[str, str]
):
    before = schedule(store, settings, T0, start_at=0)
    broken = schedule(store, settings, T0, start_at=0)
    after = schedule(store, settings, T0, start_at=0)
    store.redis.hset(store.keys.job(broken), mapping=damage)

    found = ductape.job.list()
    assert {j.job_id for j in found} == {before, after}
    assert [u.job_id for u in found.unreadable] == [broken]
    with pytest.raises(RecordUnreadableError, match=broken):
        ductape.job.get(broken)
    assert ductape.job.get(before).job_id == before

    runner = CliRunner()
    env = {"REDIS_URL": settings.url, "DUCTAPE_KEY_PREFIX": settings.key_prefix}
    listed = runner.invoke(cli, ["list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert {j["job_id"] for j in json.loads(listed.stdout)} == {before, after}
    assert f"skipped job {broken}" in listed.stderr


def test_a_record_written_before_briefs_is_read_through_its_spec(
    store: Store, settings: Settings, celery_app: Celery
):
    older = schedule(store, settings, T0, start_at=T0 + MIN, repeat={"every": MIN, "limit": 2})
    to_old_layout(store.redis, store.keys.job(older), brief=False)
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(T0 + MIN).released == 1
    assert engine.tick(T0 + 2 * MIN).released == 1
    assert queues.nominal(older) == [T0 + MIN, T0 + 2 * MIN]
    [dispatch] = store.run(ops.beat.dispatches(store.keys, [f"{older}:{T0 + MIN}"]))
    assert dispatch.brief.event == "echo"  # type: ignore[union-attr]
