"""The beat engine over real Redis, ticked at chosen instants (time is an argument, never read)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import redis
from celery import Celery

from beat.engine import BRIEF_CACHE_ENTRIES, BeatEngine, TickReport
from ductape_jobs import jobfields, ops
from ductape_jobs.celery_app import create_app
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRequest
from ductape_jobs.ops import Flow, Stream
from ductape_jobs.planning import plan_job
from ductape_jobs.rows import ClaimDueHead, ClaimDueRow
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.store import Claim, DueEntry, Store
from ductape_jobs.terms import JobStatus
from ductape_jobs.wire import MessageBuilder
from tests.support import wait_for

T0 = 1_893_456_000_000  # 2030-01-01T00:00:00Z: every instant below is chosen, none is read
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
NO_SESSIONS = Sessions({})
T = TypeVar("T")


class Queues:
    """What beat handed to Celery: the messages on the deployment's broker queue lists."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.keys = [store.keys.broker_prefix + settings.queue_for(env) for env in settings.envs]

    def messages(self) -> list[dict[str, Any]]:
        out = []
        for key in self.keys:  # LPUSHed, so the oldest message is last
            out += [json.loads(raw) for raw in reversed(self.store.redis.lrange(key, 0, -1))]
        return out

    @property
    def run_ids(self) -> list[str]:
        ids = []
        for message in self.messages():
            args, _, _ = json.loads(base64.b64decode(message["body"]))
            assert message["headers"]["id"] == args[0]  # the run id is the Celery task id
            ids.append(args[0])
        return ids

    def nominal(self, job_id: str) -> list[int]:
        return [int(r.rsplit(":", 1)[1]) for r in self.run_ids if r.rsplit(":", 1)[0] == job_id]


class RacingStore(Store):
    """The real store, plus a hook run between beat's read of the due index and its claim."""

    after_read: Callable[[list[DueEntry]], None] | None = None
    batches: list[int]

    def run(self, flow: Flow[T]) -> T:
        got = super().run(flow)
        if flow.__name__ == "due_entries":  # a flow is a generator, named after its function
            hook, self.after_read = self.after_read, None  # fire once
            if hook is not None and got:
                hook(cast(list[DueEntry], got))
        return got

    def _stream(self, stream: Stream) -> list[Any]:
        calls = list(stream.calls)  # the claims of one claim() call, all decided
        if calls and calls[0].script == "CLAIM_DUE":
            rows = sum(len(c.args) - len(ClaimDueHead._fields) for c in calls) // len(ClaimDueRow._fields)
            self.batches = [*getattr(self, "batches", []), rows]
        return super()._stream(Stream(iter(calls)))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> RacingStore:
    return RacingStore(client, Keys(prefix))


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    app = create_app(settings)
    yield app
    app.close()


def engine_for(
    store: Store, settings: Settings, app: Celery, instance: str = "beat-a", **overrides: Any
) -> tuple[BeatEngine, Queues]:
    """An engine building real Celery messages; its claims push them onto the queue lists."""
    tuned = settings.replace(**overrides)
    return BeatEngine(store, tuned, MessageBuilder(app, tuned), instance), Queues(store, settings)


def schedule(store: Store, settings: Settings, now_ms: int, **fields: Any) -> str:
    """Plan and store one job as the client would, with the clock passed in."""
    return schedule_many(store, settings, now_ms, [fields])[0]


def schedule_many(store: Store, settings: Settings, now_ms: int, requests: list[dict[str, Any]]) -> list[str]:
    plans = [
        plan_job(
            JobRequest.parse({"env": "dev", "product_tag": "tests", "event": "echo", **with_overlap(fields)}),
            settings,
            NO_SESSIONS,
            now_ms,
            uuid.uuid4().hex,
        )
        for fields in requests
    ]
    return [job_id for job_id, _ in store.run(ops.create_jobs(store.keys, plans, now_ms))]


def with_overlap(fields: dict[str, Any]) -> dict[str, Any]:
    """These tests tick beat with no worker, so every run they release stays queued: a schedule
    asks for repeat.overlap 'allow' (the default 'skip' would skip each later slot) unless the
    test names its policy."""
    repeat = fields.get("repeat")
    if not repeat or "overlap" in repeat:
        return fields
    return {**fields, "repeat": {**repeat, "overlap": "allow"}}


def drive(engine: BeatEngine, until_ms: int, max_ticks: int = 1_000) -> list[TickReport]:
    """Tick the way a perfect beat would: at each next due time, up to until_ms."""
    reports = []
    for _ in range(max_ticks):
        at = engine.store.run(ops.beat.next_due_ms(engine.store.keys))
        if at is None or at > until_ms:
            return reports
        reports.append(engine.tick(at))
    raise AssertionError(f"still due entries after {max_ticks} ticks")


def job_state(store: Store, job_id: str) -> dict[str, str]:
    raw = store.redis.hgetall(store.keys.job(job_id))
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"spec"}


def due_members(store: Store) -> dict[str, int]:
    return {m.decode(): int(s) for m, s in store.redis.zrange(store.keys.due, 0, -1, withscores=True)}


# -- release times ---------------------------------------------------------------------------


def test_one_off_later_job_is_released_exactly_at_its_time(
    store: Store, settings: Settings, celery_app: Celery
):
    at = T0 + 2 * HOUR
    job_id = schedule(store, settings, T0, start_at=at, input={"n": 1})
    assert due_members(store) == {f"j:{job_id}": at}
    engine, queues = engine_for(store, settings, celery_app)

    assert engine.tick(T0).released == 0
    assert engine.tick(at - 1).released == 0
    assert queues.messages() == []
    report = engine.tick(at)
    assert report.leader and report.released == 1 and report.lateness_ms == [0]
    [message] = queues.messages()
    assert queues.run_ids == [f"{job_id}:{at}"]
    assert message["headers"]["task"] == "tests.echo"
    assert message["headers"]["eta"] is None  # released when due: no ETA for a worker to hold
    assert message["properties"]["delivery_info"]["routing_key"] == settings.queue_for("dev")
    assert engine.tick(at + HOUR).released == 0 and len(queues.messages()) == 1

    state = job_state(store, job_id)
    assert state["status"] == JobStatus.QUEUED and state["runs_done"] == "1"
    assert due_members(store) == {}
    assert store.redis.hget(store.keys.run(f"{job_id}:{at}"), "status") == b"queued"


def test_every_with_limit_keeps_phase_and_stops_at_the_limit(
    store: Store, settings: Settings, celery_app: Celery
):
    start = T0 + 5 * MIN
    job_id = schedule(store, settings, T0, start_at=start, repeat={"every": MIN, "limit": 3})
    engine, queues = engine_for(store, settings, celery_app)

    for k in range(3):
        assert engine.tick(start + k * MIN - 1).released == 0
        assert engine.tick(start + k * MIN + 250).released == 1  # a little late: phase is kept
    assert queues.nominal(job_id) == [start, start + MIN, start + 2 * MIN]
    assert engine.tick(start + 10 * MIN).released == 0
    state = job_state(store, job_id)
    assert (state["status"], state["runs_done"], state["next_run_ms"]) == ("completed", "3", "")
    assert due_members(store) == {}
    assert store.redis.keys(f"{store.keys.prefix}:fp:*") == []  # the dedupe fingerprint is released


def test_cron_in_a_zone_runs_daily_until_an_inclusive_end_date(
    store: Store, settings: Settings, celery_app: Celery
):
    # "every day at 9 AM America/New_York" (14:00Z in January) until the third day's run, inclusive.
    end = T0 + 2 * DAY + 14 * HOUR
    job_id = schedule(
        store, settings, T0, repeat={"cron": "0 9 * * *", "tz": "America/New_York", "endDate": end}
    )
    engine, queues = engine_for(store, settings, celery_app)
    drive(engine, T0 + 10 * DAY)
    assert queues.nominal(job_id) == [T0 + 14 * HOUR, T0 + DAY + 14 * HOUR, end]
    assert job_state(store, job_id)["status"] == "completed"
    assert due_members(store) == {}


def test_six_field_cron_with_limit(store: Store, settings: Settings, celery_app: Celery):
    job_id = schedule(store, settings, T0 + 1, repeat={"cron": "*/2 * * * * *", "limit": 4})
    engine, queues = engine_for(store, settings, celery_app)
    drive(engine, T0 + MIN)
    assert queues.nominal(job_id) == [T0 + 2_000, T0 + 4_000, T0 + 6_000, T0 + 8_000]
    assert job_state(store, job_id)["status"] == "completed"


def test_weekly_four_times(store: Store, settings: Settings, celery_app: Celery):
    # The seed's "weekly but only 4 times": Mondays 10:00 UTC; 2030-01-07 is a Monday.
    job_id = schedule(store, settings, T0, repeat={"cron": "0 10 * * 1", "limit": 4})
    engine, queues = engine_for(store, settings, celery_app)
    drive(engine, T0 + 100 * DAY)
    first = T0 + 6 * DAY + 10 * HOUR
    assert queues.nominal(job_id) == [first + w * 7 * DAY for w in range(4)]


def test_skip_runs_one_late_run_then_returns_to_phase_and_skips_do_not_count(
    store: Store, settings: Settings, celery_app: Celery
):
    start = T0 + MIN
    job_id = schedule(store, settings, T0, start_at=start, repeat={"every": MIN, "limit": 5})
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(start).released == 1
    # Beat is down for 3.5 intervals: the overdue run goes once, late; the rest are skipped.
    back = start + 4 * MIN + 30_000
    report = engine.tick(back)
    assert report.released == 1 and report.lateness_ms == [back - (start + MIN)]
    state = job_state(store, job_id)
    assert (state["runs_done"], int(state["next_run_ms"])) == ("2", start + 5 * MIN)
    assert engine.tick(back).released == 0  # no catch-up burst
    drive(engine, start + 100 * MIN)
    assert queues.nominal(job_id) == [start, start + MIN, start + 5 * MIN, start + 6 * MIN, start + 7 * MIN]
    assert job_state(store, job_id)["status"] == "completed"  # the limit counted runs, not slots


def test_run_all_catches_up_within_its_window(store: Store, settings: Settings, celery_app: Celery):
    start = T0 + MIN
    job_id = schedule(
        store,
        settings,
        T0,
        start_at=start,
        repeat={"every": MIN, "misfire": "run_all", "catchup_ms": 150_000, "limit": 10},
    )
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(start).released == 1
    back = start + 6 * MIN + 40_000
    # Each tick releases one run per schedule; a real beat ticks again at once (sleep 0).
    reports = [engine.tick(back) for _ in range(6)]
    assert [r.released for r in reports] == [1, 1, 1, 0, 0, 0]
    assert reports[0].sleep_ms == 0 and reports[3].sleep_ms > 0
    # The overdue run, then the slots inside the 150 s window (back-150 s = start+4 min+10 s).
    assert queues.nominal(job_id) == [start, start + MIN, start + 5 * MIN, start + 6 * MIN]
    state = job_state(store, job_id)
    assert (int(state["next_run_ms"]), state["runs_done"]) == (start + 7 * MIN, "4")


# -- races with management ----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_cancel_or_pause_between_read_and_claim_never_resurrects(
    store: RacingStore, settings: Settings, celery_app: Celery, action: str
):
    start = T0 + MIN
    job_id = schedule(store, settings, T0, start_at=start, repeat={"every": MIN})
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(start).released == 1
    before = job_state(store, job_id)

    def meanwhile(entries: list[DueEntry]) -> None:
        assert [e.job_id for e in entries] == [job_id]
        assert store.change_state(action, job_id, start + MIN) == ("ok", None)

    store.after_read = meanwhile
    report = engine.tick(start + MIN)
    assert report.leader and report.released == 0 and len(queues.messages()) == 1
    state = job_state(store, job_id)
    assert state["status"] == ("cancelled" if action == "cancel" else "paused")
    assert state["runs_done"] == before["runs_done"] == "1"
    assert state["last_run_id"] == before["last_run_id"]
    assert not store.redis.exists(store.keys.run(f"{job_id}:{start + MIN}"))
    assert due_members(store) == {}
    drive(engine, start + 100 * MIN)
    assert engine.tick(start + 100 * MIN).released == 0 and len(queues.messages()) == 1
    if action == "cancel":
        assert store.redis.keys(f"{store.keys.prefix}:fp:*") == []
        return
    # Resumed, it goes on from where it was, on phase, without a duplicate of the raced slot.
    assert store.change_state("resume", job_id, start + 3 * MIN + 1, start + 4 * MIN, 1) == ("ok", None)
    drive(engine, start + 5 * MIN)
    assert queues.nominal(job_id) == [start, start + 4 * MIN, start + 5 * MIN]


def test_schedule_moved_between_read_and_claim_is_not_claimed_from_the_stale_read(
    store: RacingStore, settings: Settings, celery_app: Celery
):
    start = T0 + MIN
    job_id = schedule(store, settings, T0, start_at=start, repeat={"every": MIN})
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(start).released == 1

    def paused_and_resumed_later(_: list[DueEntry]) -> None:
        assert store.change_state("pause", job_id, start + MIN) == ("ok", None)
        assert store.change_state("resume", job_id, start + MIN, start + 3 * MIN, 1) == ("ok", None)

    store.after_read = paused_and_resumed_later
    assert engine.tick(start + MIN).released == 0  # the slot it read is no longer the schedule's
    state = job_state(store, job_id)
    assert (state["status"], state["runs_done"], int(state["next_run_ms"])) == (
        "scheduled",
        "1",
        start + 3 * MIN,
    )
    assert due_members(store) == {f"j:{job_id}": start + 3 * MIN}
    drive(engine, start + 3 * MIN)
    assert queues.nominal(job_id) == [start, start + 3 * MIN]


def test_cancel_of_a_one_off_between_read_and_claim(
    store: RacingStore, settings: Settings, celery_app: Celery
):
    at = T0 + HOUR
    job_id = schedule(store, settings, T0, start_at=at)
    engine, queues = engine_for(store, settings, celery_app)
    store.after_read = lambda _: store.change_state("cancel", job_id, at)
    assert engine.tick(at).released == 0
    assert job_state(store, job_id)["status"] == "cancelled" and queues.messages() == []
    assert engine.tick(at + 1).released == 0 and due_members(store) == {}


# -- leadership and fencing ---------------------------------------------------------------------


def test_standby_releases_nothing_until_the_leaders_lock_expires(
    store: Store, settings: Settings, celery_app: Celery
):
    job_ids = schedule_many(
        store, settings, T0, [{"start_at": T0 + HOUR, "input": {"i": i}} for i in range(3)]
    )
    leader, queues = engine_for(store, settings, celery_app, "beat-a", beat_lock_ttl_ms=600)
    standby, _ = engine_for(store, settings, celery_app, "beat-b", beat_lock_ttl_ms=600)
    assert leader.tick(T0).leader
    due_now = T0 + HOUR
    report = standby.tick(due_now)
    assert not report.leader and report.released == 0 and report.sleep_ms > 0
    assert queues.messages() == [] and len(due_members(store)) == 3

    # The leader stops ticking (dies); its lock lapses on Redis's clock and the standby takes over.
    took_over = wait_for(lambda: (rep := standby.tick(due_now)).leader and rep, 10, "the standby to lead")
    assert took_over.released == 3
    assert sorted(queues.run_ids) == sorted(f"{j}:{due_now}" for j in job_ids)
    assert int((standby.token or "").split(":")[0]) > int((leader.token or "").split(":")[0])
    # The old leader comes back: it cannot renew, cannot acquire, releases nothing.
    later = schedule(store, settings, due_now, start_at=due_now + HOUR)
    assert not leader.tick(due_now + HOUR).leader and leader.token is None
    assert len(queues.messages()) == 3 and f"j:{later}" in due_members(store)


def test_fenced_out_engine_claims_nothing(store: RacingStore, settings: Settings, celery_app: Celery):
    at = T0 + HOUR
    job_ids = schedule_many(store, settings, T0, [{"start_at": at, "input": {"i": i}} for i in range(5)])
    stalled, queues = engine_for(store, settings, celery_app, "beat-a")
    successor, _ = engine_for(store, settings, celery_app, "beat-b")
    assert stalled.tick(T0).leader
    old_token = stalled.token or ""

    def stall_past_the_lock(_: list[DueEntry]) -> None:
        # While beat-a sits between its read and its claim, its lock expires and beat-b leads.
        store.redis.delete(store.keys.beat_lock)
        assert successor.tick(at).released == 5

    store.after_read = stall_past_the_lock
    report = stalled.tick(at)
    assert report.fenced_out and report.released == 0 and stalled.token is None
    assert sorted(queues.run_ids) == sorted(f"{j}:{at}" for j in job_ids)  # each once, by beat-b
    # The stale token is refused by the claim script itself: nothing claimed, advanced or pushed.
    later = schedule(store, settings, at, start_at=at + HOUR)
    [entry] = store.run(ops.beat.due_entries(store.keys, at + HOUR, 10))
    message = stalled.messages.from_brief(
        f"{later}:{at + HOUR}", jobfields.read_brief(entry.brief_json or ""), at + HOUR, at + HOUR
    )
    claim = Claim(entry, f"{later}:{at + HOUR}", at + HOUR, None, message)
    assert store.run(ops.beat.claim(store.keys, store.retention, old_token, [claim], at + HOUR, 100)) is None
    assert job_state(store, later)["status"] == "scheduled" and due_members(store) == {
        f"j:{later}": at + HOUR
    }
    assert len(queues.messages()) == 5
    assert not stalled.tick(at + HOUR).leader  # stands by while beat-b holds the lock
    assert len(queues.messages()) == 5


def test_claim_pushes_the_message_in_the_same_step(
    store: RacingStore, settings: Settings, celery_app: Celery
):
    # There is no window between claiming a run and handing it to Celery: the claim script
    # pushes the message, so a beat dying after its claim loses nothing and sends nothing twice.
    at = T0 + HOUR
    job_id = schedule(store, settings, T0, start_at=at, repeat={"every": HOUR, "limit": 2})
    engine, queues = engine_for(store, settings, celery_app)
    seen: list[int] = []
    store.after_read = lambda _: seen.append(len(queues.messages()))
    assert engine.tick(at).released == 1
    assert seen == [0] and queues.run_ids == [f"{job_id}:{at}"]
    run = {k.decode(): v.decode() for k, v in store.redis.hgetall(store.keys.run(f"{job_id}:{at}")).items()}
    assert (run["status"], run["nominal_ms"], run["job_id"]) == ("queued", str(at), job_id)
    assert store.redis.zrange(store.keys.job_runs(job_id), 0, -1) == [f"{job_id}:{at}".encode()]


def test_retry_waiting_in_the_due_index_is_released_once(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id = schedule(store, settings, T0, start_at=0, retries=3)
    run_id = f"{job_id}:{T0}"
    started = store.begin_run(run_id, job_id, T0, 300_000, "test:0:4")
    retry_at = T0 + 5 * MIN  # a backoff longer than the horizon waits for beat
    assert store.finish_run(
        run_id, job_id, started.attempt, T0 + 10, "retry_due", error="boom", due_ms=retry_at
    )
    engine, queues = engine_for(store, settings, celery_app)
    pushed = len(queues.messages())  # the first attempt's message (never consumed here)
    assert engine.tick(retry_at - 1).released == 0
    assert engine.tick(retry_at).released == 1 and queues.run_ids[pushed:] == [run_id]
    assert engine.tick(retry_at + 1).released == 0 and due_members(store) == {}
    assert store.redis.hget(store.keys.run(run_id), "status") == b"queued"


def test_stale_retry_entry_is_dropped_not_spun_on(store: Store, settings: Settings, celery_app: Celery):
    # A duplicate delivery ran and finished the run while its retry waited in the due index:
    # beat must drop the stale entry, not re-read it (and sleep 0) on every tick forever.
    job_id = schedule(store, settings, T0, start_at=0, retries=3)
    run_id = f"{job_id}:{T0}"
    first = store.begin_run(run_id, job_id, T0, 300_000, "test:0:5")
    retry_at = T0 + 5 * MIN
    assert store.finish_run(
        run_id, job_id, first.attempt, T0 + 10, "retry_due", error="boom", due_ms=retry_at
    )
    again = store.begin_run(run_id, job_id, T0 + 20, 300_000, "test:0:6")
    assert again.verdict == "run"
    assert store.finish_run(run_id, job_id, again.attempt, T0 + 30, "completed")
    engine, queues = engine_for(store, settings, celery_app)
    pushed = len(queues.messages())
    report = engine.tick(retry_at + 1)
    assert report.released == 0 and len(queues.messages()) == pushed
    assert due_members(store) == {} and report.sleep_ms > 0


def _park_a_retry(store: Store, settings: Settings) -> tuple[str, str, int]:
    """A one-off whose first attempt failed with a backoff longer than the horizon."""
    job_id = schedule(store, settings, T0, start_at=0, retries=10)
    run_id = f"{job_id}:{T0}"
    started = store.begin_run(run_id, job_id, T0, 300_000, "test:0:100")
    retry_at = T0 + 5 * MIN
    assert store.finish_run(run_id, job_id, started.attempt, T0 + 10, "retry_due", error="x", due_ms=retry_at)
    assert job_state(store, job_id)["status"] == "scheduled"
    return job_id, run_id, retry_at


def test_cancel_while_a_retry_waits_in_the_due_index_is_not_undone_by_beat(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id, run_id, retry_at = _park_a_retry(store, settings)
    assert store.change_state("cancel", job_id, T0 + 20) == ("ok", None)
    engine, queues = engine_for(store, settings, celery_app)
    pushed = len(queues.messages())
    assert engine.tick(retry_at).released == 0 and len(queues.messages()) == pushed
    assert job_state(store, job_id)["status"] == "cancelled"
    assert store.redis.hget(store.keys.run(run_id), "status") == b"skipped"
    assert due_members(store) == {}
    assert store.begin_run(run_id, job_id, retry_at + 1, 300_000, "test:0:101").verdict != "run"


def test_cancel_while_an_attempt_fails_is_not_undone_by_its_retry(store: Store, settings: Settings):
    job_id = schedule(store, settings, T0, start_at=0, retries=3)
    run_id = f"{job_id}:{T0}"
    started = store.begin_run(run_id, job_id, T0, 300_000, "test:0:7")
    assert store.change_state("cancel", job_id, T0 + 5) == ("ok", None)
    assert store.finish_run(run_id, job_id, started.attempt, T0 + 10, "retry", error="boom")
    assert job_state(store, job_id)["status"] == "cancelled"
    assert store.begin_run(run_id, job_id, T0 + 1_010, 300_000, "test:0:8").verdict != "run"  # the retry


def test_a_failed_outcome_written_twice_is_counted_once(store: Store, settings: Settings):
    # A worker writes an outcome again when it could not read the reply (a Redis restart).
    job_id = schedule(store, settings, T0, start_at=0, retries=0)
    run_id = f"{job_id}:{T0}"
    started = store.begin_run(run_id, job_id, T0, 300_000, "test:0:9")
    for at in (T0 + 10, T0 + 20):
        assert store.finish_run(run_id, job_id, started.attempt, at, "failed", error="boom")
    assert job_state(store, job_id)["failed_runs"] == "1"
    assert store.redis.zrange(store.keys.dead, 0, -1, withscores=True) == [(run_id.encode(), T0 + 10)]


def test_pausing_a_one_off_whose_retry_waits_is_refused_and_changes_nothing(
    store: Store, settings: Settings, celery_app: Celery
):
    job_id, run_id, retry_at = _park_a_retry(store, settings)
    assert store.change_state("pause", job_id, T0 + 20) == ("refused", "retrying")
    engine, queues = engine_for(store, settings, celery_app)
    pushed = len(queues.messages())
    assert engine.tick(retry_at).released == 1 and queues.run_ids[pushed:] == [run_id]
    assert job_state(store, job_id)["status"] == "queued"


# -- batches --------------------------------------------------------------------------------------


def test_2500_due_entries_in_batches_of_1000_are_each_released_once(
    store: RacingStore, settings: Settings, celery_app: Celery
):
    at = T0 + HOUR
    one_offs = schedule_many(store, settings, T0, [{"start_at": at, "input": {"i": i}} for i in range(1_250)])
    repeats = schedule_many(
        store,
        settings,
        T0,
        [{"start_at": at, "input": {"i": i}, "repeat": {"every": MIN}} for i in range(1_250)],
    )
    engine, queues = engine_for(store, settings, celery_app, beat_batch=1_000)
    started = time.monotonic()
    report = engine.tick(at + 5)
    elapsed = time.monotonic() - started
    assert report.released == 2_500, f"released {report.released} in {elapsed:.1f}s"
    assert store.batches == [1_000, 1_000, 500]  # one round trip per batch
    run_ids = queues.run_ids
    assert len(set(run_ids)) == len(run_ids) == 2_500
    assert set(run_ids) == {f"{j}:{at}" for j in one_offs + repeats}
    # The repeats went back into the index at their next slot, not released again in this tick.
    assert engine.tick(at + 5).released == 0
    due = due_members(store)
    assert len(due) == 1_250 and set(due.values()) == {at + MIN}
    assert engine.tick(at + MIN).released == 1_250 and len(queues.messages()) == 3_750


# -- deciding ahead --------------------------------------------------------------------------


def test_a_run_due_soon_is_decided_ahead_and_sent_only_at_its_time(
    store: Store, settings: Settings, celery_app: Celery
):
    at = T0 + 2 * HOUR
    job_id = schedule(store, settings, T0, start_at=at, repeat={"every": MIN})
    engine, queues = engine_for(store, settings, celery_app)
    early = engine.tick(at - 100)  # within PREPARE_AHEAD_MS: decided now, nothing sent
    assert early.released == 0 and early.sleep_ms == 100 and queues.messages() == []
    assert [c.run_id for c in engine.shards[0].prepared] == [f"{job_id}:{at}"]
    assert due_members(store) == {f"j:{job_id}": at}
    report = engine.tick(at)
    assert report.released == 1 and report.lateness_ms == [0]
    [message] = queues.messages()
    assert message["headers"]["id"] == f"{job_id}:{at}" and message["headers"]["eta"] is None
    assert job_state(store, job_id)["next_run_ms"] == str(at + MIN)
    assert engine.tick(at + MIN).released == 1  # and so on, each at its time
    assert queues.run_ids == [f"{job_id}:{at}", f"{job_id}:{at + MIN}"]


def test_a_schedule_changed_after_it_was_decided_ahead_is_not_sent(
    store: Store, settings: Settings, celery_app: Celery
):
    at = T0 + 2 * HOUR
    paused, kept = schedule_many(
        store,
        settings,
        T0,
        [{"start_at": at, "repeat": {"every": MIN}, "input": {"n": n}} for n in (1, 2)],
    )
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(at - 200).released == 0
    assert store.change_state("pause", paused, at - 100)[0] == "ok"
    report = engine.tick(at)
    assert report.released == 1 and queues.run_ids == [f"{kept}:{at}"]
    assert job_state(store, paused)["status"] == "paused" and f"j:{paused}" not in due_members(store)


def test_a_late_wake_decides_afresh_with_the_real_time(store: Store, settings: Settings, celery_app: Celery):
    at = T0 + 2 * HOUR
    job_id = schedule(store, settings, T0, start_at=at, repeat={"every": MIN})  # misfire: skip
    engine, queues = engine_for(store, settings, celery_app)
    engine.tick(at - 100)
    late = at + 10 * MIN + 5  # the beat slept through ten slots
    report = engine.tick(late)
    assert report.released == 1 and report.lateness_ms == [10 * MIN + 5]
    # Decided at `late`, not as prepared: the skipped slots are not queued up behind it.
    assert job_state(store, job_id)["next_run_ms"] == str(at + 11 * MIN)
    assert queues.run_ids == [f"{job_id}:{at}"]


def test_beat_reads_a_jobs_brief_never_its_input(store: Store, settings: Settings, celery_app: Celery):
    blob = "x" * (settings.max_input_bytes - 100)
    big = schedule(store, settings, T0, start_at=T0 + MIN, input={"blob": blob}, repeat={"every": MIN})
    [entry] = store.run(ops.beat.due_entries(store.keys, T0 + MIN, 10))
    assert entry.job_id == big and entry.brief_json is not None
    assert len(entry.brief_json) < 1_500 and blob[:2_000] not in entry.brief_json
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(T0 + MIN).released == 1
    [message] = queues.messages()
    assert len(message["headers"]["argsrepr"]) == 1_024  # Flower's view of the input, cut as before
    [(cached, _)] = engine._briefs.values()
    assert cached == entry.brief_json  # the cache holds the brief, not the spec


def test_a_burst_keeps_no_more_parsed_briefs_than_the_cache_holds(
    store: Store, settings: Settings, celery_app: Celery
):
    # A parsed brief is ~2 KiB: a 100,000-run burst must not keep them all (beat's peak memory
    # is bench figure 5). The most recent ones are kept, for schedules that come back soon.
    due = BRIEF_CACHE_ENTRIES + 100
    at = T0 + MIN
    requests = [{"start_at": at, "input": {"i": i}, "repeat": {"every": MIN}} for i in range(due)]
    job_ids = schedule_many(store, settings, T0, requests)
    engine, queues = engine_for(store, settings, celery_app)
    assert engine.tick(at).released == due
    assert len(engine._briefs) == BRIEF_CACHE_ENTRIES
    assert engine.tick(at + MIN).released == due  # all again, a minute later, whatever was cached
    assert len(queues.run_ids) == 2 * due and set(job_ids) == {r.split(":")[0] for r in queues.run_ids}
