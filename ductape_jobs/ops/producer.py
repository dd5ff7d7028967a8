"""The producer's operations (the client, sync and asyncio, through flows.py): creating,
reading, changing and cancelling jobs and runs. CHANGE_STATE serves the worker too (a job whose
spec it can't read is set aside) and beat (a run whose job can't be read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ductape_jobs import jobfields, scripts
from ductape_jobs.keys import Keys
from ductape_jobs.ops.core import Call, Eval, Flow, Stream, batched, one, send
from ductape_jobs.records import (
    Answer,
    Current,
    Message,
    NewJob,
    RunAction,
    SetAside,
    StateAction,
    Unreadable,
    Update,
    WorkerEntry,
    opt,
    read_job,
    run_record,
    text,
    worker_entry,
)
from ductape_jobs.rows import (
    Answered,
    Backfilled,
    BackfillHead,
    BackfillRow,
    CreateJobsHead,
    CreateJobsRow,
    TwinFound,
    UpdateJobArgs,
)
from ductape_jobs.terms import JobSpec

if TYPE_CHECKING:  # records are read back as these in the producer, never in beat (pydantic)
    from ductape_jobs.models import JobRecord, RunRecord


def create_jobs(keys: Keys, jobs: Sequence[NewJob], now_ms: int) -> Flow[list[tuple[str, bool]]]:
    """Write jobs (each with its first run or due entry) in one round trip.

    Returns (job_id, created) per job; created is False when a live recurring job with the
    same fingerprint exists (or comes earlier in the batch), and job_id is then that job's.
    """
    twins = dict((yield from create_rows(keys, (create_row(keys, job) for job in jobs), now_ms)))
    return [(twins[i], False) if i in twins else (job.job_id, True) for i, job in enumerate(jobs)]


def create_rows(keys: Keys, rows: Iterable[CreateJobsRow], now_ms: int) -> Flow[list[TwinFound]]:
    """Write jobs given as CREATE_JOBS rows, streamed in calls of ``scripts.CREATE_BATCH`` jobs,
    each call atomic and on one shard (the rows are grouped by their job's shard). Rows are
    built as the calls go out.

    Returns (index, twin_job_id) for each job not written because a live recurring job with the
    same fingerprint exists (or comes earlier in the batch).
    """
    placed: list[list[int]] = []  # per call, the batch index of each of its rows

    def call(k: Keys, chunk: list[tuple[int, CreateJobsRow]]) -> Eval:
        placed.append([at for at, _ in chunk])
        args: list[Any] = [*CreateJobsHead(k.space, now_ms)]
        for _, row in chunk:
            args += row
        return Eval("CREATE_JOBS", [k.jobs, k.due, k.inflight], args)

    def calls() -> Iterator[Eval]:
        if keys.shards == 1:
            for chunk in batched(enumerate(rows), scripts.CREATE_BATCH):
                yield call(keys, chunk)
            return
        pending: dict[int, list[tuple[int, CreateJobsRow]]] = {}
        for at, row in enumerate(rows):
            shard = keys.shard_of(row.job_id)
            group = pending.setdefault(shard, [])
            group.append((at, row))
            if len(group) == scripts.CREATE_BATCH:
                yield call(keys.for_shard(shard), pending.pop(shard))
        for shard, group in sorted(pending.items()):
            yield call(keys.for_shard(shard), group)

    replies = yield Stream(calls())
    return [
        TwinFound(placed[n][twin.at], twin.job_id)
        for n, reply in enumerate(replies)
        for twin in TwinFound.from_reply(reply)
    ]


def create_row(keys: Keys, job: NewJob, traceparent: str | None = None) -> CreateJobsRow:
    """One job's CREATE_JOBS row; ``traceparent``: the span that schedules it, kept in its brief
    (ductape_jobs.tracing)."""
    message, k = job.message, keys.of_job(job.job_id)
    return CreateJobsRow(
        job_id=job.job_id,
        spec=jobfields.pack_spec(job.spec, traceparent),
        status=job.status.value,
        recurring=int(job.recurring),
        next_run_ms=opt(job.next_run_ms),
        anchor_ms=job.anchor_ms,
        runs_done=job.runs_done,
        run_id=job.run_id or "",
        nominal_ms=opt(job.nominal_ms),
        due_ms=opt(job.due_ms),
        fp_keys=_fingerprints(k, job) if job.dedupe else "",
        queue_key="" if message is None else message.queue_key,
        message="" if message is None else message.payload,
        # the idempotency index entry and its TTL (ms); '' = none
        idem_key="" if job.spec.idempotency_key is None else k.idempotency(job.spec.idempotency_key),
        idem_ttl_ms=job.idempotency_ttl_ms or "",
        traceparent="" if message is None else message.traceparent,
    )


def _fingerprints(k: Keys, job: NewJob) -> str:
    """The job's fingerprint key, then its twins' under older session keys, one per line.

    A keyed job's identity is its key: its key index entry stands in for the fingerprint, with
    the same lifecycle (written with the job, deleted when it retires or leaves)."""
    if job.spec.key is not None:
        return k.key_index(job.spec.key)
    older = (dataclasses.replace(job.spec, input_digest=d) for d in job.older_digests)
    return "\n".join(k.fingerprint(spec.fingerprint()) for spec in (job.spec, *older))


def anchor_ms(keys: Keys, job_id: str) -> Flow[int]:
    """A job's phase anchor (its first run time)."""
    return int((yield from one(Call("hget", (keys.job(job_id), "anchor_ms")))) or 0)


def events_known(keys: Keys, product_tag: str, event: str) -> Flow[bool]:
    """Whether some worker has registered a handler for the pair."""
    return bool((yield from one(Call("sismember", (keys.events, f"{product_tag}/{event}")))))


def known_events(keys: Keys, product_tag: str) -> Flow[list[str]]:
    """Events registered by workers for one product."""
    pairs = sorted(text(m) for m in (yield from one(Call("smembers", (keys.events,)))))
    return [p.split("/", 1)[1] for p in pairs if p.startswith(f"{product_tag}/")]


def workers(keys: Keys) -> Flow[dict[str, WorkerEntry | None]]:
    """Every registered worker by hostname, as published (None for an entry that can't be read)."""
    got = yield from one(Call("hgetall", (keys.workers,)))
    return {text(name): worker_entry(name, raw) for name, raw in got.items()}


def get_job(keys: Keys, job_id: str) -> Flow[JobRecord | Unreadable | None]:
    """The job record (Unreadable with the reason when it can't be read), or None."""
    raw = yield from one(Call("hgetall", (keys.job(job_id),)))
    return read_job(job_id, raw) if raw else None


def job_ids(keys: Keys, newest_first: bool = True, limit: int = 1000) -> Flow[list[str]]:
    """Job ids by creation time (the first ``limit`` over every shard)."""
    return [m for m, _ in (yield from _newest(keys, "jobs", limit, newest_first))]


def _newest(
    keys: Keys, index: str, limit: int, newest_first: bool = True, scores: bool = False
) -> Flow[list[tuple[str, float]]]:
    """The first ``limit`` members of a per-shard index (``jobs``, ``dead``, ``set_aside``) by
    score over every shard (one round trip), with their scores when asked (or merged)."""
    command = "zrevrange" if newest_first else "zrange"
    scores = scores or keys.shards > 1
    kwargs = {"withscores": True} if scores else {}
    got = yield from send(
        *(Call(command, (getattr(k, index), 0, limit - 1), kwargs) for k in keys.every_shard())
    )
    if not scores:
        return [(text(m), 0.0) for rows in got for m in rows]
    merged = [(text(m), float(score)) for rows in got for m, score in rows]
    merged.sort(key=lambda row: row[1], reverse=newest_first)
    return merged[:limit]


def get_jobs(keys: Keys, ids: Sequence[str]) -> Flow[list[JobRecord | Unreadable]]:
    """Many job records in one round trip (missing ones left out, unreadable ones as Unreadable)."""
    rows = yield from send(*(Call("hgetall", (keys.job(job_id),)) for job_id in ids))
    return [read_job(j, raw) for j, raw in zip(ids, rows, strict=True) if raw]


def set_aside(keys: Keys, limit: int) -> Flow[list[SetAside]]:
    """The jobs beat set aside, newest first, with when and why (gone ones left out)."""
    rows = yield from _newest(keys, "set_aside", limit, scores=True)
    errors = yield from send(*(Call("hget", (keys.job(m), "last_error")) for m, _ in rows))
    return [
        SetAside(m, int(at), text(error))
        for (m, at), error in zip(rows, errors, strict=True)
        if error is not None
    ]


def get_runs(keys: Keys, run_ids: Sequence[str]) -> Flow[list[RunRecord]]:
    """Many run records in one round trip (expired ones left out)."""
    rows = yield from send(*(Call("hgetall", (keys.run(run_id),)) for run_id in run_ids))
    return [run_record(r, raw) for r, raw in zip(run_ids, rows, strict=True) if raw]


def recent_run_ids(keys: Keys, job_id: str, limit: int) -> Flow[list[str]]:
    """A job's latest run ids, newest first."""
    return [text(m) for m in (yield from one(Call("zrevrange", (keys.job_runs(job_id), 0, limit - 1))))]


def dead_run_ids(keys: Keys, limit: int) -> Flow[list[str]]:
    """Dead-lettered run ids, newest first."""
    return [m for m, _ in (yield from _newest(keys, "dead", limit))]


def change_state(
    keys: Keys,
    action: StateAction,
    job_id: str,
    now_ms: int,
    next_ms: int | None = None,
    runs_done: int = 0,
    *,
    job_retention_s: int,
) -> Flow[Answered]:
    """Cancel, pause, resume or set aside atomically; the answer and the status it saw.
    A job this finishes leaves after ``job_retention_s``."""
    got = yield from one(_change_state(keys, action, job_id, now_ms, next_ms, runs_done, job_retention_s))
    return Answered(Answer.OK, None) if text(got[0]) == "ok" else Answered.from_reply(got)


def cancel_job(
    keys: Keys, job_id: str, now_ms: int, *, terminate: bool, job_retention_s: int
) -> Flow[tuple[Answer, str | None, list[str]]]:
    """Cancel a job and its running runs (``terminate``: they end at once; see scripts._CANCEL);
    the answer, the status it saw, and the running runs' ids, for Celery's revoke."""
    call = _change_state(keys, "cancel", job_id, now_ms, None, 0, job_retention_s, terminate)
    got = yield from one(call)
    if text(got[0]) != "ok":
        return (*Answered.from_reply(got), [])
    return Answer.OK, None, [text(run_id) for run_id in got[1:]]


def _change_state(
    keys: Keys,
    action: StateAction,
    job_id: str,
    now_ms: int,
    next_ms: int | None,
    runs_done: int,
    job_retention_s: int,
    terminate: bool = False,
) -> Eval:
    k = keys.of_job(job_id)
    args = [action, job_id, now_ms, opt(next_ms), runs_done, k.space, job_retention_s, _flag(terminate)]
    return Eval("CHANGE_STATE", [k.job(job_id), k.due, k.set_aside], args)


def cancel_run(
    keys: Keys, run_id: str, now_ms: int, *, terminate: bool, job_retention_s: int
) -> Flow[Answered]:
    """Cancel one run (scripts.CANCEL_RUN): OK with the status it had, REFUSED with its finished
    status, or MISSING."""
    args = [keys.of_run(run_id).space, run_id, now_ms, _flag(terminate), job_retention_s]
    return Answered.from_reply((yield from one(Eval("CANCEL_RUN", [keys.run(run_id)], args))))


def _flag(value: bool) -> str:
    return "1" if value else ""


def add_run(
    keys: Keys, action: RunAction, job_id: str, run_id: str, now_ms: int, message: Message, *, runs_kept: int
) -> Flow[Answered]:
    """Trigger an extra run or redrive a dead one, pushing its message in the same step
    (a trigger trims the job's run records to ``runs_kept``)."""
    k = keys.of_job(job_id)
    touched = [k.job(job_id), k.run(run_id), k.job_runs(job_id), message.queue_key, k.dead, k.inflight]
    args = [action, job_id, run_id, now_ms, message.payload, k.space, runs_kept]
    return Answered.from_reply((yield from one(Eval("ADD_RUN", touched, args))))


def backfill(
    keys: Keys, job_id: str, slots: Sequence[tuple[str, int, Message]], now_ms: int, *, runs_kept: int
) -> Flow[Backfilled]:
    """Add the runs of past slots (run id, nominal time, message) that the job does not know yet,
    with their messages, in one step; the answer, the status it saw, and the run ids added."""
    k = keys.of_job(job_id)
    args: list[Any] = [*BackfillHead(job_id, now_ms, k.space, runs_kept)]
    for run_id, nominal_ms, message in slots:
        args += BackfillRow(run_id, nominal_ms, message.queue_key, message.payload)
    touched = [k.job(job_id), k.job_runs(job_id), k.inflight]
    return Backfilled.from_reply((yield from one(Eval("BACKFILL", touched, args))))


def current_job(keys: Keys, job_id: str) -> Flow[Current | Unreadable | None]:
    """A job as an update reads it (one round trip), or None; Unreadable when it can't be read."""
    raw, latest = yield from send(
        Call("hgetall", (keys.job(job_id),)),
        Call("zrevrange", (keys.job_runs(job_id), 0, 0), {"withscores": True}),
    )
    if not raw:
        return None
    job = read_job(job_id, raw)
    if isinstance(job, Unreadable):
        return job
    # The newest run by slot is the latest released (a triggered run's slot is when it was
    # triggered: taken as released too, which only ever moves the bound later).
    last = int(latest[0][1]) if latest else None
    return Current(job, int(raw.get(b"anchor_ms") or 0), job.version, last, text(raw.get(b"fp") or b""))


def update_job(
    keys: Keys,
    current: Current,
    update: Update,
    fp_key: str,
    now_ms: int,
    *,
    job_retention_s: int,
    traceparent: str | None = None,
) -> Flow[Answered]:
    """Write an update if the job is as ``current`` read it: the answer (``moved`` when it
    changed since) and the status it saw. A schedule the update leaves nothing to run completes
    and retires. ``traceparent``: the span updating it, which its later runs link to (tracing)."""
    job, spec = current.job, update.spec
    k = keys.of_job(job.job_id)
    args = UpdateJobArgs(
        job_id=job.job_id,
        now_ms=now_ms,
        version=current.version,
        runs_done=job.runs_done,
        status=job.status.value,
        spec=jobfields.pack_spec(spec, traceparent),
        next_run_ms=opt(update.next_run_ms),
        anchor_ms=update.anchor_ms,
        fp=fp_key,
        prefix=k.space,
        job_retention_s=job_retention_s,
    )
    got = yield from one(Eval("UPDATE_JOB", [k.job(job.job_id), k.due], list(args)))
    return Answered.from_reply(got)


def identity_key(keys: Keys, spec: JobSpec, current_fp: str) -> str:
    """The index entry an updated job should hold: its key's, or (for a job deduplicated by
    fingerprint, ``current_fp`` not '') its new fingerprint's; '' for none."""
    if spec.key is not None:
        return keys.key_index(spec.key)
    return keys.fingerprint(spec.fingerprint()) if current_fp else ""
