"""Managing jobs on real processes: cancel, pause, resume, trigger, upcoming, list, runs, dedupe."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from ductape_jobs import Ductape, JobStateError, JobStatus, RunStatus
from ductape_jobs.terms import job_id_of
from tests.handlers import calls_key
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

HOUR = 3_600_000


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def executions(r: redis.Redis, job_id: str | None = None) -> Counter[str]:
    """How many times the echo handler ran each run id (of one job, or all)."""
    got = {k.decode(): int(v) for k, v in r.hgetall(calls_key("echo") + ":runs").items()}
    return Counter({run: n for run, n in got.items() if job_id is None or job_id_of(run) == job_id})


def nominal(run_ids: object) -> list[int]:
    return sorted(int(str(run).rsplit(":", 1)[1]) for run in run_ids)  # type: ignore[union-attr]


def echo(**fields: object) -> dict[str, object]:
    return {"env": "dev", "product_tag": "tests", "event": "echo", **fields}


def ms(when: object) -> int:
    return round(when.timestamp() * 1000)  # type: ignore[attr-defined]


def test_same_recurring_job_twice_returns_the_same_job_id(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    procs.beat()
    request = echo(input={"a": 1}, repeat={"every": 1000, "limit": 3})
    first = ductape.job.schedule(**request)
    second = ductape.job.schedule(**request)
    assert first.created and not second.created and second.job_id == first.job_id
    other = ductape.job.schedule(**{**request, "input": {"a": 2}})
    assert other.created and other.job_id != first.job_id
    wait_for(
        lambda: all(ductape.job.get(j).status == JobStatus.COMPLETED for j in (first.job_id, other.job_id)),
        30,
        "both schedules to reach their limit",
    )
    wait_for(lambda: len(executions(r)) >= 6, 20, "six runs to execute")
    assert executions(r, first.job_id) == Counter({run: 1 for run in executions(r, first.job_id)})
    assert len(executions(r, first.job_id)) == 3 and len(executions(r, other.job_id)) == 3

    listed = ductape.job.list(env="dev", product_tag="tests", event="echo", status="completed")
    assert {j.job_id for j in listed} == {first.job_id, other.job_id}
    assert ductape.job.list(env="prd", product_tag="tests") == []
    assert ductape.job.list(event="no_such_event") == []
    assert ductape.job.list(status="scheduled") == []
    # Finished schedules free their fingerprint: the same request now starts a new schedule.
    again = ductape.job.schedule(**{**request, "start_at": now_ms() + HOUR})
    assert again.created and again.job_id not in (first.job_id, other.job_id)
    assert [j.job_id for j in ductape.job.list(status="scheduled")] == [again.job_id]


def test_upcoming_honours_limit_end_date_and_zone(ductape: Ductape):
    # 2030-03-08 is the Friday before US DST starts (Sunday 2030-03-10): 9 AM New York is 14:00Z,
    # then 13:00Z from the Monday on.
    start = 1_899_158_400_000  # 2030-03-08T00:00:00Z
    daily = ductape.job.schedule(
        **echo(
            start_at=start, input={"d": 1}, repeat={"cron": "0 9 * * *", "tz": "America/New_York", "limit": 4}
        )
    )
    got = [ms(t) for t in ductape.job.upcoming(daily.job_id, 10)]
    day = 86_400_000
    assert got == [
        start + 14 * HOUR,
        start + day + 14 * HOUR,
        start + 2 * day + 13 * HOUR,
        start + 3 * day + 13 * HOUR,
    ]
    ended = ductape.job.schedule(
        **echo(start_at=start, input={"d": 2}, repeat={"every": HOUR, "endDate": start + 2 * HOUR})
    )
    assert [ms(t) for t in ductape.job.upcoming(ended.job_id, 10)] == [start, start + HOUR, start + 2 * HOUR]
    one_off = ductape.job.schedule(**echo(start_at=start))
    assert [ms(t) for t in ductape.job.upcoming(one_off.job_id, 3)] == [start]
    ductape.job.cancel(one_off.job_id)
    assert ductape.job.upcoming(one_off.job_id, 3) == []


def test_trigger_runs_once_now_and_does_not_count_toward_limit(
    procs: Processes, ductape: Ductape, r, env_prefix
):
    procs.worker()
    procs.beat()
    later = now_ms() + HOUR
    recurring = ductape.job.schedule(
        **echo(start_at=later, input={"r": 1}, repeat={"every": 60_000, "limit": 2})
    )
    one_off = ductape.job.schedule(**echo(start_at=later, input={"o": 1}))
    manual = [ductape.job.trigger(recurring.job_id), ductape.job.trigger(one_off.job_id)]
    wait_for(lambda: all(executions(r)[m] == 1 for m in manual), 30, "both triggered runs")

    rec = ductape.job.get(recurring.job_id)
    assert (rec.status, rec.runs_done, rec.next_run_ms) == (JobStatus.SCHEDULED, 0, later)
    assert [ms(t) for t in ductape.job.upcoming(recurring.job_id, 5)] == [later, later + 60_000]
    [run] = ductape.job.runs(recurring.job_id)
    assert run.run_id == manual[0] and run.manual and run.status == RunStatus.COMPLETED
    assert run.started_ms and run.finished_ms and run.finished_ms >= run.started_ms
    # The one-off keeps its own run: the trigger was extra, not a replacement.
    one = ductape.job.get(one_off.job_id)
    assert (one.status, one.next_run_ms) == (JobStatus.SCHEDULED, later)
    assert r.zscore(f"{env_prefix}:due", f"j:{one_off.job_id}") == later

    # On a short schedule the manual run is on top of the limit: 2 scheduled runs + 1 manual.
    short = ductape.job.schedule(**echo(input={"s": 1}, repeat={"every": 1000, "limit": 2}))
    extra = ductape.job.trigger(short.job_id)
    wait_for(lambda: ductape.job.get(short.job_id).status == JobStatus.COMPLETED, 30, "the short schedule")
    wait_for(lambda: len(executions(r, short.job_id)) == 3, 30, "three runs of the short schedule")
    assert ductape.job.get(short.job_id).runs_done == 2
    assert set(executions(r, short.job_id).values()) == {1} and extra in executions(r, short.job_id)
    assert sorted(run.manual for run in ductape.job.runs(short.job_id)) == [False, False, True]


def test_cancel_stops_further_runs(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    procs.beat()
    job = ductape.job.schedule(**echo(input={"job": 1}, repeat={"every": 1000}))
    control = ductape.job.schedule(**echo(input={"control": 1}, repeat={"every": 1000}))
    wait_for(lambda: len(executions(r, job.job_id)) >= 2, 30, "two runs before the cancel")

    cancelled = ductape.job.cancel(job.job_id)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.next_run_ms is None
    assert r.zscore(f"{env_prefix}:due", f"j:{job.job_id}") is None
    assert ductape.job.upcoming(job.job_id) == []
    released = {run.run_id for run in ductape.job.runs(job.job_id, 1000)}
    seen = len(executions(r, control.job_id))
    wait_for(lambda: len(executions(r, control.job_id)) >= seen + 3, 30, "three more slots to pass")

    after = ductape.job.get(job.job_id)
    assert after.status == JobStatus.CANCELLED and after.runs_done == cancelled.runs_done
    assert {run.run_id for run in ductape.job.runs(job.job_id, 1000)} == released  # nothing new released
    assert set(executions(r, job.job_id)) <= released and set(executions(r, job.job_id).values()) == {1}
    with pytest.raises(JobStateError):
        ductape.job.cancel(job.job_id)
    with pytest.raises(JobStateError):
        ductape.job.trigger(job.job_id)
    with pytest.raises(JobStateError):
        ductape.job.pause(job.job_id)
    ductape.job.cancel(control.job_id)


def test_pause_then_resume_continues_on_phase(procs: Processes, ductape: Ductape, r, env_prefix):
    procs.worker()
    procs.beat()
    job = ductape.job.schedule(**echo(input={"job": 1}, repeat={"every": 1000}))
    control = ductape.job.schedule(**echo(input={"control": 1}, repeat={"every": 1000}))
    anchor = ms(job.scheduled_at)
    wait_for(lambda: len(executions(r, job.job_id)) >= 2, 30, "two runs before the pause")

    paused = ductape.job.pause(job.job_id)
    paused_ms = now_ms()
    assert paused.status == JobStatus.PAUSED and r.zscore(f"{env_prefix}:due", f"j:{job.job_id}") is None
    with pytest.raises(JobStateError):
        ductape.job.pause(job.job_id)
    seen = len(executions(r, control.job_id))
    wait_for(lambda: len(executions(r, control.job_id)) >= seen + 3, 30, "three slots to pass while paused")
    assert ductape.job.get(job.job_id).runs_done == paused.runs_done

    resume_ms = now_ms()
    resumed = ductape.job.resume(job.job_id)
    assert resumed.status == JobStatus.SCHEDULED and resumed.next_run_ms is not None
    assert resumed.next_run_ms >= resume_ms - 1000 and (resumed.next_run_ms - anchor) % 1000 == 0
    with pytest.raises(JobStateError):
        ductape.job.resume(job.job_id)
    wait_for(
        lambda: len([t for t in nominal(executions(r, job.job_id)) if t >= resume_ms - 1000]) >= 3,
        30,
        "three runs after resuming",
    )
    ductape.job.cancel(job.job_id)
    ductape.job.cancel(control.job_id)

    ran = executions(r, job.job_id)
    times = nominal(ran)
    assert set(ran.values()) == {1}
    assert all((t - anchor) % 1000 == 0 for t in times)  # on the original phase throughout
    assert not [t for t in times if paused_ms + 1000 <= t < resume_ms - 1000]  # nothing for the paused slots
    assert len([t for t in times if t >= resume_ms - 1000]) >= 3
