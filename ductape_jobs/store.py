"""The Redis data model (sync): every read and write of job, run, due-index and dead-letter records.

Only this module (with ops.py, records.py, scripts.py and keys.py) talks to Redis about jobs; the
client, the worker runner and the beat engine call it. The producer's operations are flows from
ops.py, driven here and, for asyncio, by astore.py; beat's and workers' steps are sync only. Times
are passed in, never read here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis

from ductape_jobs import ops
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRecord, JobSpec, RunRecord
from ductape_jobs.ops import REDIS_DOWN, Batch, Flow, unreachable
from ductape_jobs.records import Claim, Dispatch, DueEntry, InFlight, NewJob, Started, opt, text

__all__ = ["Claim", "Dispatch", "DueEntry", "NewJob", "Started", "Store", "guarded"]
from ductape_jobs.wire import Message, run_id_of

T = TypeVar("T")


class Store:
    """Job, run and schedule records of one deployment in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._scripts = ops.register_scripts(client)
        self._claim, self._begin, self._finish = (
            self._scripts[n] for n in ("CLAIM_DUE", "BEGIN_RUN", "FINISH_RUN")
        )
        self._acquire, self._renew = self._scripts["ACQUIRE_LOCK"], self._scripts["RENEW_LOCK"]

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow from ops.py (or flows.py): send each batch it yields, hand back the replies."""
        try:
            batch = next(flow)
            while True:
                batch = flow.send(self._send(batch))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _send(self, batch: Batch) -> list[Any]:
        with guarded():
            if batch.direct:
                return [ops.issue(self.redis, batch.calls[0], self._scripts)]
            with self.redis.pipeline(transaction=batch.transaction) as pipe:
                for call in batch.calls:
                    ops.issue(pipe, call, self._scripts)
                return pipe.execute()

    # -- producer (the flows in ops.py, for sync callers) -------------------------------------

    def create_jobs(self, jobs: Sequence[NewJob], now_ms: int) -> list[tuple[str, bool]]:
        """Write jobs atomically each, in one round trip; (job_id, created) per job (see ops)."""
        return self.run(ops.create_jobs(self.keys, jobs, now_ms))

    def anchor_ms(self, job_id: str) -> int:
        """A job's phase anchor (its first run time)."""
        return self.run(ops.anchor_ms(self.keys, job_id))

    def events_known(self, product_tag: str, event: str) -> bool:
        """Whether some worker has registered a handler for the pair."""
        return self.run(ops.events_known(self.keys, product_tag, event))

    def known_events(self, product_tag: str) -> list[str]:
        """Events registered by workers for one product."""
        return self.run(ops.known_events(self.keys, product_tag))

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job record, or None."""
        return self.run(ops.get_job(self.keys, job_id))

    def job_ids(self, newest_first: bool = True, limit: int = 1000) -> list[str]:
        """Job ids by creation time."""
        return self.run(ops.job_ids(self.keys, newest_first, limit))

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Many job records in one round trip (missing ones left out)."""
        return self.run(ops.get_jobs(self.keys, job_ids))

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Many run records in one round trip (expired ones left out)."""
        return self.run(ops.get_runs(self.keys, run_ids))

    def recent_run_ids(self, job_id: str, limit: int) -> list[str]:
        """A job's latest run ids, newest first."""
        return self.run(ops.recent_run_ids(self.keys, job_id, limit))

    def dead_run_ids(self, limit: int) -> list[str]:
        """Dead-lettered run ids, newest first."""
        return self.run(ops.dead_run_ids(self.keys, limit))

    def change_state(
        self, action: str, job_id: str, now_ms: int, next_ms: int | None = None, runs_done: int = 0
    ) -> tuple[str, str | None]:
        """Cancel, pause or resume atomically; returns ('ok'|'refused'|'missing', status)."""
        return self.run(ops.change_state(self.keys, action, job_id, now_ms, next_ms, runs_done))

    def add_run(
        self, action: str, job_id: str, run_id: str, now_ms: int, message: Message
    ) -> tuple[str, str | None]:
        """Trigger an extra run or redrive a dead one, pushing its message in the same step."""
        return self.run(ops.add_run(self.keys, action, job_id, run_id, now_ms, message))

    def register_worker(self, hostname: str, pairs: Sequence[str], envs: Sequence[str], now_ms: int) -> None:
        """Publish the events and envs a worker serves."""
        info = json.dumps({"envs": list(envs), "events": list(pairs), "seen_ms": now_ms})
        with self.redis.pipeline(transaction=True) as pipe:
            if pairs:
                pipe.sadd(self.keys.events, *pairs)
            pipe.hset(self.keys.workers, hostname, info)
            _guard(pipe.execute)

    # -- beat -------------------------------------------------------------------------------

    def acquire_lock(self, instance: str, ttl_ms: int) -> tuple[bool, str]:
        """Become beat leader if nobody is; returns (acquired, token held now)."""
        got = _call(self._acquire, keys=[self.keys.beat_lock, self.keys.beat_fence], args=[instance, ttl_ms])
        return bool(int(got[0])), text(got[1])

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
            got: dict[Any, Any] = self.redis.config_get("maxmemory-policy")
        except redis.ResponseError:
            return None
        value = got.get("maxmemory-policy") or got.get(b"maxmemory-policy")
        return None if value is None else text(value)

    def failed_runs(self, job_ids: Sequence[str]) -> list[int | None]:
        """Per job, how many runs failed for good (FINISH_RUN counts them); None for a job that is gone."""
        if not job_ids:
            return []
        with guarded(), self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), "status", "failed_runs")
            rows: list[Any] = pipe.execute()
        return [None if status is None else int(failed or 0) for status, failed in rows]

    def due_entries(self, until_ms: int, limit: int) -> list[DueEntry]:
        """Due-index members with score <= until_ms, with their job state: one round trip."""
        flat = _call(
            self._scripts["READ_DUE"], keys=[self.keys.due], args=[self.keys.prefix, until_ms, limit]
        )
        entries = []
        for i in range(0, len(flat), 6):
            member, score, job_id, spec, done, anchor = (text(v) for v in flat[i : i + 6])
            entries.append(
                DueEntry(
                    member,
                    int(float(score)),
                    job_id,
                    spec or None,
                    int(done or 0),
                    int(anchor or 0),
                    run_id=member[2:] if member.startswith("r:") else None,
                )
            )
        return entries

    def _specs(self, job_ids: Sequence[str]) -> list[str | None]:
        if not job_ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "spec")
            return [text(v) if v else None for v in _guard(pipe.execute)]

    def claim(self, fence: str, claims: Sequence[Claim], now_ms: int, runs_kept: int) -> list[Claim] | None:
        """Claim, advance and push messages atomically; the claims that held, or None when fenced out."""
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
                opt(c.new_next_ms),
                c.message.queue_key,
                c.message.payload,
            ]
        got = _call(self._claim, keys=[self.keys.beat_lock, self.keys.due, self.keys.inflight], args=args)
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
        specs = self._specs([text(job_id or b"-") for job_id, _ in runs])
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

    # -- lost messages (beat) ----------------------------------------------------------------

    def unmoved_runs(self, before_ms: int, limit: int) -> list[InFlight]:
        """In-flight runs that have not moved since before_ms, oldest first, with their state."""
        rows: list[Any] = _guard(
            lambda: self.redis.zrangebyscore(self.keys.inflight, "-inf", before_ms, 0, limit, withscores=True)
        )
        if not rows:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for member, _ in rows:
                pipe.hmget(self.keys.run(text(member)), "status", "attempts", "queued_ms")
            states: list[Any] = _guard(pipe.execute)
        return [
            InFlight(
                text(m),
                int(score),
                None if st is None else text(st),
                text(attempts or b"0"),
                int(queued or 0),
            )
            for (m, score), (st, attempts, queued) in zip(rows, states, strict=True)
        ]

    def head_queued_ms(self, queue_key: str) -> int | None:
        """When the message next out of a queue was pushed: None for an empty queue, 0 when unknown."""
        head = _guard(lambda: self.redis.lindex(queue_key, -1))
        if head is None:
            return None
        try:
            run_id = run_id_of(json.loads(head))
        except ValueError:
            return 0
        if run_id is None:
            return 0
        return int(_guard(lambda: self.redis.hget(self.keys.run(run_id), "queued_ms")) or 0)

    def held_run_ids(self) -> set[str]:
        """Runs whose messages workers hold unacknowledged (kombu's unacked hash)."""
        held: set[str] = set()
        with guarded():
            for _, value in self.redis.hscan_iter(self.keys.broker_unacked, count=500):
                try:
                    run_id = run_id_of(json.loads(value)[0])  # kombu stores [message, exchange, key]
                except (ValueError, LookupError, TypeError):
                    continue
                if run_id is not None:
                    held.add(run_id)
        return held

    def touch_runs(self, run_ids: Sequence[str], now_ms: int) -> None:
        """Look at these runs again later (those still in flight: XX adds none back)."""
        if run_ids:
            _guard(lambda: self.redis.zadd(self.keys.inflight, dict.fromkeys(run_ids, now_ms), xx=True))

    def forget_runs(self, run_ids: Sequence[str]) -> None:
        """Drop finished or vanished runs from the in-flight index."""
        if run_ids:
            _guard(lambda: self.redis.zrem(self.keys.inflight, *run_ids))

    def resend(self, run: InFlight, message: Message, now_ms: int) -> bool:
        """Push a lost run's message again, if the run has not moved since ``run`` was read."""
        keys = [self.keys.run(run.run_id), self.keys.inflight, message.queue_key]
        args = [run.run_id, now_ms, run.status or "", run.attempts, message.payload]
        return bool(_call(self._scripts["RESEND_RUN"], keys=keys, args=args))

    # -- worker -----------------------------------------------------------------------------

    def begin_run(self, run_id: str, job_id: str, now_ms: int, lease_ms: int) -> Started:
        """Mark a run started unless it is finished, cancelled or held by another delivery."""
        keys = [self.keys.run(run_id), self.keys.job(job_id), self.keys.inflight]
        got = _call(self._begin, keys=keys, args=[now_ms, lease_ms, run_id])
        verdict = text(got[0])
        if verdict == "busy":
            return Started("busy", wait_ms=int(text(got[1])))
        if verdict != "run":
            return Started(verdict)
        return Started(
            "run",
            attempt=int(got[1]),
            spec=JobSpec.model_validate_json(got[2]),
            nominal_ms=int(got[3]),
            manual=text(got[4]) == "1",
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
        outcome_args = [outcome, result_json, error, traceback, int(cached)]
        got = _call(
            self._finish,
            keys=[k.run(run_id), k.job(job_id), k.due, k.dead, k.inflight],
            args=[attempt, now_ms, *outcome_args, retention_s, opt(due_ms), run_id],
        )
        return bool(got)

    def cached_result(self, key: str) -> str | None:
        """A live cached result (JSON), or None."""
        got = _guard(lambda: self.redis.get(key))
        return None if got is None else text(got)

    def store_result(self, key: str, result_json: str, ttl_ms: int) -> None:
        """Cache a successful result for ttl_ms."""
        _guard(lambda: self.redis.set(key, result_json, px=ttl_ms))


def _call(script: Any, keys: list[str], args: list[Any]) -> Any:
    return _guard(lambda: script(keys=keys, args=args))


def _guard(fn: Callable[[], T]) -> T:
    """Run one Redis step, turning connection trouble into BackendUnavailableError."""
    with guarded():
        return fn()


@contextmanager
def guarded() -> Iterator[None]:
    """Context-manager form of the same translation, for multi-step callers."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise unreachable(exc) from None
