"""A plain Celery project's ``beat_schedule`` run by our beat: real ``celery -A tests.beatapp
beat -S beat.RedisScheduler`` and ``celery -A tests.beatapp worker`` processes over real Redis.

The tasks record each call (tests.beatapp), so "once per slot" means once on the app's worker.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus, Settings
from ductape_jobs.imported import PRODUCT_TAG, job_id_for
from tests.beatapp import calls_key
from tests.e2e.test_cli import run_cli
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.beatapp"
BEAT = ["beat", "--loglevel", "INFO", "-S", "beat.RedisScheduler"]


def calls(r: redis.Redis, prefix: str, task: str) -> list[dict]:
    """Every recorded call of ``task``."""
    return [json.loads(x) for x in r.lrange(calls_key(task, prefix), 0, -1)]


def slots(seen: list[dict], job_id: str) -> list[int]:
    """The nominal times of the calls that came from this job's runs, in order."""
    return sorted(int(c["id"].rsplit(":", 1)[1]) for c in seen if c["id"].startswith(job_id + ":"))


def test_beat_schedule_entries_run_as_their_own_tasks_once_per_slot(
    procs: Processes, r: redis.Redis, settings: Settings, prefix: str, redis_url: str
) -> None:
    tick, greet, cron = (job_id_for(APP, name) for name in ("add every second", "greet", "office hours"))
    procs.start(
        ["worker", "-Q", "celery,slow", "-c", "2", "--without-gossip", "--without-mingle"], "app-worker", APP
    )
    # Two beats started together: one leads and imports; neither doubles an entry or a slot.
    beats = [procs.start(BEAT, "beat", APP, DUCTAPE_BEAT_LOCK_TTL_MS="1500") for _ in range(2)]

    def enough() -> bool:
        return len(slots(calls(r, prefix, "add"), tick)) >= 4 and len(calls(r, prefix, "greet")) >= 2

    wait_for(enough, 60, "the imported entries to run on the app's worker")
    ductape = Ductape(settings=settings)
    jobs = {j.job_id: j for j in ductape.job.list(product_tag=PRODUCT_TAG)}
    assert set(jobs) == {tick, greet, cron}
    # Their own tasks, with the entry's args, kwargs and queue option; every slot once, none missed.
    added = [c for c in calls(r, prefix, "add") if c["id"].startswith(tick + ":")]
    assert {tuple(c["args"]) for c in added} == {(2, 3)}
    assert all(c["queue"] == "celery" for c in added)
    greeted = calls(r, prefix, "greet")
    assert {json.dumps(c["kwargs"]) for c in greeted} == {'{"name": "ada"}'}
    assert {c["queue"] for c in greeted} == {"slow"}
    for job_id, every_ms in ((tick, 1_000), (greet, 2_000)):
        seen = slots(calls(r, prefix, "add" if job_id == tick else "greet"), job_id)
        assert seen == list(range(seen[0], seen[0] + every_ms * len(seen), every_ms)), seen
    # Our record of them: released runs 'sent', the crontab a cron in the app's timezone.
    assert {run.status for run in ductape.job.runs(tick, 100)} == {RunStatus.SENT}
    spec = jobs[cron].spec
    assert spec.rule is not None and spec.rule["cron"] == "0,15,30,45 9,10,11,12,13,14,15,16,17 * * 1,2,3,4,5"
    assert spec.celery is not None and spec.celery.entry == "office hours"
    upcoming = ductape.job.upcoming(cron, 3)
    assert [(t.weekday() < 5, 9 <= t.hour <= 17, t.minute % 15) for t in upcoming] == [(True, True, 0)] * 3
    listed = run_cli(redis_url, prefix, f"list --product-tag {PRODUCT_TAG}")  # as the README shows
    assert listed.returncode == 0 and all(j in listed.stdout for j in (tick, greet, cron)), listed.stderr

    # Restart with "greet" dropped from the config: its schedule is cancelled, the others go on.
    for beat in beats:
        procs.signal(beat, 15)
    procs.await_exit(beats)
    before = len(slots(calls(r, prefix, "add"), tick))
    restarted = procs.start(BEAT, "beat", APP, BEATAPP_DROP="greet")
    wait_for(lambda: ductape.job.get(greet).status == JobStatus.CANCELLED, 30, "greet to be removed")
    wait_for(lambda: len(slots(calls(r, prefix, "add"), tick)) >= before + 2, 30, "the tick to go on")
    assert "0 created, 0 updated, 2 unchanged, 1 removed" in procs.log(restarted)
    ids = Counter(c["id"] for task in ("add", "greet") for c in calls(r, prefix, task))
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
    seen = slots(calls(r, prefix, "add"), tick)
    assert len(set(seen)) == len(seen)
