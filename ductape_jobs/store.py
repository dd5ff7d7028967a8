"""The Redis data model (sync): every read and write of job, run, due-index and dead-letter records.

Every read and write of the data model goes through this module and ops.py (with the scripts of
scripts.py, the keys of keys.py and the values of records.py); the client, the runner, the beat
engine and doctor call them. Only doctor also reads a few keys itself, to diagnose a deployment
(the beat lock's TTL, index and queue lengths, set-aside reasons). The producer's operations are
flows from ops.py, driven here by ``run`` and, for asyncio, by astore.py; beat's and workers'
steps are methods here, sync only. Times are passed in, never read here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import hiredis
import redis

from ductape_jobs import ops
from ductape_jobs.brief import JobBrief
from ductape_jobs.imported import ImportCounts, ImportRow
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobSpec, job_id_of
from ductape_jobs.ops import REDIS_DOWN, Batch, Flow, Stream, unreachable
from ductape_jobs.records import (
    Claim,
    Dispatch,
    DueEntry,
    Finish,
    InFlight,
    Lease,
    Lost,
    Message,
    Retention,
    ScheduleState,
    Started,
    StateAction,
    Swept,
    Unreadable,
    Verdict,
    opt,
    reason,
    run_id_of,
    text,
)
from ductape_jobs.rows import (
    Answered,
    BeginReply,
    ClaimDueHead,
    ClaimDueRow,
    Claimed,
    DueRead,
    FinishRunArgs,
    LockReply,
)

__all__ = [
    "Claim",
    "Dispatch",
    "DueEntry",
    "Retention",
    "Started",
    "Store",
    "Swept",
    "Unreadable",
    "guarded",
]

T = TypeVar("T")
CLAIM_CHUNK = 250  # claims per CLAIM_DUE call: small enough to overlap, large enough to batch
log = logging.getLogger("ductape_jobs.store")


class Store:
    """Job, run and schedule records of one deployment in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, retention: Retention | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.retention = retention or Retention()
        self._scripts = ops.register_scripts(client)
        self._claim, self._begin, self._finish = (
            self._scripts[n] for n in ("CLAIM_DUE", "BEGIN_RUN", "FINISH_RUN")
        )
        self._acquire, self._renew = self._scripts["ACQUIRE_LOCK"], self._scripts["RENEW_LOCK"]
        self._names = {script.sha: name for name, script in self._scripts.items()}  # for logs
        self._local = threading.local()

    def _eval(self, script: Any, keys: list[str], args: list[Any], *, defer: bool = False) -> Any:
        """Run a registered script on this thread's own connection, packed by hiredis and read
        directly: redis-py's per-command layers cost about as much as the round trip on a small
        machine, and workers and beat make these calls on every run. Its retries are kept.

        With ``defer`` the command is sent and its reply left to be read before this thread's
        next command (None is returned): for an idempotent write whose reply nobody waits on.
        """
        held = self._held()
        conn = held.conn
        packed = [hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))]
        # Deferred only once this connection has run the script: a NOSCRIPT reply read later
        # would leave the command undone until this thread's next call.
        defer = defer and script.sha in held.loaded

        def attempt() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return None if defer else conn.read_response()

        with guarded():
            self._settle(held)
            _drop_if_stale(conn)
            try:
                reply = conn.retry.call_with_retry(attempt, lambda _: conn.disconnect())
            except redis.exceptions.NoScriptError:  # a new or restarted server: load, then once more
                # on this thread's own connection: a pool connection would stay open after it
                conn.send_command("SCRIPT", "LOAD", script.script)
                conn.read_response()
                reply = conn.retry.call_with_retry(attempt, lambda _: conn.disconnect())
            except redis.ResponseError:
                raise  # the reply was read whole: the connection is still in step
            except BaseException:
                conn.disconnect()
                raise
            if defer:
                held.pending = (script, packed)
            else:
                held.loaded.add(script.sha)
            return reply

    def _settle(self, held: _Held) -> None:
        """Read the reply a deferred command left on this thread's connection.

        Sent whole before the caller moved on, the command has reached Redis; it is sent again
        only when its reply can't be read (connection trouble) or the server lost its scripts.
        """
        if held.pending is None:
            return
        pending = held.pending
        script, packed = pending
        held.pending = None
        conn = held.conn
        try:
            conn.read_response()
            return
        except redis.exceptions.NoScriptError:
            self.redis.script_load(script.script)
        except redis.ResponseError as exc:
            log.error("a deferred %s failed in Redis: %s", self._names.get(script.sha, "script"), exc)
            return
        except REDIS_DOWN:
            conn.disconnect()
        except BaseException:
            conn.disconnect()
            raise

        def again() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()

        try:
            conn.retry.call_with_retry(again, lambda _: conn.disconnect())
        except REDIS_DOWN:
            # Still unread: kept, so the next call (the worker retries until Redis is back)
            # sends it again rather than forgetting a run's outcome.
            held.pending = pending
            raise

    def _held(self) -> _Held:
        """This thread's connection (taken from the pool once, so ``close()`` still ends it)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():  # new thread, or a forked pool child
            pool = self.redis.connection_pool
            held = _Held(os.getpid(), pool.get_connection())
            # When its thread (or greenlet) ends, the connection goes back to the pool, closed, so
            # a reply still unread there can never reach the connection's next user.
            weakref.finalize(held, _give_back, pool, held.conn)
            self._local.held = held
        return held

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow from ops.py (or flows.py): send each batch it yields, hand back the replies."""
        try:
            batch = next(flow)
            while True:
                replies = self._stream(batch) if isinstance(batch, Stream) else self._send(batch)
                batch = flow.send(replies)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _stream(self, stream: Stream) -> list[Any]:
        """Send each script call as soon as it is built, then read all replies: one round trip,
        with the server running each call while the client builds the next."""
        pool = self.redis.connection_pool
        sent: list[tuple[str, tuple[Any, ...]]] = []  # (script name, command)
        replies: list[Any] = []
        with guarded():
            conn: Any = pool.get_connection()  # redis-py's Connection: its send/read calls are untyped
            try:
                for call in stream.calls:
                    script = self._scripts[call.script]
                    command = ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
                    conn.send_packed_command([hiredis.pack_command(command)], check_health=False)
                    sent.append((call.script, command))
                for _ in sent:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:  # the rest are read, so the connection stays in step
                        replies.append(exc)
            except BaseException:
                conn.disconnect()  # a half-sent or half-read stream leaves the connection unusable
                raise
            finally:
                pool.release(conn)
            for at, reply in enumerate(replies):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    # The server lost its script cache (a restart): nothing of this call ran.
                    name, command = sent[at]
                    self.redis.script_load(self._scripts[name].script)
                    replies[at] = cast(Any, self.redis).execute_command(*command)
                elif isinstance(reply, redis.ResponseError):
                    raise reply
        return replies

    def _send(self, batch: Batch) -> list[Any]:
        with guarded():
            if batch.direct:
                return [ops.issue(self.redis, batch.calls[0], self._scripts)]
            with self.redis.pipeline(transaction=batch.transaction) as pipe:
                for call in batch.calls:
                    ops.issue(pipe, call, self._scripts)
                return pipe.execute()

    # -- producer and worker ------------------------------------------------------------------

    def change_state(
        self, action: StateAction, job_id: str, now_ms: int, next_ms: int | None = None, runs_done: int = 0
    ) -> Answered:
        """Cancel, pause, resume or set aside atomically (ops.change_state, with this store's
        retention); the answer and the status it saw."""
        flow = ops.change_state(
            self.keys, action, job_id, now_ms, next_ms, runs_done, job_retention_s=self.retention.job_s
        )
        return self.run(flow)

    def register_worker(self, hostname: str, pairs: Sequence[str], envs: Sequence[str], now_ms: int) -> None:
        """Publish the events and envs a worker serves."""
        info = json.dumps({"envs": list(envs), "events": list(pairs), "seen_ms": now_ms})
        with self.redis.pipeline(transaction=True) as pipe:
            if pairs:
                pipe.sadd(self.keys.events, *pairs)
            pipe.hset(self.keys.workers, hostname, info)
            _guard(pipe.execute)

    def forget_workers(self, unseen_since_ms: int) -> int:
        """Drop registrations of workers not seen since then (hostnames of replaced containers
        would otherwise pile up); returns how many went."""
        # An entry that can't be read can't tell when its worker was seen, so it goes too.
        gone = [
            name
            for name, entry in self.run(ops.workers(self.keys)).items()
            if entry is None or entry.seen_ms < unseen_since_ms
        ]
        if gone:
            self.redis.hdel(self.keys.workers, *gone)
        return len(gone)

    # -- beat -------------------------------------------------------------------------------

    def acquire_lock(self, instance: str, ttl_ms: int) -> tuple[bool, str]:
        """Become beat leader if nobody is; returns (acquired, token held now)."""
        got = self._eval(
            self._acquire, keys=[self.keys.beat_lock, self.keys.beat_fence], args=[instance, ttl_ms]
        )
        return LockReply.from_reply(got)

    def renew_lock(self, token: str, ttl_ms: int) -> bool:
        """Extend our leadership; False when the lock is someone else's (or gone)."""
        return bool(self._eval(self._renew, keys=[self.keys.beat_lock], args=[token, ttl_ms]))

    def release_lock(self, token: str) -> bool:
        """Step down, if we still lead."""
        return bool(self._eval(self._renew, keys=[self.keys.beat_lock], args=[token, 0]))

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

    def schedule_states(self, job_ids: Sequence[str]) -> list[ScheduleState | None]:
        """Per job, its status, failed runs (FINISH_RUN counts them), last change and skipped slots
        (CLAIM_DUE counts them), in one round trip; None for a job that is gone."""
        if not job_ids:
            return []
        with guarded(), self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), "status", "failed_runs", "updated_ms", "skipped_slots")
            rows: list[Any] = pipe.execute()
        return [
            None
            if status is None
            else ScheduleState(text(status), int(failed or 0), int(updated or 0), int(skipped or 0))
            for status, failed, updated, skipped in rows
        ]

    def due_entries(self, until_ms: int, limit: int) -> list[DueEntry]:
        """Due-index members with score <= until_ms, with their job state: one round trip."""
        got = self._eval(
            self._scripts["READ_DUE"], keys=[self.keys.due], args=[self.keys.prefix, until_ms, limit]
        )
        return [
            DueEntry(
                e.member,
                e.due_ms,
                e.job_id,
                e.brief or None,
                e.runs_done,
                e.anchor_ms,
                run_id=e.member[2:] if e.member.startswith("r:") else None,
                version=e.version,
            )
            for e in DueRead.from_reply(got)
        ]

    def _briefs(self, job_ids: Sequence[str]) -> list[str | None]:
        """Each job's stored brief (``spec:`` and its spec for a record older than briefs)."""
        if not job_ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "brief")
            briefs = _guard(pipe.execute)
        older = [at for at, brief in enumerate(briefs) if not brief]
        with self.redis.pipeline(transaction=False) as pipe:
            for at in older:
                pipe.hget(self.keys.job(job_ids[at]), "spec")
            for at, spec in zip(older, _guard(pipe.execute) if older else [], strict=True):
                briefs[at] = b"spec:" + spec if spec else None
        return [text(v) if v else None for v in briefs]

    def sync_imported(
        self, fence: str, app: str, rows: Sequence[ImportRow], now_ms: int
    ) -> ImportCounts | None:
        """Make app's imported beat_schedule jobs the ones ``rows`` lists, in one SYNC_IMPORTED
        step fenced by the leader's token; what it did, or None when fenced out."""
        k = self.keys
        keys = [k.beat_lock, k.imported(app), k.due, k.jobs, k.retired, k.set_aside]
        args: list[Any] = [k.prefix, fence, now_ms, self.retention.job_s]
        for row in rows:
            args += [row.job_id, row.digest, row.spec_json, row.brief_json, row.next_run_ms, row.anchor_ms]
        got = [int(v) for v in self._eval(self._scripts["SYNC_IMPORTED"], keys=keys, args=args)]
        return None if got == [-1] else ImportCounts(*got)

    def claim(self, fence: str, claims: Iterable[Claim], now_ms: int, runs_kept: int) -> list[Claim] | None:
        """Claim, advance and push messages atomically, in CLAIM_DUE calls of ``CLAIM_CHUNK``
        claims streamed in one round trip: each call goes out as soon as its claims are decided
        (``claims`` may be lazy), so the server runs one while beat decides the next. The claims
        that held, or None when fenced out (a call refused by the fence claims nothing)."""
        chunks: list[list[Claim]] = []
        k = self.keys
        touched = [k.beat_lock, k.due, k.inflight, k.dead, k.set_aside]

        head = ClaimDueHead(self.keys.prefix, fence, now_ms, runs_kept, *self._ttls)

        def calls() -> Iterator[ops.Eval]:
            for chunk in ops.batched(claims, CLAIM_CHUNK):
                chunks.append(chunk)
                args: list[Any] = [*head]
                for c in chunk:
                    args += ClaimDueRow(
                        c.entry.member,
                        c.entry.due_ms,
                        c.entry.runs_done,
                        c.run_id,
                        c.nominal_ms,
                        opt(c.new_next_ms),
                        c.reason if c.message is None else c.message.queue_key,
                        "" if c.message is None else c.message.payload,
                        c.overlap,
                        opt(c.skip_next_ms),
                        c.entry.version,
                    )
                yield ops.Eval("CLAIM_DUE", touched, args)

        replies = [Claimed.from_reply(got) for got in self._stream(Stream(calls()))]
        if any(got.fenced for got in replies):
            return None
        return [chunk[i] for chunk, got in zip(chunks, replies, strict=True) for i in got.indexes]

    def dispatches(self, run_ids: Sequence[str]) -> list[Dispatch | Unreadable]:
        """Load what building a message needs for these runs (two round trips): the job's brief,
        never its input. A run whose job is gone is left out; one whose brief can't be read
        comes back as ``Unreadable``."""
        if not run_ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.keys.run(run_id), "job_id", "nominal_ms")
            runs = _guard(pipe.execute)
        briefs = self._briefs([text(job_id or b"-") for job_id, _ in runs])
        out: list[Dispatch | Unreadable] = []
        for run_id, (job_id, nominal), brief in zip(run_ids, runs, briefs, strict=True):
            if not job_id or not brief:
                continue
            try:
                out.append(Dispatch(run_id, JobBrief.read(brief), int(nominal or 0)))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                out.append(Unreadable(text(job_id), reason("could not read this job's record", exc), run_id))
        return out

    def set_aside_run(self, run: InFlight, job_id: str, why: str, now_ms: int) -> bool:
        """Take an in-flight run whose job can't be read out of flight, unless it moved since
        ``run`` was read: the run is dead-lettered and its job failed with the reason, retired and
        listed as set aside (CHANGE_STATE). False when it had moved."""
        k = self.keys
        keys = [k.run(run.run_id), k.inflight, k.dead, k.job(job_id)]
        args = [run.run_id, run.moved_ms, why, now_ms, self.retention.dead_s]
        if not self._eval(self._scripts["SET_ASIDE_RUN"], keys=keys, args=args):
            return False
        self.change_state("set_aside", job_id, now_ms)
        return True

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
                pipe.hmget(self.keys.run(text(member)), "status", "attempts", "queued_ms", "lease_ms")
            states: list[Any] = _guard(pipe.execute)
        return [
            InFlight(
                text(m),
                int(score),
                None if st is None else text(st),
                text(attempts or b"0"),
                int(queued or 0),
                int(lease or 0),
            )
            for (m, score), (st, attempts, queued, lease) in zip(rows, states, strict=True)
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

    def held_run_ids(self, since_ms: int) -> set[str]:
        """Runs whose messages workers hold unacknowledged (kombu's unacked hash), taken since
        ``since_ms`` (its unacked index). One held longer should have been put back by kombu's
        restore long ago: it is stuck (its index entry gone, the restore blocked), not held."""
        held: set[str] = set()
        with guarded():
            fresh = set(self.redis.zrangebyscore(self.keys.broker_unacked_index, since_ms / 1000, "+inf"))
            for tag, value in self.redis.hscan_iter(self.keys.broker_unacked, count=500):
                if tag not in fresh:
                    continue
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

    def forget_runs(self, runs: Sequence[InFlight]) -> int:
        """Drop finished or vanished runs from the in-flight index, each unless it moved since read."""
        if not runs:
            return 0
        args = [value for run in runs for value in (run.run_id, run.moved_ms)]
        return int(self._eval(self._scripts["FORGET_RUNS"], keys=[self.keys.inflight], args=args))

    def resend(self, run: InFlight, message: Message, now_ms: int) -> bool:
        """Push a lost run's message again, if the run has not moved since ``run`` was read."""
        keys = [self.keys.run(run.run_id), self.keys.inflight, message.queue_key]
        args = [run.run_id, now_ms, run.status or "", run.attempts, message.payload]
        return bool(self._eval(self._scripts["RESEND_RUN"], keys=keys, args=args))

    # -- worker -----------------------------------------------------------------------------

    def begin_run(self, run_id: str, job_id: str, now_ms: int, lease_ms: int, owner: str) -> Started:
        """Mark a run started by delivery ``owner`` unless it is finished, cancelled or held by
        another delivery; a run whose lease ran out has lost that attempt (dead-lettered after
        its last)."""
        keys = [self.keys.run(run_id), self.keys.job(job_id), self.keys.inflight, self.keys.dead]
        args = [now_ms, lease_ms, run_id, owner, self.keys.prefix, *self._ttls]
        got = BeginReply.from_reply(self._eval(self._begin, keys=keys, args=args))
        if got.verdict == "gone":  # its record vanished while it was out: say so, then skip it
            self.runs_gone([run_id], now_ms)
            return Started(Verdict.SKIP)
        verdict = Verdict(got.verdict)
        if verdict == Verdict.BUSY:
            return Started(verdict, wait_ms=got.wait_ms)
        if verdict != Verdict.RUN:
            return Started(verdict)
        started = Started(verdict, attempt=got.attempt, nominal_ms=got.nominal_ms, manual=got.manual)
        try:
            return replace(started, spec=JobSpec.model_validate_json(got.spec))
        except ValueError as exc:  # pydantic's ValidationError too: the runner sets the run aside
            return replace(started, unreadable=reason("this worker could not read the job's spec", exc))

    def renew_run(self, run_id: str, owner: str, now_ms: int, lease_ms: int) -> Lease:
        """Heartbeat: extend the lease of ``owner``'s running attempt. 'held', 'cancelled' (still
        theirs, and cancelled: the handler is told) or 'lost' (not theirs any more)."""
        keys = [self.keys.run(run_id), self.keys.inflight]
        got = self._eval(self._scripts["RENEW_RUN"], keys=keys, args=[owner, now_ms, lease_ms, run_id])
        return list(Lease)[int(got)]

    def lose_run(self, run_id: str, owner_prefix: str, reason: str, now_ms: int) -> Lost:
        """Count the attempt of a process that died (or was killed) running it."""
        k = self.keys
        keys = [k.run(run_id), k.job(job_id_of(run_id)), k.dead, k.inflight]
        args = [run_id, owner_prefix, reason, now_ms, k.prefix, *self._ttls]
        return Lost(text(self._eval(self._scripts["LOSE_RUN"], keys=keys, args=args)))

    def unread(self) -> Callable[[], bool]:
        """Whether the command this thread last sent without waiting is still unread (its reply
        is read before the thread's next command; an idle thread leaves it unread)."""
        held = self._held()
        mark = held.pending
        return lambda: mark is not None and held.pending is mark

    def settle(self) -> None:
        """Make sure this thread's outcome sent without waiting has reached Redis (sent again if
        its reply can't be read); raises BackendUnavailableError while Redis is down."""
        held = self._held()
        with guarded():
            self._settle(held)

    def finish_run(
        self,
        run_id: str,
        job_id: str,
        attempt: int,
        now_ms: int,
        outcome: Finish,
        *,
        result_json: str = "null",
        error: str = "",
        traceback: str = "",
        cached: bool = False,
        retention_s: int = 86_400,
        due_ms: int | None = None,
        wait: bool = True,
    ) -> bool:
        """Record one attempt's outcome; False when a newer attempt owns the run.

        ``wait=False`` sends it without waiting for the reply (True is returned): a worker's run
        is recorded by the time its Celery ack is sent, one round trip sooner. Only for
        'completed', which is safe to send twice should the reply be lost.
        """
        if not wait and outcome != "completed":
            raise ValueError("only a 'completed' outcome is sent without waiting")
        k = self.keys
        args = FinishRunArgs(
            attempt,
            now_ms,
            outcome,
            result_json,
            error,
            traceback,
            int(cached),
            retention_s,
            opt(due_ms),
            run_id,
            k.prefix,
            *self._ttls,
        )
        got = self._eval(
            self._finish,
            keys=[k.run(run_id), k.job(job_id), k.due, k.dead, k.inflight],
            args=list(args),
            defer=not wait,
        )
        return not wait or bool(got)

    # -- lifecycle (the sweep and the counters of what left; README "Sizing Redis") ----------

    @property
    def _ttls(self) -> tuple[int, int]:
        return self.retention.job_s, self.retention.dead_s

    def runs_gone(self, run_ids: Sequence[str], now_ms: int) -> list[str]:
        """Of these runs, those whose record vanished while their job is still here: each is
        counted (``runs_vanished``), logged, and recorded as a dead letter saying so."""
        gone = [
            run_id
            for run_id in run_ids
            if self._eval(self._scripts["RUN_GONE"], [], [self.keys.prefix, run_id, now_ms, *self._ttls])
        ]
        if gone:
            log.warning(
                "%d run record(s) vanished from Redis (evicted, or deleted by hand?): %s; their one-off "
                "jobs are marked failed and the runs are dead letters (ductape-jobs failed, doctor)",
                len(gone),
                ", ".join(gone[:5]),
            )
        return gone

    def sweep(self, now_ms: int, limit: int, cursor: int) -> Swept:
        """Remove finished jobs past their retention and dead letters past theirs or beyond the
        cap, and check ``limit`` entries of the jobs index from ``cursor`` (one bounded script)."""
        k, r = self.keys, self.retention
        got = self._eval(
            self._scripts["SWEEP"],
            [k.retired, k.dead, k.jobs, k.stats],
            [k.prefix, now_ms, limit, cursor, r.job_s, r.dead_s, r.dead_max],
        )
        return Swept(*(int(v) for v in got))

    def counters(self) -> dict[str, int]:
        """The lifecycle counters (``jobs_expired``, ``dead_dropped``, ``due_vanished``, ...)."""
        got: dict[Any, Any] = _guard(lambda: self.redis.hgetall(self.keys.stats))
        return {text(name): int(value) for name, value in got.items()}

    def memory(self) -> tuple[int, int] | None:
        """The server's used_memory and maxmemory in bytes (0: no limit); None when INFO is not allowed."""
        try:
            info: dict[str, Any] = _guard(lambda: self.redis.info("memory"))
        except redis.ResponseError:
            return None
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    def cached_result(self, key: str) -> str | None:
        """A live cached result (JSON), or None."""
        got = _guard(lambda: self.redis.get(key))
        return None if got is None else text(got)

    def store_result(self, key: str, result_json: str, ttl_ms: int) -> None:
        """Cache a successful result for ttl_ms."""
        _guard(lambda: self.redis.set(key, result_json, px=ttl_ms))


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


@dataclass
class _Held:
    """One thread's own connection, the scripts its server is known to hold, and the deferred
    command whose reply is still to be read."""

    pid: int
    conn: Any  # redis-py's Connection: its send/read calls are untyped
    pending: tuple[Any, list[bytes]] | None = None
    loaded: set[str] = field(default_factory=set)  # shas run on this connection since it connected

    def __post_init__(self) -> None:
        self.conn.register_connect_callback(self.on_connect)  # kept weakly: a method of ours

    def on_connect(self, _: Any) -> None:
        """A new connection may be to a restarted server, which has lost its scripts."""
        self.loaded.clear()


def _give_back(pool: Any, conn: Any) -> None:
    conn.disconnect()
    pool.release(conn)


def _drop_if_stale(conn: Any) -> None:
    """Disconnect a connection with something to read though nothing is owed: the server closed
    it (restarted) while it sat idle. The next send reconnects, as redis-py's pool does."""
    try:
        if conn.can_read(timeout=0):
            conn.disconnect()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()
