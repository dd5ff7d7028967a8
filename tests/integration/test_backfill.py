"""job.backfill over real Redis, through both clients and the CLI: every past slot of a range
once, under the slot's own run id, so a second backfill (or a slot that ran) adds nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from ductape_jobs import AsyncDuctape, Ductape, JobStateError, JobValidationError, ops
from ductape_jobs.cli.main import cli
from ductape_jobs.clock import now_ms
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.terms import RunStatus, run_id_for
from tests.integration.test_async_client import run

MIN = 60_000


def echo(**fields: Any) -> dict[str, Any]:
    return {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}, **fields}


def past_schedule(ductape: Ductape, minutes: int = 10, **repeat: Any) -> tuple[str, int, int]:
    """A minutely schedule whose start_at lies ``minutes`` back (its first run is now); its id,
    start and anchor (the first run's time: the slots' phase)."""
    start = now_ms() - minutes * MIN
    handle = ductape.job.schedule(**echo(start_at=start, repeat={"every": MIN, **repeat}))
    return handle.job_id, start, ductape.store.run(ops.anchor_ms(ductape.store.keys, handle.job_id))


def queued(r: redis.Redis, settings: Settings) -> int:
    return int(r.llen(Keys(settings.key_prefix).broker_prefix + settings.queue_for("dev")))


def test_backfill_runs_each_past_slot_once_and_a_second_backfill_runs_nothing(
    ductape: Ductape, settings: Settings, r: redis.Redis
) -> None:
    job_id, start, anchor = past_schedule(ductape, limit=3)
    slots = [anchor - k * MIN for k in range(10, 0, -1) if anchor - k * MIN >= start]
    sent = queued(r, settings)

    added = ductape.job.backfill(job_id, start, now_ms())
    assert added == [run_id_for(job_id, at) for at in slots]  # in slot order; the first run is not added
    assert queued(r, settings) == sent + len(slots)  # each with its message, pushed in the same step
    runs = {run.run_id: run for run in ductape.store.run(ops.get_runs(ductape.store.keys, added))}
    assert all(run.status == RunStatus.QUEUED and run.manual for run in runs.values())
    assert [runs[run_id].nominal_ms for run_id in added] == slots  # the handler sees its slot's time
    assert set(added) <= {m.decode() for m in r.zrange(Keys(settings.key_prefix).inflight, 0, -1)}

    assert ductape.job.backfill(job_id, start, now_ms()) == []  # the same range again: nothing
    assert queued(r, settings) == sent + len(slots)
    job = ductape.job.get(job_id)
    assert job.runs_done == 1 and job.next_run_ms == anchor + MIN  # not counted toward limit

    # A slot that repeat.overlap skipped never ran: a backfill runs it (and only it).
    r.hset(Keys(settings.key_prefix).run(added[0]), "status", "skipped")
    assert ductape.job.backfill(job_id, start, now_ms()) == [added[0]]


def test_refused_ranges_name_the_field_and_write_nothing(
    ductape: Ductape, settings: Settings, r: redis.Redis
) -> None:
    job_id, start, anchor = past_schedule(ductape)
    before = (queued(r, settings), r.zcard(Keys(settings.key_prefix).job_runs(job_id)))
    future = now_ms() + 5 * MIN
    cases = {
        "end": (start, future),  # not past yet
        "start": (start - MIN, start + MIN),  # before the job's start
    }
    for field, (begin, end) in cases.items():
        with pytest.raises(JobValidationError) as caught:
            ductape.job.backfill(job_id, begin, end)
        assert caught.value.field == field, caught.value
    with pytest.raises(JobValidationError, match="after end"):
        ductape.job.backfill(job_id, start + MIN, start)
    small = Ductape(settings=settings.replace(**{"runs_kept": 3}))
    try:
        with pytest.raises(JobValidationError, match=r"BACKFILL_MAX_SLOTS 1000.*DUCTAPE_RUNS_KEPT 3"):
            small.job.backfill(job_id, start, now_ms())
    finally:
        small.close()
    assert (queued(r, settings), r.zcard(Keys(settings.key_prefix).job_runs(job_id))) == before

    # A job whose next run is already past (beat is behind) keeps that slot for beat.
    r.hset(Keys(settings.key_prefix).job(job_id), "next_run_ms", anchor - 2 * MIN)
    with pytest.raises(JobValidationError, match="reaches the schedule's next run"):
        ductape.job.backfill(job_id, start, now_ms())

    one_off = ductape.job.schedule(**echo(start_at=now_ms() + 3_600_000)).job_id
    with pytest.raises(JobValidationError, match="one-off"):
        ductape.job.backfill(one_off, start, now_ms())
    ended = ductape.job.schedule(**echo(start_at=start, repeat={"every": MIN}, input={"n": 2})).job_id
    ductape.job.cancel(ended)
    with pytest.raises(JobStateError, match=r"cannot backfill .*: it is cancelled"):
        ductape.job.backfill(ended, start, start + MIN)
    with pytest.raises(JobValidationError, match="endDate"):
        limited = ductape.job.schedule(
            **echo(start_at=start, repeat={"every": MIN, "endDate": now_ms() + MIN}, input={"n": 3})
        ).job_id
        ductape.job.backfill(limited, start, now_ms() + 2 * MIN)


def test_backfill_from_the_async_client_and_the_cli(ductape: Ductape, settings: Settings) -> None:
    job_id, start, anchor = past_schedule(ductape, minutes=4)
    first_half = anchor - 2 * MIN

    async def body(client: AsyncDuctape) -> list[str]:
        return await client.job.backfill(job_id, start, first_half)

    added = run(settings, body)
    assert added and all(int(run_id.rsplit(":", 1)[1]) <= first_half for run_id in added)

    env = {"REDIS_URL": settings.url, "DUCTAPE_KEY_PREFIX": settings.key_prefix}
    iso = "1970-01-01T00:00:00Z"  # an ISO time is taken too; this one is before the job's start
    refused = CliRunner().invoke(cli, ["backfill", job_id, "--start", iso, "--end", str(now_ms())], env=env)
    # (ductape-jobs' main() turns it into exit code 2, as for every JobValidationError)
    assert isinstance(refused.exception, JobValidationError) and refused.exception.field == "start"
    done = CliRunner().invoke(
        cli, ["backfill", job_id, "--start", str(start), "--end", str(now_ms()), "--json"], env=env
    )
    assert done.exit_code == 0, done.output
    rest = json.loads(done.stdout)["run_ids"]
    assert rest == [run_id_for(job_id, anchor - MIN)]  # only the slot the first call left
    again = CliRunner().invoke(
        cli, ["backfill", job_id, "--start", str(start), "--end", str(now_ms())], env=env
    )
    assert again.exit_code == 0 and "nothing to run" in again.stdout
