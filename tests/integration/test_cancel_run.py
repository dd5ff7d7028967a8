"""Cancelling runs (issue 14 item 4) in the scripts: CANCEL_RUN, CHANGE_STATE's cancel, and how
RENEW_RUN, FINISH_RUN, LOSE_RUN and BEGIN_RUN end a cancelled run. Real Redis; the worker's store
steps are driven at chosen instants, as in test_lifecycle."""

from __future__ import annotations

import pytest

from ductape_jobs import Ductape, JobStateError, ops
from ductape_jobs.errors import JobNotFoundError
from tests.integration import test_lifecycle as life
from tests.integration.test_lifecycle import MIN, SEC, T0, World
from tests.integration.test_review_interactions import _job_field, _take_message

# test_lifecycle's fixtures, used here by name
client = life.client
lifecycle_settings = life.lifecycle_settings
app = life.app
world = life.world

LEASE = 60 * SEC
OWNER = "host:4242:aaaa"


def _cancel_run(world: World, run_id: str, at: int, terminate: bool = False) -> tuple[str, str | None]:
    return world.op(ops.cancel_run, run_id, at, terminate=terminate, job_retention_s=life.RETENTION_S)


def _cancel_job(
    world: World, job_id: str, at: int, terminate: bool = False
) -> tuple[str, str | None, list[str]]:
    return world.op(ops.cancel_job, job_id, at, terminate=terminate, job_retention_s=life.RETENTION_S)


def _run_field(world: World, run_id: str, field: str) -> str | None:
    got = world.store.redis.hget(world.keys.run(run_id), field)
    return got.decode() if got is not None else None


def _untracked(world: World, run_id: str) -> bool:
    """Nothing would send the run again: out of the in-flight and due indexes, no dead letter."""
    r, k = world.store.redis, world.keys
    return (
        r.zscore(k.inflight, run_id) is None
        and r.zscore(k.due, f"r:{run_id}") is None
        and r.zscore(k.dead, run_id) is None
    )


def test_a_queued_run_cancelled_never_starts_and_its_one_off_ends_cancelled(world: World):
    job_id = world.schedule(retries=3)
    run_id = _take_message(world)  # held by a worker, not started

    assert _cancel_run(world, run_id, T0 + SEC) == ("ok", "queued")
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)
    assert _job_field(world, job_id, "status") == "cancelled"
    assert world.store.begin_run(run_id, job_id, T0 + 2 * SEC, LEASE, OWNER).verdict == "done"
    assert _run_field(world, run_id, "attempts") == "0"  # never started
    # A finished run is refused with its status; an unknown one is missing.
    assert _cancel_run(world, run_id, T0 + 3 * SEC) == ("refused", "cancelled")
    assert _cancel_run(world, f"{job_id}:1", T0 + 3 * SEC) == ("missing", None)


def test_a_running_run_is_flagged_its_heartbeat_says_so_and_it_ends_cancelled_not_retried(world: World):
    job_id = world.schedule("boom", retries=3, repeat={"every": MIN})
    run_id = _take_message(world)
    assert world.store.begin_run(run_id, job_id, T0, LEASE, OWNER).verdict == "run"
    assert world.store.renew_run(run_id, OWNER, T0 + SEC, LEASE) == "held"

    assert _cancel_run(world, run_id, T0 + 2 * SEC) == ("ok", "running")
    assert _run_field(world, run_id, "status") == "running"  # its handler decides when to stop
    assert world.store.renew_run(run_id, OWNER, T0 + 3 * SEC, LEASE) == "cancelled"
    assert world.store.renew_run(run_id, "host:1:other", T0 + 3 * SEC, LEASE) == "lost"

    # The handler raised before its heartbeat told it: the retry it asks for is not made.
    world.store.finish_run(run_id, job_id, 1, T0 + 4 * SEC, "retry", error="RuntimeError: boom")
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)
    assert _job_field(world, job_id, "failed_runs") is None  # not a dead letter
    assert _job_field(world, job_id, "status") == "scheduled"  # the schedule goes on
    assert world.store.renew_run(run_id, OWNER, T0 + 5 * SEC, LEASE) == "cancelled"


def test_a_cancelled_run_that_completes_anyway_is_completed(world: World):
    job_id = world.schedule()
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, LEASE, OWNER)
    _cancel_run(world, run_id, T0 + SEC)
    world.store.finish_run(run_id, job_id, 1, T0 + 2 * SEC, "completed", result_json='{"done": 1}')
    assert _run_field(world, run_id, "status") == "completed"  # its work was done: recorded as such
    assert _job_field(world, job_id, "status") == "completed"


def test_a_terminated_run_ends_at_once_and_nothing_of_its_attempt_moves_it_again(world: World):
    job_id = world.schedule(retries=3)
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, LEASE, OWNER)

    assert _cancel_run(world, run_id, T0 + SEC, terminate=True) == ("ok", "running")
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)
    assert _job_field(world, job_id, "status") == "cancelled"
    # Its process, if the revoke did not reach it, is told by its heartbeat.
    assert world.store.renew_run(run_id, OWNER, T0 + 2 * SEC, LEASE) == "cancelled"
    # Its pool process killed: no attempt is counted, nothing is retried.
    assert (
        world.store.run(
            ops.worker.lose_run(
                world.store.keys, world.store.retention, run_id, "host:4242:", "worker lost", T0 + 3 * SEC
            )
        )
        == "moved"
    )
    assert not world.store.finish_run(run_id, job_id, 1, T0 + 4 * SEC, "failed", error="killed")
    assert world.store.begin_run(run_id, job_id, T0 + 5 * SEC, LEASE, "host:2:bbbb").verdict == "done"
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)


def test_a_retry_waiting_in_the_due_index_cancelled_is_never_sent(world: World):
    job_id = world.schedule("boom", retries=3, repeat={"every": 10 * MIN})
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, LEASE, OWNER)
    world.store.finish_run(run_id, job_id, 1, T0 + SEC, "retry_due", error="boom", due_ms=T0 + 2 * MIN)
    assert world.store.redis.zscore(world.keys.due, f"r:{run_id}") is not None

    assert _cancel_run(world, run_id, T0 + 2 * SEC) == ("ok", "retrying")
    assert _untracked(world, run_id)
    assert run_id not in world.at(T0 + 3 * MIN).work()  # beat sends nothing for it
    assert _run_field(world, run_id, "status") == "cancelled"
    assert _job_field(world, job_id, "status") == "scheduled"


def test_a_lost_attempt_of_a_cancelled_run_ends_it_cancelled_not_retried(world: World):
    job_id = world.schedule(retries=3)
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, LEASE, OWNER)
    _cancel_run(world, run_id, T0 + SEC)
    assert (
        world.store.run(
            ops.worker.lose_run(
                world.store.keys, world.store.retention, run_id, "host:4242:", "worker lost", T0 + 2 * SEC
            )
        )
        == "cancelled"
    )
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)
    assert _job_field(world, job_id, "status") == "cancelled"


def test_a_lapsed_lease_of_a_cancelled_run_ends_it_cancelled_not_dead_lettered(world: World):
    job_id = world.schedule(retries=0)  # its last attempt: a lost one would be a dead letter
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, 10 * SEC, OWNER)
    _cancel_run(world, run_id, T0 + SEC)
    assert world.store.begin_run(run_id, job_id, T0 + 11 * SEC, 10 * SEC, "host:2:bbbb").verdict == "done"
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)
    assert world.op(ops.dead_run_ids, 10) == []


def test_cancelling_a_job_cancels_its_running_runs_and_names_them(world: World):
    job_id = world.schedule(repeat={"every": MIN})
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, LEASE, OWNER)

    assert _cancel_job(world, job_id, T0 + SEC) == ("ok", None, [run_id])
    assert _run_field(world, run_id, "cancel") == "1" and _run_field(world, run_id, "status") == "running"
    assert world.store.renew_run(run_id, OWNER, T0 + 2 * SEC, LEASE) == "cancelled"
    assert _cancel_job(world, job_id, T0 + 3 * SEC) == ("refused", "cancelled", [])


def test_cancelling_a_job_with_terminate_ends_its_running_runs_at_once(world: World):
    job_id = world.schedule(repeat={"every": MIN})
    run_id = _take_message(world)
    world.store.begin_run(run_id, job_id, T0, LEASE, OWNER)
    assert _cancel_job(world, job_id, T0 + SEC, terminate=True) == ("ok", None, [run_id])
    assert _run_field(world, run_id, "status") == "cancelled" and _untracked(world, run_id)
    assert _job_field(world, job_id, "status") == "cancelled"


def test_the_client_refuses_a_finished_run_and_names_an_unknown_one(world: World, ductape: Ductape):
    job_id = world.schedule()
    [run_id] = world.work()
    assert _run_field(world, run_id, "status") == "completed"
    with pytest.raises(JobStateError, match=r"already finished \(completed\)"):
        ductape.job.cancel_run(run_id)
    with pytest.raises(JobNotFoundError, match="exists once it is released"):
        ductape.job.cancel_run(f"{job_id}:{T0 + MIN}")
