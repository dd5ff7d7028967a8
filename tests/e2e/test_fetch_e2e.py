"""The worker's transport (design §8.4) on a real worker: one FETCH takes the prefetch's worth of
messages and records them in kombu's unacked hash together; acks leave nothing behind; messages
a killed worker held that way come back and run."""

from __future__ import annotations

import pytest
import redis

from ductape_jobs import Ductape, JobStatus
from ductape_jobs.keys import Keys
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

FAST_REDELIVERY = {"DUCTAPE_VISIBILITY_TIMEOUT_S": "3", "DUCTAPE_RUN_LEASE_S": "2"}


def slow_jobs(ductape: Ductape, n: int, seconds: float) -> list[str]:
    """n one-off jobs whose handler sleeps, queued at once."""
    batch = [
        {
            "env": "dev",
            "product_tag": "tests",
            "event": "slow",
            "start_at": 0,
            "retries": 3,
            "input": {"seconds": seconds},
        }
        for _ in range(n)
    ]
    return [h.job_id for h in ductape.job.schedule_many(batch)]


def all_completed(ductape: Ductape, job_ids: list[str]) -> bool:
    return all(ductape.job.get(job_id).status == JobStatus.COMPLETED for job_id in job_ids)


def test_a_worker_takes_several_messages_per_fetch_and_leaves_no_acknowledged_one_behind(
    procs: Processes, ductape: Ductape, r: redis.Redis, prefix: str
):
    keys = Keys(prefix)
    job_ids = slow_jobs(ductape, 6, 0.5)  # queued before the worker: its first FETCH finds them
    worker = procs.worker(concurrency=2)  # prefetch 2 x 2: holds 4
    # Sized once ready, from what Celery made of its command line: 2 messages beyond the pool.
    batches = "taking messages in batches of 2 (prefetch 4, pool 2)"
    wait_for(lambda: batches in procs.log(worker), 30, "the worker to size its batches")
    held = wait_for(lambda: r.zrange(keys.broker_unacked_index, 0, -1, withscores=True), 30, "held messages")
    # kombu's BRPOP then HSET records each message at its own instant; one FETCH records its
    # batch at one.
    assert len(held) > len({score for _, score in held})
    wait_for(lambda: all_completed(ductape, job_ids), 60, "every job completed")
    wait_for(
        lambda: r.hlen(keys.broker_unacked) == 0 and r.zcard(keys.broker_unacked_index) == 0,
        10,
        "the acks of the last runs to reach Redis",
    )


def test_messages_a_killed_worker_held_from_a_fetch_come_back_and_run(
    procs: Processes, ductape: Ductape, r: redis.Redis, prefix: str
):
    keys = Keys(prefix)
    job_ids = slow_jobs(ductape, 6, 2)
    worker = procs.worker(concurrency=2, **FAST_REDELIVERY)
    wait_for(lambda: r.hlen(keys.broker_unacked) == 4, 30, "4 messages held (2 running, 2 prefetched)")
    procs.kill(worker)  # SIGKILL: the worker puts nothing back itself
    assert r.hlen(keys.broker_unacked) == 4
    procs.worker(concurrency=2, **FAST_REDELIVERY)
    # kombu's visibility-timeout restore reads what FETCH recorded and puts the messages back
    wait_for(lambda: all_completed(ductape, job_ids), 90, "every job completed")
    wait_for(
        lambda: r.hlen(keys.broker_unacked) == 0 and r.zcard(keys.broker_unacked_index) == 0,
        10,
        "the acks of the last runs to reach Redis",
    )
