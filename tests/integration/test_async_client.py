"""AsyncDuctape against real Redis: the same job.* methods as Ductape, awaited, over redis.asyncio.

No pytest asyncio plugin: each test runs its coroutine with ``asyncio.run``, and the client is
created inside it, since redis.asyncio connections belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
import redis

from ductape_jobs import (
    AsyncDuctape,
    BackendUnavailableError,
    Ductape,
    JobNotFoundError,
    JobStateError,
    JobStatus,
    JobValidationError,
    RunStatus,
    SessionError,
    Settings,
    UnknownEventError,
    ops,
)
from ductape_jobs.aclient import AsyncJobClient
from ductape_jobs.client import JobClient
from ductape_jobs.keys import Keys
from tests.handlers import calls_key
from tests.support import Processes

T = TypeVar("T")
HOUR_S = 3600


def run(settings: Settings, body: Callable[[AsyncDuctape], Coroutine[Any, Any, T]]) -> T:
    """Run ``body`` with a fresh AsyncDuctape on a fresh event loop."""

    async def main() -> T:
        async with AsyncDuctape(settings=settings) as ductape:
            return await body(ductape)

    return asyncio.run(main())


async def until(check: Callable[[], Awaitable[T]], timeout_s: float = 30, what: str = "condition") -> T:
    """Await ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (last := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(0.05)
    return last


def queue_len(r: redis.Redis, settings: Settings, env: str = "dev") -> int:
    """Messages waiting on an env's Celery queue."""
    return int(r.llen(Keys(settings.key_prefix).broker_prefix + settings.queue_for(env)))


def stored_keys(r: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under the test's prefix."""
    return sorted(r.scan_iter(match=f"{prefix}:*"))


def value_of(r: redis.Redis, key: bytes) -> bytes:
    """A key's whole value as bytes, whatever its type."""
    kind = r.type(key).decode()
    parts: Any = {
        "string": lambda: [r.get(key)],
        "hash": lambda: [x for kv in r.hgetall(key).items() for x in kv],
        "list": lambda: r.lrange(key, 0, -1),
        "set": lambda: r.smembers(key),
        "zset": lambda: r.zrange(key, 0, -1),
    }[kind]()
    return b" ".join(parts)


def job(**fields: Any) -> dict[str, Any]:
    """A request for the tests' echo handler, with ``fields`` on top."""
    return {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}, **fields}


# -- the API ------------------------------------------------------------------------------------


def test_async_job_client_mirrors_the_sync_one() -> None:
    public = {n for n in vars(JobClient) if not n.startswith("_")}
    assert public == {n for n in vars(AsyncJobClient) if not n.startswith("_")}
    assert {
        "schedule",
        "schedule_many",
        "get",
        "list",
        "runs",
        "failed",
        "upcoming",
        "cancel",
        "pause",
        "resume",
        "trigger",
        "redrive",
    } <= public
    for name in public:
        assert inspect.iscoroutinefunction(getattr(AsyncJobClient, name)), name
        sync, async_ = (inspect.signature(getattr(cls, name)) for cls in (JobClient, AsyncJobClient))
        assert sync.parameters == async_.parameters, name
        assert sync.return_annotation == async_.return_annotation, name


# -- scheduling ---------------------------------------------------------------------------------


def test_immediate_job_is_queued_with_its_run_and_message(settings: Settings, r: redis.Redis) -> None:
    async def body(ductape: AsyncDuctape) -> None:
        handle = await ductape.job.schedule(**job(input={"userId": "u1"}, app="web"))
        assert handle.status == JobStatus.QUEUED and handle.created and not handle.recurring
        got = await ductape.job.get(handle.job_id)
        assert got.status == JobStatus.QUEUED and got.spec.input == {"userId": "u1"} and got.spec.app == "web"
        [queued] = await ductape.job.runs(handle.job_id)
        assert queued.status == RunStatus.QUEUED and queued.run_id == got.last_run_id
        assert await ductape.job.upcoming(handle.job_id) == []  # a queued one-off has nothing ahead

    run(settings, body)
    [message] = r.lrange(Keys(settings.key_prefix).broker_prefix + settings.queue_for("dev"), 0, -1)
    assert json.loads(message)["headers"]["task"] == "tests.echo"


def test_later_job_waits_in_the_due_index(settings: Settings, r: redis.Redis) -> None:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)

    async def body(ductape: AsyncDuctape) -> str:
        handle = await ductape.job.schedule(job(start_at=at.timestamp()))
        assert handle.status == JobStatus.SCHEDULED and handle.scheduled_at == at
        assert await ductape.job.upcoming(handle.job_id) == [at]
        return handle.job_id

    job_id = run(settings, body)
    assert r.zscore(Keys(settings.key_prefix).due, f"j:{job_id}") == at.timestamp() * 1000
    assert queue_len(r, settings) == 0


def test_recurring_jobs_list_their_runs_ahead_and_dedupe(settings: Settings) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    every = job(start_at=start.isoformat(), repeat={"every": 60_000, "limit": 3})
    cron = job(event="flaky", repeat={"cron": "0 9 * * *", "tz": "Europe/Paris"})

    async def body(ductape: AsyncDuctape) -> None:
        first = await ductape.job.schedule(every)
        assert first.recurring and first.status == JobStatus.SCHEDULED and first.next_run_at == start
        ahead = await ductape.job.upcoming(first.job_id, n=5)
        assert ahead == [start + timedelta(minutes=m) for m in range(3)]  # limit 3
        again = await ductape.job.schedule(every)
        assert (again.job_id, again.created) == (first.job_id, False)
        daily = await ductape.job.schedule(cron)
        nines = await ductape.job.upcoming(daily.job_id, n=3)
        assert [t.astimezone(ZoneInfo("Europe/Paris")).hour for t in nines] == [9, 9, 9]
        assert {j.job_id for j in await ductape.job.list()} == {first.job_id, daily.job_id}

    run(settings, body)


def test_session_placeholders_are_resolved_and_the_token_is_never_stored(
    settings: Settings, r: redis.Redis
) -> None:
    data = {"user": {"id": "user-7f3a", "email": "ada-7f3a@example.com"}}

    async def body(ductape: AsyncDuctape) -> tuple[str, str]:
        token = ductape.sessions.start("user-session", data)
        handle = await ductape.job.schedule(
            job(
                input={"userId": "$Session{user}{id}", "to": "$Session{user}{email}", "n": 1},
                session={"tag": "user-session", "token": token},
            )
        )
        got = await ductape.job.get(handle.job_id)
        assert got.spec.input == {"userId": "***", "to": "***", "n": 1}
        resolved = {"userId": "user-7f3a", "to": "ada-7f3a@example.com", "n": 1}
        assert ductape.vault.open_input(got.spec) == resolved
        with pytest.raises(SessionError, match="signature"):
            await ductape.job.schedule(
                job(
                    input={"to": "$Session{user}{email}"},
                    session={"tag": "user-session", "token": token[:-4] + "AAAA"},
                )
            )
        return token, handle.job_id

    token, job_id = run(settings, body)
    blobs = b" ".join(value_of(r, k) for k in stored_keys(r, settings.key_prefix))
    assert job_id.encode() in blobs  # the scan does see the job
    for needle in (token, token.split(":", 1)[1], "user-7f3a", "ada-7f3a@example.com"):
        assert needle.encode() not in blobs


BAD_REQUESTS = {
    "env": job(env="qa"),
    "retries": job(retries=99),
    "cron": job(repeat={"cron": "0 0 31 2 *"}),
    "tz": job(repeat={"cron": "0 9 * * *", "tz": "Mars/Olympus"}),
    "cache": job(cache="nope"),
    "placeholder without session": job(input={"to": "$Session{user}{email}"}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_validation_errors_match_the_sync_client_and_write_nothing(
    case: str, settings: Settings, r: redis.Redis
) -> None:
    request = BAD_REQUESTS[case]
    with Ductape(settings=settings) as sync, pytest.raises(JobValidationError) as expected:
        sync.job.schedule(request)

    async def body(ductape: AsyncDuctape) -> None:
        with pytest.raises(JobValidationError) as got:
            await ductape.job.schedule(request)
        assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)
        with pytest.raises(JobValidationError) as batch:  # one bad request refuses the whole batch
            await ductape.job.schedule_many([job(), job(), request])
        assert batch.value.field == f"requests[2].{expected.value.field}"
        with pytest.raises(JobValidationError, match="not both"):
            await ductape.job.schedule(job(), env="dev")
        with pytest.raises(JobValidationError):
            await ductape.job.validate(request)

    run(settings, body)
    assert stored_keys(r, settings.key_prefix) == []


def test_unknown_event_is_refused_until_a_worker_registers_it(settings: Settings, r: redis.Redis) -> None:
    strict = settings.replace(**{"require_handler": True})

    async def body(ductape: AsyncDuctape) -> None:
        with pytest.raises(UnknownEventError, match="tests/echo"):
            await ductape.job.schedule(job())
        assert stored_keys(r, settings.key_prefix) == []
        with Ductape(settings=strict) as sync:
            sync.store.run(ops.worker.register_worker(sync.store.keys, "w1@test", ["tests/echo"], ["dev"], 0))
        assert (await ductape.job.validate(job())).event == "echo"
        assert (await ductape.job.schedule(job())).status == JobStatus.QUEUED

    run(strict, body)


def test_concurrent_schedules_all_land_exactly_once(settings: Settings, r: redis.Redis) -> None:
    name = f"async-{settings.key_prefix}"

    async def body(ductape: AsyncDuctape) -> list[str]:
        ductape.redis.connection_pool.connection_kwargs["client_name"] = name
        handles = await asyncio.gather(*(ductape.job.schedule(job(input={"i": i})) for i in range(200)))
        # Many connections were open at once: the calls overlapped instead of queueing on one.
        assert sum(c["name"] == name for c in r.client_list()) > 1
        return [h.job_id for h in handles]

    job_ids = run(settings, body)
    keys = Keys(settings.key_prefix)
    assert len(set(job_ids)) == 200 and r.zcard(keys.jobs) == 200
    assert queue_len(r, settings) == 200  # one message per job
    with Ductape(settings=settings) as sync:
        jobs = {j.job_id: j for j in sync.job.list(limit=500)}
        assert sorted(j.spec.input["i"] for j in jobs.values()) == list(range(200))
        assert all(r.zcard(keys.job_runs(job_id)) == 1 for job_id in job_ids)


def test_unreachable_redis_raises_backend_unavailable(settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = settings.replace(**{"redis_url": f"redis://:hunter2@127.0.0.1:{port}/0"})

    async def body(ductape: AsyncDuctape) -> None:
        with pytest.raises(BackendUnavailableError, match="unreachable") as err:
            await ductape.job.schedule(job())
        assert "hunter2" not in str(err.value)

    run(down, body)


# -- reading and managing -----------------------------------------------------------------------


def test_get_list_pause_resume_trigger_cancel(settings: Settings, r: redis.Redis) -> None:
    later = time.time() + HOUR_S

    async def body(ductape: AsyncDuctape) -> None:
        rec = await ductape.job.schedule(job(start_at=later, repeat={"every": 60_000}))
        one_off = await ductape.job.schedule(job(event="flaky", env="prd"))
        assert [j.job_id for j in await ductape.job.list(event="flaky")] == [one_off.job_id]
        assert [j.job_id for j in await ductape.job.list(env="dev")] == [rec.job_id]
        assert [j.job_id for j in await ductape.job.list(status="queued")] == [one_off.job_id]
        assert len(await ductape.job.list(limit=1)) == 1

        assert (await ductape.job.pause(rec.job_id)).status == JobStatus.PAUSED
        assert await ductape.job.upcoming(rec.job_id, n=2) != []
        with pytest.raises(JobStateError, match="paused"):
            await ductape.job.pause(rec.job_id)
        assert (await ductape.job.resume(rec.job_id)).status == JobStatus.SCHEDULED
        with pytest.raises(JobStateError, match="not paused"):
            await ductape.job.resume(rec.job_id)

        run_id = await ductape.job.trigger(rec.job_id)
        [extra] = await ductape.job.runs(rec.job_id)
        assert (extra.run_id, extra.manual, extra.status) == (run_id, True, RunStatus.QUEUED)
        assert queue_len(r, settings) == 1

        cancelled = await ductape.job.cancel(rec.job_id)
        assert cancelled.status == JobStatus.CANCELLED and cancelled.next_run_ms is None
        assert await ductape.job.upcoming(rec.job_id) == []
        with pytest.raises(JobStateError, match="cancelled"):
            await ductape.job.trigger(rec.job_id)
        with pytest.raises(JobNotFoundError):
            await ductape.job.get("no-such-job")
        with pytest.raises(JobNotFoundError):
            await ductape.job.cancel("no-such-job")
        with pytest.raises(JobStateError, match="queued"):  # only a dead-lettered run can be redriven
            await ductape.job.redrive(run_id)
        with pytest.raises(JobNotFoundError):
            await ductape.job.redrive(f"{rec.job_id}:123")

    run(settings, body)


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


@pytest.mark.e2e
def test_async_scheduled_jobs_run_on_a_real_worker_and_redrive(
    procs: Processes, settings: Settings, r: redis.Redis, env_prefix: str
) -> None:
    procs.worker()

    async def body(ductape: AsyncDuctape) -> None:
        async def status_of(job_id: str, status: JobStatus) -> Any:
            return (got := await ductape.job.get(job_id)).status == status and got

        ok = await ductape.job.schedule(job(input={"userId": "u1"}))
        bad = await ductape.job.schedule(job(event="flaky", retries=0))
        done = await until(lambda: status_of(ok.job_id, JobStatus.COMPLETED), what="echo to complete")
        assert done.result == {"echo": {"userId": "u1"}} and done.attempts == 1
        [ran] = await ductape.job.runs(ok.job_id)
        assert ran.status == RunStatus.COMPLETED and ran.started_ms and ran.finished_ms

        failed = await until(lambda: status_of(bad.job_id, JobStatus.FAILED), what="flaky to fail")
        [dead] = await ductape.job.failed()
        assert dead.run_id == failed.last_run_id and "boom on attempt 1" in (dead.error or "")
        assert await ductape.job.redrive(dead.run_id) == dead.run_id

        async def ran_twice() -> bool:
            return int(r.hget(calls_key("flaky") + ":runs", dead.run_id) or 0) == 2

        await until(ran_twice, what="a second run of the redriven run")
        await until(lambda: status_of(bad.job_id, JobStatus.FAILED), what="flaky to fail again")

    run(settings, body)
    assert [json.loads(c)["input"] for c in r.lrange(calls_key("echo"), 0, -1)] == [{"userId": "u1"}]
