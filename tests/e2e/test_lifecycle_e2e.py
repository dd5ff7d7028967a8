"""Finished jobs leave Redis after their retention on real worker and beat processes."""

from __future__ import annotations

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, Settings
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

RETENTION = {"DUCTAPE_JOB_RETENTION_S": "1", "DUCTAPE_RUN_RETENTION_S": "1", "DUCTAPE_DEAD_RETENTION_S": "2"}
# What a deployment keeps whatever its jobs: who serves what, the beats alive, beat's lock, the
# counters, and kombu's queue bindings.
STANDING = (":workers", ":events", ":beats", ":beat:lock", ":beat:fence", ":stats")


def records(r: redis.Redis, prefix: str) -> set[str]:
    keys = {k.decode() for k in r.scan_iter(match=f"{prefix}:*", count=1_000)}
    return {k for k in keys if not k.endswith(STANDING) and ":test:calls:" not in k and ":_kombu." not in k}


def test_finished_jobs_runs_and_dead_letters_leave_after_their_retention(
    procs: Processes, settings: Settings, r: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)
    procs.worker(**RETENTION)
    procs.beat(**RETENTION)
    short = settings.replace(**{"job_retention_s": 1, "run_retention_s": 1, "dead_retention_s": 2})
    with Ductape(settings=short) as ductape:
        base = {"env": "dev", "product_tag": "tests"}
        one_off = ductape.job.schedule(**base, event="echo", input={"n": 1})
        limited = ductape.job.schedule(**base, event="echo", repeat={"every": 1_000, "limit": 2})
        failing = ductape.job.schedule(**base, event="flaky", retries=0)
        live = ductape.job.schedule(**base, event="echo", repeat={"every": 1_000}, input={"n": 2}).job_id
        wait_for(lambda: ductape.job.failed(), 60, "the failing job to be dead-lettered")
        wait_for(lambda: ductape.job.get(live).runs_done >= 1, 60, "the live schedule to run")
        ductape.job.cancel(live)
        ids = {one_off.job_id, limited.job_id, failing.job_id, live}
        wait_for(lambda: not ids & {j.job_id for j in ductape.job.list()}, 60, "every finished job to leave")
        wait_for(lambda: not records(r, prefix), 60, "every record and index entry to leave")
        stats = {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}:stats").items()}
        assert stats["jobs_expired"] == 4 and stats["dead_dropped"] == 1
        assert not any(k.endswith("vanished") for k in stats), stats
        assert ductape.job.failed() == [] and ductape.job.list(status=JobStatus.COMPLETED) == []
