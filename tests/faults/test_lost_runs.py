"""beat.lost at chosen instants over real Redis: lost messages go again, waiting or held ones do not."""

from __future__ import annotations

import json

import pytest
import redis

from beat.lost import LostRuns
from ductape_jobs import Ductape
from tests.faults.conftest import Report, now_ms

pytestmark = pytest.mark.faults


def test_lost_runs_sends_again_only_what_is_gone(
    ductape: Ductape, r: redis.Redis, prefix: str, report: Report
):
    lost = LostRuns(ductape.store, ductape.settings, ductape.messages)
    queue = f"{prefix}:broker:{prefix}.dev"
    runs = {}
    for name in ("held", "gone", "finished", "waiting", "parked"):
        handle = ductape.job.schedule(
            env="prd" if name == "parked" else "dev", product_tag="tests", event="echo", input={"name": name}
        )
        runs[name] = ductape.job.get(handle.job_id).last_run_id or ""
    start = now_ms()
    for i, run_id in enumerate(runs.values()):  # pushed in this order, 100 ms apart
        r.hset(f"{prefix}:run:{run_id}", "queued_ms", start - 500 + i * 100)

    # Out of the dev queue, oldest first: 'held' is taken by a worker and recorded as unacked (as
    # kombu does); 'gone' is popped by a worker that dies before recording it; 'finished' ran.
    unacked = r.rpop(queue)
    r.hset(f"{prefix}:broker:unacked", "tag-1", json.dumps([json.loads(unacked), "", f"{prefix}.dev"]))
    r.zadd(f"{prefix}:broker:unacked_index", {"tag-1": start / 1000})
    r.rpop(queue)
    r.rpop(queue)
    r.hset(f"{prefix}:run:{runs['finished']}", "status", "completed")
    assert r.llen(queue) == 1  # 'waiting' is still in it

    assert lost.sweep(start) == 0  # nothing has been still for long enough yet
    lost._next_ms = 0
    later = start + lost.after_ms + 1
    sent = lost.sweep(later)
    inflight = {m.decode(): int(s) for m, s in r.zrange(f"{prefix}:inflight", 0, -1, withscores=True)}
    in_queue = [json.loads(m)["headers"]["id"] for m in r.lrange(queue, 0, -1)]
    report("beat.lost at chosen instants", len(runs), 3, 0, max(sent - 1, 0), resent=sent)

    assert sent == 1 and in_queue == [runs["gone"], runs["waiting"]]  # sent again, to the back
    assert runs["finished"] not in inflight  # forgotten once finished
    assert {inflight[runs[n]] for n in ("held", "waiting", "parked", "gone")} == {
        later
    }  # looked at again later
    assert r.llen(f"{prefix}:broker:{prefix}.prd") == 1  # waiting in a queue nobody serves: left alone
    lost._next_ms = 0
    assert lost.sweep(later + 1) == 0  # they all just moved


def test_a_started_run_whose_heartbeat_stopped_is_sent_again_though_its_message_is_held(
    ductape: Ductape, r: redis.Redis, prefix: str, report: Report
):
    # Both runs were taken by a worker (held in kombu's unacked hash) and started; only one
    # worker still renews its lease: the other's whole worker is gone.
    lost = LostRuns(ductape.store, ductape.settings, ductape.messages)
    queue = f"{prefix}:broker:{prefix}.dev"
    runs = {}
    start = now_ms()
    for name in ("alive", "gone"):
        handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"name": name})
        runs[name] = ductape.job.get(handle.job_id).last_run_id or ""
        message = r.rpop(queue)
        r.hset(
            f"{prefix}:broker:unacked", f"tag-{name}", json.dumps([json.loads(message), "", f"{prefix}.dev"])
        )
        r.zadd(f"{prefix}:broker:unacked_index", {f"tag-{name}": start / 1000})
        started = ductape.store.begin_run(runs[name], handle.job_id, start, 10_000, f"host:1:{name}")
        assert started.verdict == "run"
    later = start + lost.after_ms + 1
    r.hset(f"{prefix}:run:{runs['alive']}", "lease_ms", later + 5_000)  # its heartbeat renewed it
    r.zadd(f"{prefix}:inflight", {runs["alive"]: start})  # (but it has not moved since, as seen)

    sent = lost.sweep(later)
    in_queue = [json.loads(m)["headers"]["id"] for m in r.lrange(queue, 0, -1)]
    report("beat.lost: a started run whose heartbeat stopped", 2, 1, 0, 0, resent=sent)
    assert sent == 1 and in_queue == [runs["gone"]]
    # The copy's delivery counts the lost attempt and runs the next (retries=0: dead-lettered).
    again = ductape.store.begin_run(runs["gone"], runs["gone"].rsplit(":", 1)[0], later, 10_000, "host:2:x")
    assert again.verdict == "done"
    assert r.hget(f"{prefix}:run:{runs['gone']}", "error") == b"worker lost"
    assert [d.run_id for d in ductape.job.failed()] == [runs["gone"]]
    # as a dead letter written by FINISH_RUN: its own retention, and the finished one-off retires
    assert 0 < r.ttl(f"{prefix}:run:{runs['gone']}") <= ductape.settings.dead_retention_s
    assert r.zscore(f"{prefix}:retired", runs["gone"].rsplit(":", 1)[0]) is not None


def test_a_message_held_far_past_the_visibility_timeout_is_stuck_and_its_run_sent_again(
    ductape: Ductape, r: redis.Redis, prefix: str, report: Report
):
    # kombu puts a held message back once it is older than the visibility timeout; a worker
    # SIGKILLed inside that restore leaves kombu's restore mutex held (300 s by default), and an
    # entry with no index entry is never put back at all. Beat must not wait on either forever.
    lost = LostRuns(ductape.store, ductape.settings, ductape.messages)
    queue = f"{prefix}:broker:{prefix}.dev"
    start = now_ms()
    runs = {}
    for name, taken_s in (("fresh", start / 1000), ("stuck", start / 1000 - 3 * lost.stuck_after_ms / 1000)):
        handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"name": name})
        runs[name] = ductape.job.get(handle.job_id).last_run_id or ""
        message = r.rpop(queue)
        r.hset(
            f"{prefix}:broker:unacked", f"tag-{name}", json.dumps([json.loads(message), "", f"{prefix}.dev"])
        )
        r.zadd(f"{prefix}:broker:unacked_index", {f"tag-{name}": taken_s})
    handle = ductape.job.schedule(env="dev", product_tag="tests", event="echo", input={"name": "unindexed"})
    runs["unindexed"] = ductape.job.get(handle.job_id).last_run_id or ""
    message = r.rpop(queue)
    r.hset(
        f"{prefix}:broker:unacked", "tag-unindexed", json.dumps([json.loads(message), "", f"{prefix}.dev"])
    )

    sent = lost.sweep(now_ms() + lost.after_ms + 1)
    in_queue = sorted(json.loads(m)["headers"]["id"] for m in r.lrange(queue, 0, -1))
    report("beat.lost: a message stuck in kombu's unacked hash", 3, 2, 0, 0, resent=sent)
    assert sent == 2 and in_queue == sorted([runs["stuck"], runs["unindexed"]])  # the fresh one is held


def test_kombus_restore_mutex_is_held_seconds_not_minutes(ductape: Ductape) -> None:
    # A worker killed inside kombu's restore of held messages leaves its mutex for this long; at
    # kombu's default (300 s) a dead worker's messages would wait five minutes to come back.
    options = ductape.celery.conf.broker_transport_options
    assert options["unacked_mutex_expire"] <= 10 < 300
