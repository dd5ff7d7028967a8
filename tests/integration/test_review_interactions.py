"""Review findings: interactions between leases, lost attempts, cancel, retention and redrive.
Real Redis; the worker's store steps are driven at chosen instants, as in test_lifecycle."""

from __future__ import annotations

import base64
import json

from ductape_jobs import Ductape, ops
from tests.integration import test_lifecycle as life
from tests.integration.test_lifecycle import DEAD_RETENTION_S, MIN, RETENTION_S, SEC, T0, World

# test_lifecycle's fixtures, used here by name
client = life.client
lifecycle_settings = life.lifecycle_settings
app = life.app
world = life.world


def _take_message(world: World) -> str:
    """Pop the one waiting message without running it (the worker has reserved it)."""
    for queue in world.queues:
        raw = world.store.redis.rpop(queue)
        if raw is not None:
            [run_id], _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
            return str(run_id)
    raise AssertionError("no message waiting")


def _job_field(world: World, job_id: str, field: str) -> str | None:
    got = world.store.redis.hget(world.keys.job(job_id), field)
    return got.decode() if got is not None else None


def test_a_pool_process_lost_after_a_cancel_does_not_resurrect_the_one_off(world: World):
    job_id = world.schedule(retries=2)  # a one-off due now: its message is pushed at once
    run_id = _take_message(world)
    started = world.store.begin_run(run_id, job_id, T0, 60 * SEC, "host:4242:aaaa")
    assert started.verdict == "run"
    assert world.store.change_state("cancel", job_id, T0 + SEC) == ("ok", None)

    # The pool process running it is killed (hard time limit, OOM): the worker's main process
    # reports it, and Celery puts the delivery back. The cancel reached the running run too
    # (issue 14): it ends cancelled, with no further attempt.
    assert (
        world.store.run(
            ops.worker.lose_run(
                world.store.keys, world.store.retention, run_id, "host:4242:", "worker lost", T0 + 2 * SEC
            )
        )
        == "cancelled"
    )

    assert _job_field(world, job_id, "status") == "cancelled"  # the cancel is never undone
    again = world.store.begin_run(run_id, job_id, T0 + 3 * SEC, 60 * SEC, "host:4243:bbbb")
    assert again.verdict != "run"  # and the cancelled one-off's run is not executed again


def test_a_run_dead_lettered_for_its_lapsed_lease_is_not_dead_lettered_again_by_its_holder(world: World):
    job_id = world.schedule("boom", retries=0)  # one attempt
    run_id = _take_message(world)
    first = world.store.begin_run(run_id, job_id, T0, 10 * SEC, "host:1:aaaa")
    assert first.verdict == "run" and first.attempt == 1
    # Its heartbeat could not renew the lease (a Redis blip, a stalled process); the lost-run
    # sweep resends it and that delivery finds the lease run out: the last attempt is lost.
    lapsed = world.store.begin_run(run_id, job_id, T0 + 11 * SEC, 10 * SEC, "host:2:bbbb")
    assert lapsed.verdict == "done"
    assert world.op(ops.dead_run_ids, 10) == [run_id]
    assert _job_field(world, job_id, "failed_runs") == "1"

    # The first delivery was alive after all and now records its own failure of attempt 1.
    world.store.finish_run(run_id, job_id, 1, T0 + 12 * SEC, "failed", error="RuntimeError: boom")
    assert _job_field(world, job_id, "failed_runs") == "1"  # one run, dead-lettered once


def test_a_run_dead_lettered_for_its_lapsed_lease_is_not_completed_while_still_a_dead_letter(world: World):
    job_id = world.schedule(retries=0)
    run_id = _take_message(world)
    assert world.store.begin_run(run_id, job_id, T0, 10 * SEC, "host:1:aaaa").verdict == "run"
    assert world.store.begin_run(run_id, job_id, T0 + 11 * SEC, 10 * SEC, "host:2:bbbb").verdict == "done"

    world.store.finish_run(run_id, job_id, 1, T0 + 12 * SEC, "completed", result_json='{"ok": 1}')
    run_status = world.store.redis.hget(world.keys.run(run_id), "status")
    in_dead = world.store.redis.zscore(world.keys.dead, run_id) is not None
    # Either the late outcome is refused (still a dead letter) or it is accepted and the run
    # leaves the dead letters; never a completed run listed as failed.
    assert (run_status, in_dead) in {(b"failed", True), (b"completed", False)}, (run_status, in_dead)
    assert world.op(ops.get_job, job_id).status.value in ("failed", "completed")  # type: ignore[union-attr]
    assert (_job_field(world, job_id, "status") == "completed") == (run_status == b"completed")


def _add_run(world: World, action: str, job_id: str, run_id: str, now_ms: int) -> tuple[str, str | None]:
    spec = world.op(ops.get_job, job_id).spec  # type: ignore[union-attr]
    message = world.engine.messages.build(run_id, spec, now_ms, now_ms)
    return world.op(ops.add_run, action, job_id, run_id, now_ms, message, runs_kept=100)


def test_a_run_triggered_just_before_its_jobs_retention_ends_is_not_swept_before_it_runs(world: World):
    job_id = world.schedule()
    world.at(T0)  # the one-off runs and completes: retired until T0 + RETENTION_S
    assert world.op(ops.get_job, job_id).status.value == "completed"  # type: ignore[union-attr]

    late = T0 + RETENTION_S * SEC - SEC
    run_id = f"{job_id}:{late}m"
    assert _add_run(world, "trigger", job_id, run_id, late) == ("ok", None)  # accepted: a run id

    world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, late + 2 * SEC, 1_000, 0)
    )  # beat's sweep, before a worker takes the message
    assert world.store.redis.exists(world.keys.run(run_id)) == 1, "the triggered run was deleted"
    world.now = late + 3 * SEC
    assert world.work() == [run_id]
    [record] = world.op(ops.get_runs, [run_id])
    assert record.status.value == "completed"


def test_redriving_a_cancelled_one_offs_dead_letter_does_not_undo_the_cancel(world: World):
    job_id = world.schedule("boom", retries=0)
    run_id = _take_message(world)
    assert world.store.begin_run(run_id, job_id, T0, 60 * SEC, "host:1:aaaa").verdict == "run"
    assert world.store.change_state("cancel", job_id, T0 + SEC) == ("ok", None)
    world.store.finish_run(run_id, job_id, 1, T0 + 2 * SEC, "failed", error="RuntimeError: boom")
    assert _job_field(world, job_id, "status") == "cancelled"  # FINISH_RUN leaves the cancel alone

    verdict = _add_run(world, "redrive", job_id, run_id, T0 + MIN)
    # A cancel means no further runs (trigger is refused for it): redrive is refused too, or at
    # least leaves the job cancelled and its redriven run is skipped.
    if verdict[0] == "ok":
        assert _job_field(world, job_id, "status") == "cancelled"
        assert world.store.begin_run(run_id, job_id, T0 + MIN, 60 * SEC, "host:2:bbbb").verdict != "run"
    else:
        assert verdict == ("refused", "cancelled")


def test_a_lost_last_attempt_of_a_cancelled_one_off_leaves_it_cancelled(world: World):
    job_id = world.schedule(retries=0)
    run_id = _take_message(world)
    assert world.store.begin_run(run_id, job_id, T0, 10 * SEC, "host:1:aaaa").verdict == "run"
    assert world.store.change_state("cancel", job_id, T0 + SEC) == ("ok", None)
    # Its worker is gone; another delivery finds the lease run out (BEGIN_RUN's lost attempt).
    assert world.store.begin_run(run_id, job_id, T0 + 11 * SEC, 10 * SEC, "host:2:bbbb").verdict == "done"
    assert _job_field(world, job_id, "status") == "cancelled"


def test_a_redriven_dead_letter_trimmed_from_its_schedule_does_not_stay_forever(world: World):
    job_id = world.schedule("boom", retries=0, repeat={"every": MIN})
    for minute in range(5):  # five runs, each dead-lettered; runs_kept = 3 trims the oldest two
        world.at(T0 + minute * MIN)
    first = f"{job_id}:{T0}"
    assert world.store.redis.zscore(world.keys.job_runs(job_id), first) is None  # trimmed
    assert world.store.redis.zscore(world.keys.dead, first) is not None  # still a dead letter

    now = T0 + 5 * MIN + SEC
    assert _add_run(world, "redrive", job_id, first, now) == ("ok", None)
    assert world.store.change_state("cancel", job_id, now + SEC) == ("ok", None)
    world.now = now + 2 * SEC
    world.work()  # the redriven run is skipped: its job was cancelled

    end = now + (RETENTION_S + DEAD_RETENTION_S) * SEC + 2 * 3_600 * SEC
    world.store.run(ops.beat.sweep(world.store.keys, world.store.retention, end, 1_000, 0))
    world.store.run(ops.beat.sweep(world.store.keys, world.store.retention, end, 1_000, 0))
    key = world.keys.run(first)
    assert world.store.redis.exists(key) == 0 or world.store.redis.ttl(key) > 0, "kept forever, no TTL"


def test_a_schedule_whose_record_vanished_can_be_scheduled_again(world: World, ductape: Ductape):
    request = {
        "env": "dev",
        "product_tag": "life",
        "event": "ok",
        "input": {"n": 7},
        "repeat": {"every": MIN},
    }
    first = ductape.job.schedule(**request)
    assert first.created
    world.store.redis.delete(world.keys.job(first.job_id))  # evicted, or deleted by hand
    swept = world.store.run(
        ops.beat.sweep(world.store.keys, world.store.retention, world.now, 1_000, 0)
    )  # the audit finds it and drops its entries
    assert swept.jobs_vanished == 1

    again = ductape.job.schedule(**request)
    # The fingerprint must not keep naming a job that no longer exists.
    assert again.created and again.job_id != first.job_id


def test_a_late_duplicate_of_a_completed_run_trimmed_from_its_schedule_is_no_dead_letter(world: World):
    job_id = world.schedule(repeat={"every": MIN})
    for minute in range(5):  # five runs complete; runs_kept = 3 deletes the two oldest records
        world.at(T0 + minute * MIN)
    first = f"{job_id}:{T0}"
    assert world.store.redis.exists(world.keys.run(first)) == 0  # trimmed, as designed

    # A spare copy of its message arrives late (kombu restores an unacked message after the
    # visibility timeout; a lost-run resend that turned out spare): the worker skips it ...
    assert world.runner.execute(first).kind == "skipped"
    # ... and a run that completed is not turned into a dead letter nor counted as vanished.
    assert world.op(ops.dead_run_ids, 10) == []
    assert world.counters().get("runs_vanished", 0) == 0


def test_a_parked_retry_of_a_cancelled_job_beat_cannot_read_leaves_the_job_cancelled(world: World):
    job_id = world.schedule("boom", retries=3)
    run_id = _take_message(world)
    assert world.store.begin_run(run_id, job_id, T0, 60 * SEC, "host:1:aaaa").verdict == "run"
    due = T0 + 2 * MIN  # a long backoff: the retry waits in the due index for beat
    world.store.finish_run(run_id, job_id, 1, T0 + SEC, "retry_due", error="RuntimeError: boom", due_ms=due)
    assert world.store.change_state("cancel", job_id, T0 + 2 * SEC) == ("ok", None)
    world.store.redis.hset(world.keys.job(job_id), "brief", "{not json")  # beat cannot read it

    world.at(due + SEC)
    assert _job_field(world, job_id, "status") == "cancelled"  # a cancel is final
    assert world.store.redis.hget(world.keys.run(run_id), "status") == b"skipped"


def test_setting_aside_a_run_whose_job_left_meanwhile_leaves_no_job_record_behind(world: World):
    # The job left (its retention passed, or someone deleted it) between beat's read and the
    # set-aside: the run is still dead-lettered, and no stub job hash without a TTL is made.
    job_id = world.schedule()
    world.work()
    run_id = f"{job_id}:{T0}"
    world.store.redis.zadd(world.keys.inflight, {run_id: T0})
    world.store.redis.hset(world.keys.run(run_id), "status", "queued")
    [read] = world.store.run(ops.beat.unmoved_runs(world.store.keys, T0 + MIN, 10))
    world.store.redis.delete(world.keys.job(job_id))
    assert world.store.run(
        ops.beat.set_aside_run(world.store.keys, world.store.retention, read, job_id, "unreadable", T0 + SEC)
    )
    assert not world.store.redis.exists(world.keys.job(job_id))
    assert world.store.redis.zscore(world.keys.dead, run_id) is not None
    assert world.store.redis.ttl(world.keys.run(run_id)) > 0


def test_the_lost_sweep_drops_or_sets_aside_only_runs_that_have_not_moved_since_it_read_them(world: World):
    # Beat reads unmoved runs, then writes: a run redriven or resent in between (its in-flight
    # score moved) must stay watched, and must not be dead-lettered for what beat read earlier.
    done, unreadable = world.schedule(), world.schedule()
    world.work()  # `done` completes; `unreadable` completes too, and is then made to look running
    done_run, bad_run = f"{done}:{T0}", f"{unreadable}:{T0}"
    world.store.redis.zadd(world.keys.inflight, {done_run: T0, bad_run: T0})
    world.store.redis.hset(world.keys.run(bad_run), "status", "queued")
    read = {run.run_id: run for run in world.store.run(ops.beat.unmoved_runs(world.store.keys, T0 + MIN, 10))}
    assert set(read) == {done_run, bad_run}

    world.store.redis.zadd(world.keys.inflight, {done_run: T0 + SEC, bad_run: T0 + SEC})  # both moved
    assert world.store.run(ops.beat.forget_runs(world.store.keys, [read[done_run]])) == 0
    assert not world.store.run(
        ops.beat.set_aside_run(
            world.store.keys, world.store.retention, read[bad_run], unreadable, "unreadable", T0 + 2 * SEC
        )
    )
    assert world.store.redis.zscore(world.keys.inflight, done_run) == T0 + SEC
    assert world.store.redis.zscore(world.keys.inflight, bad_run) == T0 + SEC
    assert _job_field(world, unreadable, "status") == "completed"

    # Unmoved, both go as before.
    read = {run.run_id: run for run in world.store.run(ops.beat.unmoved_runs(world.store.keys, T0 + MIN, 10))}
    assert world.store.run(ops.beat.forget_runs(world.store.keys, [read[done_run]])) == 1
    assert world.store.run(
        ops.beat.set_aside_run(
            world.store.keys, world.store.retention, read[bad_run], unreadable, "unreadable", T0 + 2 * SEC
        )
    )
    assert world.store.redis.zcard(world.keys.inflight) == 0
    assert world.store.redis.zscore(world.keys.dead, bad_run) is not None
