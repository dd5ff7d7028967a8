"""The Redis data model: every read and write of job, run, due-index and dead-letter records.

Only this module (with scripts.py and keys.py) talks to Redis about jobs; the client, the worker
runner and the beat engine call it. Times are passed in, never read here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from ductape_jobs import scripts
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRecord, JobSpec, JobStatus, RunRecord, RunStatus
from ductape_jobs.wire import Message

T = TypeVar("T")


@dataclass(frozen=True)
class NewJob:
    """Everything ``create_job`` writes for one accepted request."""

    job_id: str
    spec: JobSpec
    status: JobStatus
    recurring: bool
    next_run_ms: int | None
    anchor_ms: int
    runs_done: int
    run_id: str | None = None  # a run handed to Celery at once, with its message
    nominal_ms: int | None = None
    message: Message | None = None
    due_ms: int | None = None  # a time for beat to release the job at
    dedupe: bool = False


@dataclass(frozen=True)
class DueEntry:
    """One member of the due index with what beat needs to release it."""

    member: str
    due_ms: int
    job_id: str
    spec_json: str | None
    runs_done: int
    anchor_ms: int
    run_id: str | None = None  # set for a retry entry ``r:<run_id>``


@dataclass(frozen=True)
class Claim:
    """Beat's decision for one due entry, checked and applied atomically by CLAIM_DUE."""

    entry: DueEntry
    run_id: str
    nominal_ms: int
    new_next_ms: int | None
    message: Message


@dataclass(frozen=True)
class Dispatch:
    """What a publisher needs to hand one run to Celery."""

    run_id: str
    spec: JobSpec
    nominal_ms: int


@dataclass(frozen=True)
class Started:
    """The outcome of BEGIN_RUN: ``run`` (go), ``done``, ``skip`` or ``busy``."""

    verdict: str
    attempt: int = 0
    spec: JobSpec | None = None
    nominal_ms: int = 0
    manual: bool = False
    wait_ms: int = 0


class Store:
    """Job, run and schedule records of one deployment in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._create = client.register_script(scripts.CREATE_JOB)
        self._claim = client.register_script(scripts.CLAIM_DUE)
        self._begin = client.register_script(scripts.BEGIN_RUN)
        self._finish = client.register_script(scripts.FINISH_RUN)
        self._change = client.register_script(scripts.CHANGE_STATE)
        self._add_run = client.register_script(scripts.ADD_RUN)
        self._acquire = client.register_script(scripts.ACQUIRE_LOCK)
        self._renew = client.register_script(scripts.RENEW_LOCK)

    # -- producer ---------------------------------------------------------------------------

    def create_jobs(self, jobs: Sequence[NewJob], now_ms: int) -> list[tuple[str, bool]]:
        """Write jobs (each with its first run or due entry) atomically each, in one round trip.

        Returns (job_id, created) per job; created is False when a live recurring job with the
        same fingerprint exists, and job_id is then that job's.
        """
        if not jobs:
            return []
        if len(jobs) == 1:  # one EVALSHA, without the pipeline's SCRIPT EXISTS round trip
            keys, args = self._create_call(jobs[0], now_ms)
            created, job_id = _call(self._create, keys=keys, args=args)
            return [(_text(job_id), bool(created))]
        with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                keys, args = self._create_call(job, now_ms)
                self._create(keys=keys, args=args, client=pipe)
            rows = _guard(pipe.execute)
        return [(_text(job_id), bool(created)) for created, job_id in rows]

    def _create_call(self, job: NewJob, now_ms: int) -> tuple[list[str], list[Any]]:
        k = self.keys
        fp_key = k.fingerprint(job.spec.fingerprint()) if job.dedupe else k.fingerprint("-")
        queue = job.message.queue_key if job.message is not None else k.fingerprint("-")
        keys = [k.job(job.job_id), k.jobs, k.due, queue, k.run(job.run_id or "-"), k.job_runs(job.job_id), fp_key]
        args: list[Any] = [
            job.job_id,
            job.spec.model_dump_json(),
            job.status.value,
            int(job.recurring),
            _opt(job.next_run_ms),
            job.anchor_ms,
            job.runs_done,
            now_ms,
            job.run_id or "",
            _opt(job.nominal_ms),
            _opt(job.due_ms),
            f"j:{job.job_id}",
            int(job.dedupe),
            job.message.payload if job.message is not None else "",
        ]
        return keys, args

    def anchor_ms(self, job_id: str) -> int:
        """A job's phase anchor (its first run time)."""
        got = _guard(lambda: self.redis.hget(self.keys.job(job_id), "anchor_ms"))
        return int(got or 0)

    def events_known(self, product_tag: str, event: str) -> bool:
        """Whether some worker has registered a handler for the pair."""
        return bool(_guard(lambda: self.redis.sismember(self.keys.events, f"{product_tag}/{event}")))

    def known_events(self, product_tag: str) -> list[str]:
        """Events registered by workers for one product."""
        members = _guard(lambda: self.redis.smembers(self.keys.events))
        pairs = sorted(_text(m) for m in members)
        return [p.split("/", 1)[1] for p in pairs if p.startswith(f"{product_tag}/")]

    def register_worker(self, hostname: str, pairs: Sequence[str], envs: Sequence[str], now_ms: int) -> None:
        """Publish the events and envs a worker serves."""
        info = json.dumps({"envs": list(envs), "events": list(pairs), "seen_ms": now_ms})
        with self.redis.pipeline(transaction=True) as pipe:
            if pairs:
                pipe.sadd(self.keys.events, *pairs)
            pipe.hset(self.keys.workers, hostname, info)
            _guard(pipe.execute)

    # -- reads ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job record, or None."""
        raw = _guard(lambda: self.redis.hgetall(self.keys.job(job_id)))
        return _job_record(job_id, raw) if raw else None

    def job_ids(self, newest_first: bool = True, limit: int = 1000) -> list[str]:
        """Job ids by creation time."""
        rng = self.redis.zrevrange if newest_first else self.redis.zrange
        return [_text(m) for m in _guard(lambda: rng(self.keys.jobs, 0, limit - 1))]

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Many job records in one round trip (missing ones left out)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            rows = _guard(pipe.execute)
        return [_job_record(j, raw) for j, raw in zip(job_ids, rows, strict=True) if raw]

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Many run records in one round trip (expired ones left out)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(self.keys.run(run_id))
            rows = _guard(pipe.execute)
        return [_run_record(r, raw) for r, raw in zip(run_ids, rows, strict=True) if raw]

    def recent_run_ids(self, job_id: str, limit: int) -> list[str]:
        """A job's latest run ids, newest first."""
        got = _guard(lambda: self.redis.zrevrange(self.keys.job_runs(job_id), 0, limit - 1))
        return [_text(m) for m in got]

    def dead_run_ids(self, limit: int) -> list[str]:
        """Dead-lettered run ids, newest first."""
        return [_text(m) for m in _guard(lambda: self.redis.zrevrange(self.keys.dead, 0, limit - 1))]

    # -- management -------------------------------------------------------------------------

    def change_state(
        self, action: str, job_id: str, now_ms: int, next_ms: int | None = None, runs_done: int = 0
    ) -> tuple[str, str | None]:
        """Cancel, pause or resume atomically; returns ('ok'|'refused'|'missing', status)."""
        got = _call(
            self._change,
            keys=[self.keys.job(job_id), self.keys.due],
            args=[action, job_id, now_ms, _opt(next_ms), runs_done],
        )
        return _text(got[0]), (_text(got[1]) if len(got) > 1 else None)

    def add_run(
        self, action: str, job_id: str, run_id: str, now_ms: int, message: Message
    ) -> tuple[str, str | None]:
        """Trigger an extra run or redrive a dead one, pushing its message in the same step."""
        k = self.keys
        got = _call(
            self._add_run,
            keys=[k.job(job_id), k.run(run_id), k.job_runs(job_id), message.queue_key, k.dead],
            args=[action, job_id, run_id, now_ms, message.payload],
        )
        return _text(got[0]), (_text(got[1]) if len(got) > 1 else None)

    # -- beat -------------------------------------------------------------------------------

    def acquire_lock(self, instance: str, ttl_ms: int) -> tuple[bool, str]:
        """Become beat leader if nobody is; returns (acquired, token held now)."""
        got = _call(self._acquire, keys=[self.keys.beat_lock, self.keys.beat_fence], args=[instance, ttl_ms])
        return bool(int(got[0])), _text(got[1])

    def renew_lock(self, token: str, ttl_ms: int) -> bool:
        """Extend our leadership; False when the lock is someone else's (or gone)."""
        return bool(_call(self._renew, keys=[self.keys.beat_lock], args=[token, ttl_ms]))

    def release_lock(self, token: str) -> bool:
        """Step down, if we still lead."""
        return bool(_call(self._renew, keys=[self.keys.beat_lock], args=[token, 0]))

    def next_due_ms(self) -> int | None:
        """The earliest due time in the index, or None when it is empty."""
        got = _guard(lambda: self.redis.zrange(self.keys.due, 0, 0, withscores=True))
        return int(got[0][1]) if got else None

    def eviction_policy(self) -> str | None:
        """The server's maxmemory-policy, or None when CONFIG is not allowed."""
        try:
            got = self.redis.config_get("maxmemory-policy")
        except redis.ResponseError:
            return None
        value = got.get("maxmemory-policy") or got.get(b"maxmemory-policy")
        return None if value is None else _text(value)

    def due_entries(self, until_ms: int, limit: int) -> list[DueEntry]:
        """Due-index members with score <= until_ms, with their job state: two round trips."""
        rows = _guard(
            lambda: self.redis.zrangebyscore(self.keys.due, "-inf", until_ms, 0, limit, withscores=True)
        )
        if not rows:
            return []
        members = [(_text(m), int(score)) for m, score in rows]
        with self.redis.pipeline(transaction=False) as pipe:
            for member, _ in members:
                if member.startswith("r:"):
                    pipe.hget(self.keys.run(member[2:]), "job_id")
                else:
                    pipe.hmget(self.keys.job(member[2:]), "spec", "runs_done", "anchor_ms")
            states = _guard(pipe.execute)
        retry_jobs = [_text(state) for (m, _), state in zip(members, states, strict=True) if m.startswith("r:") and state]
        retry_specs = dict(zip(retry_jobs, self._specs(retry_jobs), strict=True))
        entries = []
        for (member, due_ms), state in zip(members, states, strict=True):
            if member.startswith("r:"):
                job_id = _text(state) if state else ""
                spec_json = retry_specs.get(job_id)
                entries.append(DueEntry(member, due_ms, job_id, spec_json, 0, 0, run_id=member[2:]))
            else:
                spec, done, anchor = state
                entries.append(
                    DueEntry(
                        member,
                        due_ms,
                        member[2:],
                        _text(spec) if spec else None,
                        int(done or 0),
                        int(anchor or 0),
                    )
                )
        return entries

    def _specs(self, job_ids: Sequence[str]) -> list[str | None]:
        if not job_ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "spec")
            return [_text(v) if v else None for v in _guard(pipe.execute)]

    def claim(self, fence: str, claims: Sequence[Claim], now_ms: int, runs_kept: int) -> list[Claim] | None:
        """Claim, advance and push messages atomically; returns the claims that held, or None when fenced out."""
        if not claims:
            return []
        args: list[Any] = [self.keys.prefix, fence, now_ms, runs_kept]
        for c in claims:
            args += [
                c.entry.member,
                c.entry.due_ms,
                c.entry.runs_done,
                c.run_id,
                c.nominal_ms,
                _opt(c.new_next_ms),
                c.message.queue_key,
                c.message.payload,
            ]
        got = _call(self._claim, keys=[self.keys.beat_lock, self.keys.due], args=args)
        if got and int(got[0]) == -1:
            return None
        return [claims[int(i) - 1] for i in got]

    def dispatches(self, run_ids: Sequence[str]) -> list[Dispatch]:
        """Load what building a message needs for these runs (two round trips)."""
        if not run_ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.keys.run(run_id), "job_id", "nominal_ms")
            runs = _guard(pipe.execute)
        specs = self._specs([_text(job_id or b"-") for job_id, _ in runs])
        return [
            Dispatch(run_id, JobSpec.model_validate_json(spec), int(nominal))
            for run_id, (job_id, nominal), spec in zip(run_ids, runs, specs, strict=True)
            if job_id and spec
        ]

    def push_messages(self, messages: Sequence[Message]) -> None:
        """Push ready messages onto their queues in one round trip (a deliberate re-send)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for m in messages:
                pipe.lpush(m.queue_key, m.payload)
            _guard(pipe.execute)

    # -- worker -----------------------------------------------------------------------------

    def begin_run(self, run_id: str, job_id: str, now_ms: int, lease_ms: int) -> Started:
        """Mark a run started unless it is finished, cancelled or held by another delivery."""
        got = _call(self._begin, keys=[self.keys.run(run_id), self.keys.job(job_id)], args=[now_ms, lease_ms])
        verdict = _text(got[0])
        if verdict == "busy":
            return Started("busy", wait_ms=int(_text(got[1])))
        if verdict != "run":
            return Started(verdict)
        return Started(
            "run",
            attempt=int(got[1]),
            spec=JobSpec.model_validate_json(got[2]),
            nominal_ms=int(got[3]),
            manual=_text(got[4]) == "1",
        )

    def finish_run(
        self,
        run_id: str,
        job_id: str,
        attempt: int,
        now_ms: int,
        outcome: str,
        *,
        result_json: str = "null",
        error: str = "",
        traceback: str = "",
        cached: bool = False,
        retention_s: int = 86_400,
        due_ms: int | None = None,
    ) -> bool:
        """Record one attempt's outcome; False when a newer attempt owns the run."""
        k = self.keys
        got = _call(
            self._finish,
            keys=[k.run(run_id), k.job(job_id), k.due, k.dead],
            args=[attempt, now_ms, outcome, result_json, error, traceback, int(cached), retention_s, _opt(due_ms), run_id],
        )
        return bool(got)

    def cached_result(self, key: str) -> str | None:
        """A live cached result (JSON), or None."""
        got = _guard(lambda: self.redis.get(key))
        return None if got is None else _text(got)

    def store_result(self, key: str, result_json: str, ttl_ms: int) -> None:
        """Cache a successful result for ttl_ms."""
        _guard(lambda: self.redis.set(key, result_json, px=ttl_ms))

    def scan_keys(self) -> Iterator[str]:
        """Every key under this deployment's prefix (for tests and doctor)."""
        for key in self.redis.scan_iter(match=f"{self.keys.prefix}:*", count=1000):
            yield _text(key)


def _job_record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    f = {_text(k): _text(v) for k, v in raw.items()}
    spec = JobSpec.model_validate_json(f["spec"])
    return JobRecord(
        job_id=job_id,
        spec=spec,
        status=JobStatus(f["status"]),
        recurring=f.get("recurring") == "1",
        next_run_ms=int(f["next_run_ms"]) if f.get("next_run_ms") else None,
        runs_done=int(f.get("runs_done") or 0),
        attempts=int(f.get("attempts") or 0),
        last_run_id=f.get("last_run_id") or None,
        last_error=f.get("last_error") or None,
        result=json.loads(f["result"]) if f.get("result") else None,
        created_ms=int(f["created_ms"]),
        updated_ms=int(f["updated_ms"]),
    )


def _run_record(run_id: str, raw: dict[bytes, bytes]) -> RunRecord:
    f = {_text(k): _text(v) for k, v in raw.items()}
    return RunRecord(
        run_id=run_id,
        job_id=f.get("job_id", ""),
        nominal_ms=int(f.get("nominal_ms") or 0),
        status=RunStatus(f.get("status", "queued")),
        attempts=int(f.get("attempts") or 0),
        queued_ms=_int(f.get("queued_ms")),
        started_ms=_int(f.get("started_ms")),
        finished_ms=_int(f.get("finished_ms")),
        error=f.get("error") or None,
        traceback=f.get("traceback") or None,
        result=json.loads(f["result"]) if f.get("result") else None,
        cached=f.get("cached") == "1",
        manual=f.get("manual") == "1",
    )


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _opt(value: int | None) -> str | int:
    return "" if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _call(script: Any, keys: list[str], args: list[Any]) -> Any:
    return _guard(lambda: script(keys=keys, args=args))


def _guard(fn: Callable[[], T]) -> T:
    """Run one Redis step, turning connection trouble into BackendUnavailableError."""
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailableError(
            f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL and that the server is up"
        ) from None


@contextmanager
def guarded() -> Iterator[None]:
    """Context-manager form of the same translation, for multi-step callers."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailableError(
            f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL and that the server is up"
        ) from None
