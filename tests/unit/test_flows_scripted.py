"""Every ``job.*`` flow driven with scripted Redis replies: what it sends, what it makes of each
reply, and the error each refusal becomes. Pure and fast; the same flows over real Redis are
tested in tests/integration (test_async_client, test_batches, test_read_back, test_lifecycle)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from ductape_jobs import ops, scripts
from ductape_jobs.errors import (
    BackendUnavailableError,
    JobNotFoundError,
    JobStateError,
    JobValidationError,
    RecordUnreadableError,
    UnknownEventError,
)
from ductape_jobs.flows import Revoke
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.records import SetAside
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec, JobStatus, RunStatus
from tests.scripted import (
    ANY,
    CREATE_ROW_WIDTH,
    DOWN,
    Driven,
    Step,
    call,
    core,
    create_rows,
    drive,
    job_hash,
    long_way_row,
    row_job_id,
    run_hash,
    script,
)

K = Keys("unit")
MINUTE = 60_000
ONE_OFF: dict[str, Any] = {"env": "dev", "product_tag": "billing", "event": "pay", "input": {"order": 1}}
EVERY_MINUTE: dict[str, Any] = {**ONE_OFF, "repeat": {"every": MINUTE}}
EVENT_KNOWN = call("sismember", K.events, "billing/pay", reply=1)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def spec_of(request: dict[str, Any], now: int = 1_000) -> JobSpec:
    return plan_job(JobRequest.parse(request), Settings(key_prefix="unit"), Sessions({}), now, "x").spec


def create_jobs(reply: Any = (), count: int = 1) -> Step:
    """One CREATE_JOBS call of ``count`` rows; ``reply`` lists (1-based index, twin id) flat."""
    return script(
        "CREATE_JOBS",
        list(reply),
        keys=[K.jobs, K.due, K.inflight],
        args=["unit", ANY, *[ANY] * (CREATE_ROW_WIDTH * count)],
    )


# -- schedule ------------------------------------------------------------------------------------


def test_schedule_due_now_checks_the_event_writes_one_row_and_hands_back_a_queued_handle() -> None:
    c = core()
    sent = Driven([])
    before = wall_ms()
    handle = drive(c.flows.schedule(ONE_OFF, {}), EVENT_KNOWN, [create_jobs()], sent=sent)
    (create,) = sent.rounds[1]
    now = create.args[1]
    assert before <= now <= wall_ms()
    assert handle.created and not handle.recurring and handle.status == JobStatus.QUEUED
    assert handle.scheduled_at == datetime.fromtimestamp(now / 1000, UTC)
    assert create_rows(create) == [long_way_row(c, ONE_OFF, handle.job_id, now)]
    # The handler's registration is remembered: the next schedule goes straight to the write.
    assert drive(c.flows.schedule(None, ONE_OFF), [create_jobs()]).created


def test_schedule_of_an_unknown_event_names_the_known_ones_and_writes_nothing() -> None:
    f = core().flows
    known = call("smembers", K.events, reply={b"billing/refund", b"shop/pay", b"billing/charge"})
    with pytest.raises(UnknownEventError) as err:
        drive(f.schedule(ONE_OFF, {}), call("sismember", K.events, "billing/pay", reply=0), known)
    assert "billing/pay" in str(err.value) and "['charge', 'refund']" in str(err.value)
    assert err.value.field == "event"
    with pytest.raises(UnknownEventError, match=r"known for billing: none"):
        drive(
            f.schedule(ONE_OFF, {}),
            call("sismember", K.events, "billing/pay", reply=0),
            call("smembers", K.events, reply=set()),
        )


def test_schedule_without_require_handler_asks_nothing_before_the_write() -> None:
    assert drive(core(require_handler=False).flows.schedule(ONE_OFF, {}), [create_jobs()]).created


def test_schedule_refuses_a_bad_request_before_any_round_trip() -> None:
    f = core().flows
    with pytest.raises(JobValidationError, match="not both"):
        drive(f.schedule(ONE_OFF, {"env": "dev"}))
    with pytest.raises(JobValidationError) as err:
        drive(f.schedule({**ONE_OFF, "env": "no such env!"}, {}))
    assert err.value.field == "env"


def test_schedule_in_the_future_writes_a_due_entry_and_no_message() -> None:
    c = core()
    start = wall_ms() + 3_600_000
    request = {**ONE_OFF, "start_at": start}
    sent = Driven([])
    handle = drive(c.flows.schedule(request, {}), EVENT_KNOWN, [create_jobs()], sent=sent)
    assert handle.status == JobStatus.SCHEDULED and handle.scheduled_at == datetime.fromtimestamp(
        start / 1000, UTC
    )
    (create,) = sent.rounds[1]
    assert create_rows(create) == [long_way_row(c, request, handle.job_id, create.args[1])]


def test_schedule_that_finds_a_live_twin_hands_back_the_twin_uncreated() -> None:
    c = core()
    next_ms = wall_ms() + MINUTE
    twin = job_hash(spec_of(EVERY_MINUTE), "scheduled", recurring=1, next_run_ms=next_ms)
    sent = Driven([])
    handle = drive(
        c.flows.schedule(EVERY_MINUTE, {}),
        EVENT_KNOWN,
        [create_jobs([1, b"twin"])],
        call("hgetall", K.job("twin"), reply=twin),
        sent=sent,
    )
    assert (handle.job_id, handle.created, handle.recurring) == ("twin", False, True)
    assert handle.next_run_at == datetime.fromtimestamp(next_ms / 1000, UTC)
    (create,) = sent.rounds[1]
    (row,) = create_rows(create)
    assert K.fingerprint(spec_of(EVERY_MINUTE).fingerprint()) in row  # what finds the twin
    assert row == long_way_row(c, EVERY_MINUTE, row_job_id(row), create.args[1])


# -- schedule_many ---------------------------------------------------------------------------------


def test_schedule_many_writes_one_call_whose_shared_rows_are_what_each_request_alone_would_write() -> None:
    c = core()
    requests = [{**ONE_OFF, "input": {"order": n, "note": "x" * n}} for n in range(3)]
    sent = Driven([])
    handles = drive(c.flows.schedule_many(requests), EVENT_KNOWN, [create_jobs(count=3)], sent=sent)
    (create,) = sent.rounds[1]
    now = create.args[1]
    assert len({h.job_id for h in handles}) == 3 and all(h.created for h in handles)
    expected = [long_way_row(c, r, h.job_id, now) for r, h in zip(requests, handles, strict=True)]
    assert create_rows(create) == expected


def test_schedule_many_hands_back_the_twins_the_write_reports_at_their_places() -> None:
    f = core().flows
    requests = [{**EVERY_MINUTE, "input": {"order": n}} for n in range(3)]
    twin = job_hash(spec_of(requests[1]), "scheduled", recurring=1, next_run_ms=wall_ms() + MINUTE)
    handles = drive(
        f.schedule_many(requests),
        EVENT_KNOWN,
        [create_jobs([2, b"old"], count=3)],  # the script's index is 1-based: the second request
        call("hgetall", K.job("old"), reply=twin),
    )
    assert [h.created for h in handles] == [True, False, True]
    assert handles[1].job_id == "old" and "old" not in (handles[0].job_id, handles[2].job_id)


def test_schedule_many_streams_calls_of_create_batch_rows_and_maps_twins_across_them() -> None:
    f = core(require_handler=False).flows
    n = scripts.CREATE_BATCH + 2
    requests = [{**ONE_OFF, "input": {"order": i}} for i in range(n)]
    twin = job_hash(spec_of(ONE_OFF), "scheduled", next_run_ms=wall_ms() + MINUTE)
    handles = drive(
        f.schedule_many(requests),
        [create_jobs(count=scripts.CREATE_BATCH), create_jobs([2, b"old"], count=2)],
        call("hgetall", K.job("old"), reply=twin),
    )
    assert [at for at, h in enumerate(handles) if not h.created] == [scripts.CREATE_BATCH + 1]


def test_schedule_many_names_the_refused_request_and_writes_nothing() -> None:
    with pytest.raises(JobValidationError) as err:
        drive(core().flows.schedule_many([ONE_OFF, {**ONE_OFF, "retries": -1}]), EVENT_KNOWN)
    assert err.value.field == "requests[1].retries"


def test_validate_checks_the_event_and_writes_nothing() -> None:
    req = drive(core().flows.validate(ONE_OFF), EVENT_KNOWN)
    assert (req.product_tag, req.event) == ("billing", "pay")


# -- reading ---------------------------------------------------------------------------------------


def test_get_reads_the_job_hash() -> None:
    raw = job_hash(spec_of(ONE_OFF), "completed", attempts=2, last_run_id="J:1", result='{"ok": true}')
    job = drive(core().flows.get("J"), call("hgetall", K.job("J"), reply=raw))
    assert (job.job_id, job.status, job.attempts, job.last_run_id, job.result) == (
        "J",
        JobStatus.COMPLETED,
        2,
        "J:1",
        {"ok": True},
    )


def test_get_of_a_missing_or_unreadable_job_raises_its_error() -> None:
    f = core().flows
    with pytest.raises(JobNotFoundError, match="no job 'J' under key prefix 'unit'"):
        drive(f.get("J"), call("hgetall", K.job("J"), reply={}))
    with pytest.raises(RecordUnreadableError, match=r"job J: could not read .*ductape-jobs cancel J"):
        drive(f.get("J"), call("hgetall", K.job("J"), reply={b"spec": b"{not json", b"status": b"scheduled"}))


def test_list_filters_in_order_reports_unreadable_records_and_stops_at_its_limit() -> None:
    f = core().flows
    ids = [b"a", b"b", b"c", b"d", b"e", b"f"]
    shop = spec_of({**ONE_OFF, "product_tag": "shop"})
    records = [
        job_hash(spec_of(ONE_OFF), "scheduled"),
        {b"spec": b"[]", b"status": b"scheduled"},
        {},  # gone between the index read and the record read
        job_hash(shop, "scheduled"),
        job_hash(spec_of(ONE_OFF), "scheduled"),
        job_hash(spec_of(ONE_OFF), "scheduled"),  # beyond the limit
    ]
    hashes = [call("hgetall", K.job(i.decode()), reply=r) for i, r in zip(ids, records, strict=True)]
    got = drive(
        f.list(product_tag="billing", status="scheduled", limit=2),
        call("zrevrange", K.jobs, 0, 999, reply=ids),
        hashes,
    )
    assert [j.job_id for j in got] == ["a", "e"]
    assert [u.job_id for u in got.unreadable] == ["b"]
    paused = drive(
        f.list(status=JobStatus.PAUSED, limit=200), call("zrevrange", K.jobs, 0, 1999, reply=ids), hashes
    )
    assert paused == [] and len(paused.unreadable) == 1


def test_runs_reads_the_job_then_its_latest_runs_leaving_expired_ones_out() -> None:
    runs = drive(
        core().flows.runs("J", 5),
        call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), "failed")),
        call("zrevrange", K.job_runs("J"), 0, 4, reply=[b"J:2", b"J:1"]),
        [
            call("hgetall", K.run("J:2"), reply=run_hash("J", "failed", error="boom")),
            call("hgetall", K.run("J:1"), reply={}),
        ],
    )
    assert [(r.run_id, r.status, r.error) for r in runs] == [("J:2", RunStatus.FAILED, "boom")]


def test_upcoming_reads_the_anchor_of_a_recurring_job_only() -> None:
    f = core().flows
    next_ms = 1_700_000_040_000
    recurring = job_hash(spec_of(EVERY_MINUTE), "scheduled", recurring=1, next_run_ms=next_ms, runs_done=2)
    times = drive(
        f.upcoming("J", 3),
        call("hgetall", K.job("J"), reply=recurring),
        call("hget", K.job("J"), "anchor_ms", reply=str(next_ms - 2 * MINUTE).encode()),
    )
    assert [int(t.timestamp() * 1000) for t in times] == [next_ms, next_ms + MINUTE, next_ms + 2 * MINUTE]
    one_off = job_hash(spec_of(ONE_OFF), "scheduled", next_run_ms=next_ms)
    got = drive(f.upcoming("J", 3), call("hgetall", K.job("J"), reply=one_off))
    assert [int(t.timestamp() * 1000) for t in got] == [next_ms]
    cancelled = job_hash(spec_of(EVERY_MINUTE), "cancelled", recurring=1, next_run_ms=next_ms)
    assert drive(f.upcoming("J", 3), call("hgetall", K.job("J"), reply=cancelled)) == []


def test_set_aside_lists_the_jobs_with_their_reasons_leaving_gone_ones_out() -> None:
    got = drive(
        core().flows.set_aside(10),
        call("zrevrange", K.set_aside, 0, 9, withscores=True, reply=[(b"a", 5000.0), (b"b", 4000.0)]),
        [
            call("hget", K.job("a"), "last_error", reply=b"could not read"),
            call("hget", K.job("b"), "last_error", reply=None),
        ],
    )
    assert got == [SetAside("a", 5000, "could not read")]


def test_failed_reads_the_dead_letters_newest_first() -> None:
    runs = drive(
        core().flows.failed(10),
        call("zrevrange", K.dead, 0, 9, reply=[b"J:2", b"K:1"]),
        [
            call("hgetall", K.run("J:2"), reply=run_hash("J", "failed", error="boom", attempts=4)),
            call("hgetall", K.run("K:1"), reply=run_hash("K", "failed")),
        ],
    )
    assert [(r.run_id, r.job_id, r.attempts) for r in runs] == [("J:2", "J", 4), ("K:1", "K", 1)]


def test_failed_without_dead_letters_reads_no_runs() -> None:
    assert drive(core().flows.failed(10), call("zrevrange", K.dead, 0, 9, reply=[])) == []


# -- managing --------------------------------------------------------------------------------------


def change_state(
    action: str, reply: list[bytes], next_ms: Any = "", runs_done: int = 0, terminate: str = ""
) -> Any:
    retention = Settings().job_retention_s
    return script(
        "CHANGE_STATE",
        reply,
        keys=[K.job("J"), K.due, K.set_aside],
        args=[action, "J", ANY, next_ms, runs_done, "unit", retention, terminate],
    )


@pytest.mark.parametrize(("action", "status"), [("cancel", "cancelled"), ("pause", "paused")])
def test_cancel_and_pause_change_the_state_then_read_the_job_back(action: str, status: str) -> None:
    f = core().flows
    sent = Driven([])
    before = wall_ms()
    got = drive(
        getattr(f, action)("J"),
        change_state(action, [b"ok"]),
        call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), status)),
        sent=sent,
    )
    job = got[0] if action == "cancel" else got  # cancel also says what to revoke
    assert job.status == JobStatus(status)
    assert before <= sent.rounds[0][0].args[2] <= wall_ms()


@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_a_refused_or_missing_change_raises_and_reads_nothing_more(action: str) -> None:
    f = core().flows
    with pytest.raises(JobStateError, match=f"cannot {action} J: it is completed"):
        drive(getattr(f, action)("J"), change_state(action, [b"refused", b"completed"]))
    with pytest.raises(JobNotFoundError, match="no job or run 'J'"):
        drive(getattr(f, action)("J"), change_state(action, [b"missing"]))


@pytest.mark.parametrize("terminate", [False, True])
def test_cancel_names_the_running_runs_to_revoke_only_when_terminating(terminate: bool) -> None:
    job, revoke = drive(
        core().flows.cancel("J", terminate),
        change_state("cancel", [b"ok", b"J:1000"], terminate="1" if terminate else ""),
        call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), "cancelled")),
    )
    assert job.status == JobStatus.CANCELLED
    assert revoke == (Revoke(("J:1000",), True) if terminate else Revoke((), False))


def cancel_run(reply: list[bytes], terminate: str = "") -> Any:
    retention = Settings().job_retention_s
    return script(
        "CANCEL_RUN", reply, keys=[K.run("J:1000")], args=["unit", "J:1000", ANY, terminate, retention]
    )


@pytest.mark.parametrize(
    ("had", "terminate", "revoke"),
    [
        ("queued", False, Revoke(("J:1000",))),  # a worker holding its message drops it
        ("retrying", True, Revoke(("J:1000",))),  # not started: nothing to kill
        ("running", False, Revoke()),  # the handler is told by its heartbeat
        ("running", True, Revoke(("J:1000",), True)),
    ],
)
def test_cancel_run_returns_the_run_and_what_to_revoke(had: str, terminate: bool, revoke: Revoke) -> None:
    after = "running" if had == "running" and not terminate else "cancelled"
    run, asked = drive(
        core().flows.cancel_run("J:1000", terminate),
        cancel_run([b"ok", had.encode()], "1" if terminate else ""),
        call("hgetall", K.run("J:1000"), reply=run_hash("J", after)),
    )
    assert run.status == RunStatus(after) and asked == revoke


def test_cancel_run_refuses_a_finished_run_and_names_a_missing_one() -> None:
    with pytest.raises(JobStateError, match=r"cannot cancel run J:1000: it already finished \(completed\)"):
        drive(core().flows.cancel_run("J:1000"), cancel_run([b"refused", b"completed"]))
    with pytest.raises(JobNotFoundError, match=r"no run 'J:1000'.*exists once it is released"):
        drive(core().flows.cancel_run("J:1000"), cancel_run([b"missing"]))


def test_resume_keeps_a_future_next_run_and_the_runs_done() -> None:
    next_ms = wall_ms() + 10 * MINUTE
    paused = job_hash(spec_of(EVERY_MINUTE), "paused", recurring=1, next_run_ms=next_ms, runs_done=3)
    job = drive(
        core().flows.resume("J"),
        call("hgetall", K.job("J"), reply=paused),
        change_state("resume", [b"ok"], next_ms=next_ms, runs_done=3),
        call("hgetall", K.job("J"), reply=job_hash(spec_of(EVERY_MINUTE), "scheduled", recurring=1)),
    )
    assert job.status == JobStatus.SCHEDULED


def test_resume_skips_slots_missed_while_paused_keeping_the_phase() -> None:
    anchor = 1_700_000_000_000 + 7  # off the minute: the phase the next run must keep
    paused = job_hash(spec_of(EVERY_MINUTE), "paused", recurring=1, next_run_ms=anchor + MINUTE, runs_done=1)
    sent = Driven([])
    before = wall_ms()
    drive(
        core().flows.resume("J"),
        call("hgetall", K.job("J"), reply=paused),
        call("hget", K.job("J"), "anchor_ms", reply=str(anchor).encode()),
        change_state("resume", [b"ok"], next_ms=ANY, runs_done=1),
        call("hgetall", K.job("J"), reply=job_hash(spec_of(EVERY_MINUTE), "scheduled", recurring=1)),
        sent=sent,
    )
    next_ms = sent.rounds[2][0].args[3]
    assert before <= next_ms <= wall_ms() + MINUTE and (next_ms - anchor) % MINUTE == 0


def test_resume_of_a_job_not_paused_is_refused_before_any_write() -> None:
    f = core().flows
    with pytest.raises(JobStateError, match="job J is scheduled, not paused"):
        drive(f.resume("J"), call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), "scheduled")))
    paused = job_hash(spec_of(ONE_OFF), "paused", next_run_ms=wall_ms() + MINUTE)
    with pytest.raises(JobStateError, match="cannot resume J: it is cancelled"):
        drive(
            f.resume("J"),
            call("hgetall", K.job("J"), reply=paused),
            change_state("resume", [b"refused", b"cancelled"], next_ms=ANY),
        )


def add_run(action: str, run_id: Any, reply: list[bytes], job_id: str = "J") -> Any:
    queue = K.broker_prefix + Settings(key_prefix="unit").queue_for("dev")
    run_key = ANY if run_id is ANY else K.run(run_id)
    keys = [K.job(job_id), run_key, K.job_runs(job_id), queue, K.dead, K.inflight]
    return script("ADD_RUN", reply, keys=keys, args=[action, job_id, run_id, ANY, ANY, "unit", 100])


def test_trigger_adds_a_manual_run_with_its_message_and_returns_its_id() -> None:
    sent = Driven([])
    before = wall_ms()
    run_id = drive(
        core().flows.trigger("J"),
        call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), "scheduled")),
        add_run("trigger", ANY, [b"ok"]),
        sent=sent,
    )
    (add,) = sent.rounds[1]
    now = add.args[3]
    assert before <= now <= wall_ms()
    assert run_id == f"J:{now}m" == add.args[2] and add.keys[1] == K.run(run_id)
    assert f'"id": "{run_id}"' in add.args[4]  # the Celery message of that very run


def test_a_refused_or_missing_trigger_raises() -> None:
    f = core().flows
    job = call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), "cancelled"))
    with pytest.raises(JobStateError, match="cannot trigger J: it is cancelled"):
        drive(f.trigger("J"), job, add_run("trigger", ANY, [b"refused", b"cancelled"]))
    with pytest.raises(JobNotFoundError):
        drive(f.trigger("J"), call("hgetall", K.job("J"), reply={}))


def test_redrive_adds_the_dead_run_again_and_names_a_missing_run() -> None:
    f = core().flows
    job = call("hgetall", K.job("J"), reply=job_hash(spec_of(ONE_OFF), "failed"))
    assert drive(f.redrive("J:5000"), job, add_run("redrive", "J:5000", [b"ok"])) == "J:5000"
    with pytest.raises(JobNotFoundError, match="no job or run 'J:5000'"):
        drive(f.redrive("J:5000"), job, add_run("redrive", "J:5000", [b"refused", b"missing"]))
    with pytest.raises(JobStateError, match="cannot redrive J:5000: it is cancelled"):
        drive(f.redrive("J:5000"), job, add_run("redrive", "J:5000", [b"refused", b"cancelled"]))


def backfill(reply: list[bytes], slots: int) -> Step:
    keys = [K.job("J"), K.job_runs("J"), K.inflight]
    return script("BACKFILL", reply, keys=keys, args=["J", ANY, "unit", 100, *[ANY] * (4 * slots)])


def test_backfill_sends_each_slot_with_its_own_run_id_and_message_and_returns_the_runs_added() -> None:
    f = core().flows
    created = 1_700_000_000_000
    anchor = created + 3 * MINUTE  # slots every minute from its creation, before its first run too
    spec = spec_of(EVERY_MINUTE, now=created)
    job = call(
        "hgetall",
        K.job("J"),
        reply=job_hash(spec, "scheduled", recurring=1, next_run_ms=anchor + MINUTE, runs_done=1),
    )
    anchor_of = call("hget", K.job("J"), "anchor_ms", reply=str(anchor).encode())
    sent = Driven([])
    run_1 = f"J:{created}".encode()
    added = drive(f.backfill("J", created, anchor), job, anchor_of, backfill([b"ok", run_1], 4), sent=sent)
    assert added == [run_1.decode()]  # what the script added: the others it knew already
    (call_,) = sent.rounds[2]
    slots = [call_.args[at : at + 4] for at in range(4, len(call_.args), 4)]
    expected = [created + k * MINUTE for k in range(4)]
    assert [(run_id, nominal) for run_id, nominal, _, _ in slots] == [(f"J:{t}", t) for t in expected]
    assert all(f'"id": "{run_id}"' in message for run_id, _, _, message in slots)
    with pytest.raises(JobStateError, match="cannot backfill J: it is cancelled"):
        drive(f.backfill("J", created, anchor), job, anchor_of, backfill([b"refused", b"cancelled"], 4))
    # More slots than a call takes: refused before the script, naming the bound.
    few = core(runs_kept=3).flows
    with pytest.raises(JobValidationError, match="more than 3 slots"):
        drive(few.backfill("J", created, anchor), job, anchor_of)


# -- when Redis fails ------------------------------------------------------------------------------


def test_redis_down_becomes_backend_unavailable_without_the_address() -> None:
    with pytest.raises(BackendUnavailableError) as err:
        drive(core().flows.get("J"), call("hgetall", K.job("J"), reply=DOWN))
    assert "unreachable" in str(err.value) and "127.0.0.1" not in str(err.value)
    assert "TimeoutError" in str(ops.unreachable(redis.TimeoutError("at 10.0.0.1")))


def test_a_script_error_is_not_taken_for_a_reply() -> None:
    with pytest.raises(redis.ResponseError, match="OOM"):
        drive(
            core().flows.cancel("J"), change_state("cancel", redis.ResponseError("OOM command not allowed"))
        )
