"""Beat's and the worker's flows (ductape_jobs/ops/beat.py, ops/worker.py) driven with scripted
Redis replies: what each sends, and what it makes of each reply. The same flows over real Redis
are tested in tests/integration (test_beat_engine, test_review_interactions, test_lifecycle,
test_cancel_run) and tests/faults (test_lost_runs)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import redis

from ductape_jobs import jobfields, ops
from ductape_jobs.brief import JobBrief
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRequest
from ductape_jobs.ops.beat import CLAIM_CHUNK, HSCAN_COUNT
from ductape_jobs.planning import plan_job
from ductape_jobs.records import (
    Claim,
    Dispatch,
    DueEntry,
    InFlight,
    Lease,
    Lost,
    Message,
    Retention,
    Swept,
    Unreadable,
    Verdict,
)
from ductape_jobs.rows import ClaimDueHead, ClaimDueRow
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from tests.scripted import DOWN, Driven, call, drive, script

K = Keys("unit")
R = Retention(job_s=100, dead_s=200, dead_max=300)
TTLS = [R.job_s, R.dead_s]
T0 = 1_893_456_000_000
SPEC = plan_job(
    JobRequest.parse({"env": "dev", "product_tag": "billing", "event": "pay", "input": {"order": 1}}),
    Settings(key_prefix="unit"),
    Sessions({}),
    T0,
    "job-1",
).spec
PACKED = jobfields.pack_spec(SPEC)
# The brief fields as READ_DUE hands them back (jobfields.BRIEF, packed)
BRIEF = jobfields.SEP.join(
    x for k, v in jobfields.unpack(PACKED).items() if k in jobfields.BRIEF for x in (k, v)
)
QUEUE = "unit:q:dev"


def entry(n: int) -> DueEntry:
    return DueEntry(f"j:job-{n}", T0, f"job-{n}", BRIEF, 0, T0, version=2)


def sent_claim(n: int) -> Claim:
    return Claim(entry(n), f"job-{n}:{T0}", T0, T0 + 60_000, Message(QUEUE, f"message {n}"))


def claim_rows(call_args: list[Any]) -> list[ClaimDueRow]:
    rows = call_args[len(ClaimDueHead._fields) :]
    width = len(ClaimDueRow._fields)
    return [ClaimDueRow(*rows[at : at + width]) for at in range(0, len(rows), width)]


CLAIM_KEYS = [K.beat_lock, K.due, K.inflight, K.dead, K.set_aside]


# -- claim ----------------------------------------------------------------------------------------


def test_claim_streams_calls_of_claim_chunk_rows_and_keeps_the_claims_each_call_names():
    claims = [sent_claim(n) for n in range(CLAIM_CHUNK + 2)]
    sent = Driven([])
    kept = drive(
        ops.beat.claim(K, R, "beat-a:7", iter(claims), T0, 5),
        [
            script("CLAIM_DUE", [1, 3], keys=CLAIM_KEYS),  # of the first call, items 1 and 3 held
            script("CLAIM_DUE", [2], keys=CLAIM_KEYS),  # of the second, its second
        ],
        sent=sent,
    )
    assert kept == [claims[0], claims[2], claims[CLAIM_CHUNK + 1]]
    first, second = sent.rounds[0]
    assert list(first.args[: len(ClaimDueHead._fields)]) == ["unit", "beat-a:7", T0, 5, *TTLS]
    assert [len(claim_rows(c.args)) for c in (first, second)] == [CLAIM_CHUNK, 2]
    row = claim_rows(first.args)[0]
    assert row == ClaimDueRow(
        "j:job-0", T0, 0, f"job-0:{T0}", T0, T0 + 60_000, QUEUE, "message 0", "", "", 2, ""
    )


def test_a_claim_fenced_out_in_any_call_claims_nothing():
    claims = [sent_claim(n) for n in range(CLAIM_CHUNK + 1)]
    got = drive(
        ops.beat.claim(K, R, "stale", claims, T0, 5),
        [script("CLAIM_DUE", [1, 2]), script("CLAIM_DUE", [-1])],
    )
    assert got is None


def test_an_entry_beat_could_not_read_is_sent_as_set_aside_with_its_reason_and_kept():
    bad = Claim(entry(1), f"job-1:{T0}", T0, None, None, reason="could not read the brief")
    sent = Driven([])
    assert drive(ops.beat.claim(K, R, "beat-a:7", [bad], T0, 5), [script("CLAIM_DUE", [1])], sent=sent) == [
        bad
    ]
    (row,) = claim_rows(sent.rounds[0][0].args)
    assert (row.queue_key, row.message, row.next_ms) == ("could not read the brief", "", "")


def test_no_claims_send_nothing():
    assert drive(ops.beat.claim(K, R, "beat-a:7", [], T0, 5), []) == []


# -- the worker: begin, renew, finish, lose ------------------------------------------------------------


def begin(run_id: str = f"job-1:{T0}") -> Any:
    return ops.worker.begin_run(K, R, run_id, "job-1", T0, 30_000, "host:1:a")


BEGIN_KEYS = [K.run(f"job-1:{T0}"), K.job("job-1"), K.inflight, K.dead]


def test_begin_run_run_hands_back_the_attempt_and_the_spec():
    reply = [b"run", 2, PACKED.encode(), T0, b"1"]
    args = [T0, 30_000, f"job-1:{T0}", "host:1:a", "unit", *TTLS]
    started = drive(begin(), script("BEGIN_RUN", reply, keys=BEGIN_KEYS, args=args))
    assert (started.verdict, started.attempt, started.nominal_ms, started.manual) == (
        Verdict.RUN,
        2,
        T0,
        True,
    )
    assert started.spec == SPEC and started.unreadable == ""


def test_begin_run_with_a_spec_it_cannot_read_says_why_for_the_runner_to_set_it_aside():
    started = drive(begin(), script("BEGIN_RUN", [b"run", 1, b"env\x1fdev", T0, b"0"]))
    assert started.verdict == Verdict.RUN and started.spec is None
    assert started.unreadable.startswith("this worker could not read the job's spec (ValueError: product_tag")


@pytest.mark.parametrize(
    ("reply", "verdict", "wait_ms"),
    [([b"busy", b"1500"], Verdict.BUSY, 1_500), ([b"done"], Verdict.DONE, 0), ([b"skip"], Verdict.SKIP, 0)],
)
def test_begin_run_other_verdicts(reply: list[bytes], verdict: Verdict, wait_ms: int):
    started = drive(begin(), script("BEGIN_RUN", reply))
    assert (started.verdict, started.wait_ms, started.spec) == (verdict, wait_ms, None)


def test_begin_run_of_a_run_whose_record_is_gone_records_it_gone_then_skips():
    run_id = f"job-1:{T0}"
    started = drive(
        begin(),
        script("BEGIN_RUN", [b"gone"]),
        script("RUN_GONE", 1, keys=[], args=["unit", run_id, T0, *TTLS]),
    )
    assert started.verdict == Verdict.SKIP


@pytest.mark.parametrize(("reply", "lease"), [(0, Lease.LOST), (1, Lease.HELD), (2, Lease.CANCELLED)])
def test_renew_run_reads_the_lease_state(reply: int, lease: Lease):
    flow = ops.worker.renew_run(K, "job-1:5", "host:1:a", T0, 30_000)
    step = script(
        "RENEW_RUN", reply, keys=[K.run("job-1:5"), K.inflight], args=["host:1:a", T0, 30_000, "job-1:5"]
    )
    assert drive(flow, step) is lease


def finish(outcome: Any = "completed", wait: bool = True, **rest: Any) -> Any:
    return ops.worker.finish_run(K, R, "job-1:5", "job-1", 1, T0, outcome, wait=wait, **rest)


def test_finish_run_sends_the_outcome_and_says_whether_the_attempt_was_still_the_runs():
    sent = Driven([])
    keys = [K.run("job-1:5"), K.job("job-1"), K.due, K.dead, K.inflight]
    assert drive(
        finish("retry_due", due_ms=T0 + 5, error="boom"), script("FINISH_RUN", 1, keys=keys), sent=sent
    )
    (call_,) = sent.rounds[0]
    assert isinstance(call_, ops.Eval) and not call_.defer
    assert call_.args == [1, T0, "retry_due", "null", "boom", "", 0, 86_400, T0 + 5, "job-1:5", "unit", *TTLS]
    assert drive(finish(), script("FINISH_RUN", 0)) is False  # a newer attempt owns the run


def test_a_completed_run_is_finished_without_waiting_for_the_reply():
    sent = Driven([])
    assert drive(finish(wait=False), script("FINISH_RUN", None), sent=sent) is True
    (call_,) = sent.rounds[0]
    assert isinstance(call_, ops.Eval) and call_.defer  # the store reads its reply later


def test_only_a_completed_run_may_be_finished_without_waiting():
    with pytest.raises(ValueError, match="only a 'completed' outcome"):
        drive(finish("failed", wait=False))


@pytest.mark.parametrize("reply", [b"dead", b"retry", b"moved", b"cancelled"])
def test_lose_run_reads_what_became_of_the_attempt(reply: bytes):
    keys = [K.run("job-1:5"), K.job("job-1"), K.dead, K.inflight]
    args = ["job-1:5", "host:1:", "worker lost", T0, "unit", *TTLS]
    flow = ops.worker.lose_run(K, R, "job-1:5", "host:1:", "worker lost", T0)
    assert drive(flow, script("LOSE_RUN", reply, keys=keys, args=args)) is Lost(reply.decode())


def test_register_worker_publishes_its_events_and_envs_in_one_transaction():
    info = json.dumps({"envs": ["dev"], "events": ["billing/pay"], "seen_ms": T0})
    drive(
        ops.worker.register_worker(K, "w1", ["billing/pay"], ["dev"], T0),
        [call("sadd", K.events, "billing/pay", reply=1), call("hset", K.workers, "w1", info, reply=1)],
    )


def test_the_result_cache_reads_and_writes_with_its_ttl():
    assert (
        drive(ops.worker.cached_result("unit:c:1"), call("get", "unit:c:1", reply=b'{"a": 1}')) == '{"a": 1}'
    )
    assert drive(ops.worker.cached_result("unit:c:1"), call("get", "unit:c:1", reply=None)) is None
    drive(ops.worker.store_result("unit:c:1", "1", 500), call("set", "unit:c:1", "1", px=500, reply=True))


# -- lost messages --------------------------------------------------------------------------------


RUN = InFlight("job-1:5", T0, "queued", "1", T0)


def test_resend_pushes_again_only_if_the_run_has_not_moved():
    message = Message(QUEUE, "payload")
    keys = [K.run("job-1:5"), K.inflight, QUEUE]
    args = ["job-1:5", T0 + 9, "queued", "1", "payload"]
    assert drive(ops.beat.resend(K, RUN, message, T0 + 9), script("RESEND_RUN", 1, keys=keys, args=args))
    assert not drive(ops.beat.resend(K, RUN, message, T0 + 9), script("RESEND_RUN", 0))


def test_forget_runs_sends_each_run_with_when_it_was_read_and_counts_those_dropped():
    other = InFlight("job-2:5", T0 + 1, None, "0", 0)
    step = script("FORGET_RUNS", 1, keys=[K.inflight], args=["job-1:5", T0, "job-2:5", T0 + 1])
    assert drive(ops.beat.forget_runs(K, [RUN, other]), step) == 1
    assert drive(ops.beat.forget_runs(K, [])) == 0  # nothing to forget: no round trip


def test_unmoved_runs_reads_the_index_then_each_runs_state():
    rows = [(b"job-1:5", float(T0)), (b"job-2:5", float(T0 + 1))]
    got = drive(
        ops.beat.unmoved_runs(K, T0 + 10, 50),
        call("zrangebyscore", K.inflight, "-inf", T0 + 10, 0, 50, withscores=True, reply=rows),
        [
            call(
                "hmget",
                K.run("job-1:5"),
                "status",
                "attempts",
                "queued_ms",
                "lease_ms",
                reply=[b"queued", b"1", b"7", None],
            ),
            call("hmget", K.run("job-2:5"), "status", "attempts", "queued_ms", "lease_ms", reply=[None] * 4),
        ],
    )
    assert got == [InFlight("job-1:5", T0, "queued", "1", 7, 0), InFlight("job-2:5", T0 + 1, None, "0", 0, 0)]


def test_dispatches_read_briefs_and_fall_back_to_the_spec_of_an_older_record():
    traced = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"  # job-1:5's run kept its trace, job-2:6's a bad one
    # job-1 in today's layout, job-2 a record older than briefs (its spec), job-3 an old bad brief
    names, brief, none = jobfields.BRIEF, jobfields.unpack(BRIEF), [None] * len(jobfields.BRIEF)
    got = drive(
        ops.beat.dispatches(K, ["job-1:5", "job-2:6", "gone:7", "job-3:8"]),
        [
            call(
                "hmget",
                K.run("job-1:5"),
                "job_id",
                "nominal_ms",
                "traceparent",
                reply=[b"job-1", b"5", traced.encode()],
            ),
            call(
                "hmget",
                K.run("job-2:6"),
                "job_id",
                "nominal_ms",
                "traceparent",
                reply=[b"job-2", b"6", b"00-x"],
            ),
            call("hmget", K.run("gone:7"), "job_id", "nominal_ms", "traceparent", reply=[None, None, None]),
            call(
                "hmget", K.run("job-3:8"), "job_id", "nominal_ms", "traceparent", reply=[b"job-3", b"8", None]
            ),
        ],
        [
            call("hmget", K.job("job-1"), *names, reply=[brief.get(n, "").encode() or None for n in names]),
            call("hmget", K.job("job-2"), *names, reply=none),
            call("hmget", K.job("-"), *names, reply=none),
            call("hmget", K.job("job-3"), *names, reply=[*none[:-1], b"{not json"]),
        ],
        [
            call(
                "hget",
                K.job("job-2"),
                "spec",
                reply=json.dumps(dataclasses.asdict(SPEC), separators=(",", ":")).encode(),
            ),
            call("hget", K.job("-"), "spec", reply=None),
        ],
    )
    assert got[:2] == [
        Dispatch("job-1:5", jobfields.read_brief(BRIEF), 5, traced),
        Dispatch("job-2:6", JobBrief.of(SPEC), 6, None),
    ]
    (bad,) = got[2:]
    assert isinstance(bad, Unreadable) and (bad.job_id, bad.run_id) == ("job-3", "job-3:8")


def test_set_aside_run_fails_its_job_unless_the_run_moved():
    keys = [K.run("job-1:5"), K.inflight, K.dead, K.job("job-1")]
    set_aside = script("SET_ASIDE_RUN", 1, keys=keys, args=["job-1:5", T0, "unreadable", T0 + 1, R.dead_s])
    change = script("CHANGE_STATE", [b"ok"], args=["set_aside", "job-1", T0 + 1, "", 0, "unit", R.job_s, ""])
    assert drive(ops.beat.set_aside_run(K, R, RUN, "job-1", "unreadable", T0 + 1), set_aside, change)
    moved = script("SET_ASIDE_RUN", 0)
    assert not drive(ops.beat.set_aside_run(K, R, RUN, "job-1", "unreadable", T0 + 1), moved)


def envelope(run_id: str | None) -> bytes:
    return json.dumps([{"headers": {} if run_id is None else {"id": run_id}}, "", "q"]).encode()


def test_held_run_ids_scans_kombus_unacked_hash_to_its_end_keeping_what_was_taken_lately():
    got = drive(
        ops.beat.held_run_ids(K, 5_000),
        call("zrangebyscore", K.broker_unacked_index, 5.0, "+inf", reply=[b"t1", b"t2", b"t3"]),
        call(
            "hscan",
            K.broker_unacked,
            cursor=0,
            count=HSCAN_COUNT,
            reply=(7, {b"t1": envelope("job-1:5"), b"t0": envelope("job-9:5")}),  # t0: stuck
        ),
        call(
            "hscan",
            K.broker_unacked,
            cursor=7,
            count=HSCAN_COUNT,
            reply=(0, {b"t2": envelope(None), b"t3": b"x"}),
        ),
    )
    assert got == {"job-1:5"}


def test_head_queued_ms_reads_the_next_messages_run():
    head = json.dumps({"headers": {"id": "job-1:5"}}).encode()
    got = drive(
        ops.beat.head_queued_ms(K, QUEUE),
        call("lindex", QUEUE, -1, reply=head),
        call("hget", K.run("job-1:5"), "queued_ms", reply=b"42"),
    )
    assert got == 42
    assert drive(ops.beat.head_queued_ms(K, QUEUE), call("lindex", QUEUE, -1, reply=None)) is None
    assert drive(ops.beat.head_queued_ms(K, QUEUE), call("lindex", QUEUE, -1, reply=b"junk")) == 0


def test_runs_gone_counts_only_those_whose_record_vanished():
    got = drive(
        ops.worker.runs_gone(K, R, ["a:1", "b:2"], T0),
        script("RUN_GONE", 0, args=["unit", "a:1", T0, *TTLS]),
        script("RUN_GONE", 1, args=["unit", "b:2", T0, *TTLS]),
    )
    assert got == ["b:2"]


# -- lifecycle, leadership, health --------------------------------------------------------------------


def test_sweep_sends_the_retention_and_reads_what_it_removed():
    keys = [K.retired, K.dead, K.jobs, K.stats]
    args = ["unit", T0, 1_000, 5, R.job_s, R.dead_s, R.dead_max]
    got = drive(ops.beat.sweep(K, R, T0, 1_000, 5), script("SWEEP", [1, 2, 3, 4, 0], keys=keys, args=args))
    assert got == Swept(1, 2, 3, 4, 0)


def test_forget_workers_drops_those_unseen_and_those_unreadable():
    seen = {
        b"old": json.dumps({"envs": [], "events": [], "seen_ms": 1}).encode(),
        b"new": json.dumps({"envs": [], "events": [], "seen_ms": T0}).encode(),
        b"bad": b"{",
    }
    got = drive(
        ops.beat.forget_workers(K, T0 - 1),
        call("hgetall", K.workers, reply=seen),
        call("hdel", K.workers, "old", "bad", reply=2),
    )
    assert got == 2


def test_acquire_lock_reads_whether_it_leads_and_the_token_held():
    keys = [K.beat_lock, K.beat_fence]
    assert drive(
        ops.beat.acquire_lock(K, "beat-a", 5_000), script("ACQUIRE_LOCK", [1, b"beat-a:3"], keys=keys)
    ) == (
        True,
        "beat-a:3",
    )
    assert drive(ops.beat.release_lock(K, "beat-a:3"), script("RENEW_LOCK", 1, args=["beat-a:3", 0]))


def test_health_reads_hand_back_none_when_the_server_refuses_them():
    refused = redis.ResponseError("NOPERM this user has no permissions to run the 'config' command")
    assert drive(ops.beat.eviction_policy(), call("config_get", "maxmemory-policy", reply=refused)) is None
    assert drive(ops.beat.memory(), call("info", "memory", reply=refused)) is None
    info = {"used_memory": 10, "maxmemory": 0}
    assert drive(ops.beat.memory(), call("info", "memory", reply=info)) == (10, 0)
    policy = {"maxmemory-policy": "noeviction"}
    assert (
        drive(ops.beat.eviction_policy(), call("config_get", "maxmemory-policy", reply=policy))
        == "noeviction"
    )


def test_connection_trouble_is_not_taken_for_a_refusal():
    with pytest.raises(BackendUnavailableError):
        drive(ops.beat.memory(), call("info", "memory", reply=DOWN))
