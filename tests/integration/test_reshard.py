"""Changing the shard count (``ductape-jobs reshard``): every record moves to its job's shard, a
deployment keeps working after the move (listing, dedupe, beat releasing each run once), and a
live beat refuses the move."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from beat.engine import BeatEngine
from ductape_jobs import Ductape, ops
from ductape_jobs.celery_app import create_app
from ductape_jobs.cli.main import cli
from ductape_jobs.clock import now_ms
from ductape_jobs.keys import Keys, route_of
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.reshard import reshard
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.store import Retention, Store
from ductape_jobs.wire import MessageBuilder

HOUR = 3_600_000
ECHO = {"env": "dev", "product_tag": "tests", "event": "echo"}


@pytest.fixture
def start() -> int:
    return now_ms() + HOUR


def client_of(settings: Settings, shards: int) -> Ductape:
    return Ductape(settings=settings.replace(**{"shards": shards}))


def populate(ductape: Ductape, at: int) -> dict[str, str]:
    """One-offs, schedules, keyed and idempotent jobs, a dead letter; identity -> job id."""
    ids = {}
    for i in range(20):
        ids[f"once-{i}"] = ductape.job.schedule({**ECHO, "input": {"i": i}, "start_at": at}).job_id
        ids[f"every-{i}"] = ductape.job.schedule(
            {**ECHO, "input": {"e": i}, "start_at": at, "repeat": {"every": HOUR}}
        ).job_id
        ids[f"key-{i}"] = ductape.job.schedule({**ECHO, "input": {}, "key": f"k-{i}", "start_at": at}).job_id
        ids[f"idem-{i}"] = ductape.job.schedule(
            {**ECHO, "input": {}, "idempotency_key": f"i-{i}", "start_at": at}
        ).job_id
    return ids


def check(settings: Settings, shards: int, ids: dict[str, str], at: int) -> None:
    """The deployment, read with ``shards``, holds every job where it belongs and dedupes."""
    keys = Keys(settings.key_prefix, shards)
    r = redis.Redis.from_url(settings.url)
    with client_of(settings, shards) as ductape:
        listed = {j.job_id for j in ductape.job.list(limit=1000)}
        assert listed == set(ids.values())
        for name, job_id in ids.items():
            assert r.exists(keys.job(job_id)), (name, keys.job(job_id))
            fp = r.hget(keys.job(job_id), "fp")
            if fp:  # the identity entry moved with the job, and the job names it
                assert fp.decode().startswith(keys.of_job(job_id).space + ":")
                assert r.get(fp) == job_id.encode()
        for i in range(20):
            again = ductape.job.schedule(
                {**ECHO, "input": {"e": i}, "start_at": at, "repeat": {"every": HOUR}}
            )
            assert again.job_id == ids[f"every-{i}"]
            assert (
                ductape.job.schedule({**ECHO, "input": {}, "key": f"k-{i}", "start_at": at}).job_id
                == ids[f"key-{i}"]
            )
            same = ductape.job.schedule({**ECHO, "input": {}, "idempotency_key": f"i-{i}", "start_at": at})
            assert same.job_id == ids[f"idem-{i}"]
    due = sum(r.zcard(k.due) for k in keys.every_shard())
    assert due == len(ids)
    for k in keys.every_shard():
        for member in r.zrange(k.due, 0, -1):
            assert keys.shard_of(member.decode()[2:]) == k.shard
    r.close()


def test_records_move_between_shard_counts_and_keep_working(settings: Settings, start: int, r: redis.Redis):
    with client_of(settings, 1) as ductape:
        ids = populate(ductape, start)
    prefix = settings.key_prefix
    assert r.exists(f"{prefix}:due")  # one shard: today's key names
    r.set(f"{prefix}:beat:fence", 7)  # tokens handed out so far
    r.hset(f"{prefix}:stats", "jobs_expired", 3)

    for old, new in [(1, 4), (4, 2), (2, 1), (1, 3)]:
        moved = reshard(r, Keys(prefix, old), Keys(prefix, new))
        assert moved.keys > 0 and moved.missed == 0
        check(settings, new, ids, start)
    keys = Keys(prefix, 3)
    assert not r.exists(f"{prefix}:due") and not r.exists(f"{prefix}:job:{ids['once-0']}")
    assert all(int(r.get(k.beat_fence) or 0) == 7 for k in keys.every_shard())  # tokens only increase
    assert sum(int(r.hget(k.stats, "jobs_expired") or 0) for k in keys.every_shard()) == 3

    # Beat over the new shards releases every job once.
    tuned = settings.replace(**{"shards": 3})
    store = Store(redis.Redis.from_url(settings.url), keys, Retention.of(tuned))
    app = create_app(tuned)
    engine = BeatEngine(store, tuned, MessageBuilder(app, tuned), "beat-a")
    report = engine.tick(start)
    assert report.shards == [0, 1, 2] and report.released == len(ids)
    queue = keys.broker_prefix + tuned.queue_for("dev")
    assert r.llen(queue) == len(ids)
    # what is left due: the schedules' next runs, in their shards
    assert {store.run(ops.beat.next_due_ms(k)) for k in keys.every_shard()} - {None} == {start + HOUR}
    assert sum(r.zcard(k.due) for k in keys.every_shard()) == 20
    engine.step_down()
    app.close()


def test_the_cli_refuses_while_a_beat_is_alive_and_moves_when_none_is(settings: Settings, start: int):
    with client_of(settings, 1) as ductape:
        ids = populate(ductape, start)
    keys = Keys(settings.key_prefix, 1)
    store = Store(redis.Redis.from_url(settings.url), keys, Retention.of(settings))
    app = create_app(settings)
    engine = BeatEngine(store, settings, MessageBuilder(app, settings), "beat-a")
    assert engine.tick(start - HOUR).leader
    env = {"REDIS_URL": settings.url, "DUCTAPE_KEY_PREFIX": settings.key_prefix, "DUCTAPE_SHARDS": "1"}
    refused = CliRunner().invoke(cli, ["reshard", "--to", "4"], env=env)
    assert refused.exit_code == 4 and "beat beat-a is alive" in refused.stderr
    engine.step_down()
    app.close()
    done = CliRunner().invoke(cli, ["reshard", "--to", "4", "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["to"] == 4
    check(settings, 4, ids, start)


def test_an_identity_entry_of_an_unrouted_job_is_reported(settings: Settings, start: int, r: redis.Redis):
    # A job made before ids were routed: its id does not start with its key's route.
    request = JobRequest.parse({**ECHO, "input": {}, "key": "legacy", "start_at": start})
    plan = plan_job(request, settings, Sessions({}), now_ms(), uuid.uuid4().hex)
    four = Keys(settings.key_prefix, 4)
    legacy = next(
        i
        for i in iter(lambda: uuid.uuid4().hex, "")
        if four.shard_of(i) != four.shard_of(route_of("legacy") + "0" * 24)
    )
    store = Store(r, Keys(settings.key_prefix, 1), Retention.of(settings))
    store.run(ops.create_jobs(store.keys, [dataclasses.replace(plan, job_id=legacy)], now_ms()))
    moved = reshard(r, Keys(settings.key_prefix, 1), four)
    assert moved.missed == 1
    assert r.get(f"{four.of_job(legacy).space}:key:legacy") == legacy.encode()  # with its job
    with client_of(settings, 4) as ductape:  # as the README says: a new request makes a new job
        again = ductape.job.schedule({**ECHO, "input": {}, "key": "legacy", "start_at": start})
        assert again.job_id != legacy and ductape.job.get(legacy).status == "scheduled"


def test_sealed_schedules_move_to_where_a_new_request_finds_them(
    settings: Settings, start: int, r: redis.Redis
):
    with client_of(settings, 1) as ductape:
        session = {"tag": "user-session", "token": ductape.sessions.start("user-session", {"email": "a@b.c"})}
        requests = [
            {**ECHO, "input": {"to": "$Session{email}", "n": n}, "start_at": start, "repeat": {"every": HOUR}}
            | {"session": session}
            for n in range(8)
        ]
        ids = [ductape.job.schedule(request).job_id for request in requests]
    moved = reshard(r, Keys(settings.key_prefix, 1), Keys(settings.key_prefix, 4))
    assert moved.missed == 0  # their route leaves the session digest out, and so does the count
    with client_of(settings, 4) as ductape:
        assert [ductape.job.schedule(request).job_id for request in requests] == ids


class DropsOnSecondZadd(redis.Redis):
    """A real client whose connection "drops" at the second ZADD (the index writes), once."""

    zadds = 0

    def zadd(self, *args: Any, **kwargs: Any) -> Any:
        self.zadds += 1
        if self.zadds == 2:
            raise redis.ConnectionError("dropped (injected)")
        return super().zadd(*args, **kwargs)


def test_a_move_interrupted_while_writing_the_indexes_loses_no_entry(
    settings: Settings, start: int, r: redis.Redis
):
    with client_of(settings, 1) as ductape:
        ids = populate(ductape, start)
    old, new = Keys(settings.key_prefix, 1), Keys(settings.key_prefix, 4)
    dropping = DropsOnSecondZadd.from_url(settings.url)
    with pytest.raises(redis.ConnectionError):
        reshard(dropping, old, new)
    dropping.close()
    reshard(r, old, new)  # run again, as the CLI's help says
    check(settings, 4, ids, start)
