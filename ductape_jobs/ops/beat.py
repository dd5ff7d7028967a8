"""Beat's operations: leadership, reading and claiming due entries, the lost-run sweep, the
retention sweep, and what health checks and metrics read. Sync only (``Store.run`` drives them);
times come in as arguments.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis

from ductape_jobs import jobfields
from ductape_jobs.imported import ImportCounts, ImportRow
from ductape_jobs.keys import Keys
from ductape_jobs.ops.core import Call, Eval, Flow, Stream, batched, one, send
from ductape_jobs.ops.producer import change_state, workers
from ductape_jobs.records import (
    Claim,
    Dispatch,
    DueEntry,
    InFlight,
    Message,
    Retention,
    ScheduleState,
    Swept,
    Unreadable,
    opt,
    reason,
    run_id_of,
    text,
)
from ductape_jobs.rows import ClaimDueHead, ClaimDueRow, Claimed, DueRead, LockReply
from ductape_jobs.tracing import trace_of

CLAIM_CHUNK = 250  # claims per CLAIM_DUE call: small enough to overlap, large enough to batch
HSCAN_COUNT = 500  # entries per HSCAN of kombu's unacked hash

# -- leadership ---------------------------------------------------------------------------------


def acquire_lock(keys: Keys, instance: str, ttl_ms: int) -> Flow[LockReply]:
    """Become beat leader if nobody is: (acquired, token held now)."""
    got = yield from one(Eval("ACQUIRE_LOCK", [keys.beat_lock, keys.beat_fence], [instance, ttl_ms]))
    return LockReply.from_reply(got)


def renew_lock(keys: Keys, token: str, ttl_ms: int) -> Flow[bool]:
    """Extend our leadership; False when the lock is someone else's (or gone)."""
    return bool((yield from one(Eval("RENEW_LOCK", [keys.beat_lock], [token, ttl_ms]))))


def release_lock(keys: Keys, token: str) -> Flow[bool]:
    """Step down, if we still lead."""
    return (yield from renew_lock(keys, token, 0))


def renew_locks(
    keys: Keys, instance: str, held: Mapping[int, str], now_ms: int, ttl_ms: int
) -> Flow[tuple[int, dict[int, bool]]]:
    """In one round trip: say beat ``instance`` is alive for ``ttl_ms`` more (the beat registry,
    dropping beats whose time ran out) and extend its lock of each shard in ``held`` (shard ->
    token). How many beats are alive, and which shards are still ours."""
    shards = sorted(held)
    *kept, _, _, live = yield from send(
        *(Eval("RENEW_LOCK", [keys.for_shard(s).beat_lock], [held[s], ttl_ms]) for s in shards),
        Call("zadd", (keys.beats, {instance: now_ms + ttl_ms})),
        Call("zremrangebyscore", (keys.beats, "-inf", f"({now_ms}")),
        Call("zcard", (keys.beats,)),
    )
    return int(live), {shard: bool(ok) for shard, ok in zip(shards, kept, strict=True)}


def free_shards(keys: Keys) -> Flow[list[int]]:
    """The shards whose leader lock nobody holds (one round trip)."""
    held = yield from send(*(Call("exists", (k.beat_lock,)) for k in keys.every_shard()))
    return [shard for shard, taken in enumerate(held) if not taken]


def leave(keys: Keys, instance: str) -> Flow[None]:
    """Take beat ``instance`` out of the registry (it stops)."""
    yield from one(Call("zrem", (keys.beats, instance)))


def live_beats(keys: Keys, now_ms: int) -> Flow[list[str]]:
    """The beats alive at ``now_ms`` (the registry)."""
    got = yield from one(Call("zrangebyscore", (keys.beats, now_ms, "+inf")))
    return [text(m) for m in got]


# -- due entries --------------------------------------------------------------------------------


def next_due_ms(keys: Keys) -> Flow[int | None]:
    """The earliest due time in the index, or None when it is empty."""
    got = yield from one(Call("zrange", (keys.due, 0, 0), {"withscores": True}))
    return int(got[0][1]) if got else None


def due_entries(keys: Keys, until_ms: int, limit: int) -> Flow[list[DueEntry]]:
    """Due-index members with score <= until_ms, with their job state: one round trip."""
    got = yield from one(Eval("READ_DUE", [keys.due], [keys.space, until_ms, limit]))
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
            traceparent=trace_of(e.traceparent),
        )
        for e in DueRead.from_reply(got)
    ]


def sync_imported(
    keys: Keys, retention: Retention, fence: str, app: str, rows: Sequence[ImportRow], now_ms: int
) -> Flow[ImportCounts | None]:
    """Make app's imported beat_schedule jobs the ones ``rows`` lists, in one SYNC_IMPORTED
    step fenced by the leader's token; what it did, or None when fenced out."""
    k = keys
    touched = [k.beat_lock, k.imported(app), k.due, k.jobs, k.retired, k.set_aside]
    args: list[Any] = [k.space, fence, now_ms, retention.job_s]
    for row in rows:
        args += [row.job_id, row.digest, row.spec, row.next_run_ms, row.anchor_ms]
    got = [int(v) for v in (yield from one(Eval("SYNC_IMPORTED", touched, args)))]
    return None if got == [-1] else ImportCounts(*got)


def claim(
    keys: Keys, retention: Retention, fence: str, claims: Iterable[Claim], now_ms: int, runs_kept: int
) -> Flow[list[Claim] | None]:
    """Claim, advance and push messages atomically, in CLAIM_DUE calls of ``CLAIM_CHUNK``
    claims streamed in one round trip: each call goes out as soon as its claims are decided
    (``claims`` may be lazy), so the server runs one while beat decides the next. The claims
    that held, or None when fenced out (a call refused by the fence claims nothing)."""
    chunks: list[list[Claim]] = []
    k = keys
    touched = [k.beat_lock, k.due, k.inflight, k.dead, k.set_aside]
    head = ClaimDueHead(k.space, fence, now_ms, runs_kept, retention.job_s, retention.dead_s)

    def calls() -> Iterator[Eval]:
        for chunk in batched(claims, CLAIM_CHUNK):
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
                    "" if c.message is None else c.message.traceparent,
                )
            yield Eval("CLAIM_DUE", touched, args)

    replies = [Claimed.from_reply(got) for got in (yield Stream(calls()))]
    if any(got.fenced for got in replies):
        return None
    return [chunk[i] for chunk, got in zip(chunks, replies, strict=True) for i in got.indexes]


# -- lost messages ------------------------------------------------------------------------------


def dispatches(keys: Keys, run_ids: Sequence[str]) -> Flow[list[Dispatch | Unreadable]]:
    """Load what building a message needs for these runs (two round trips): the job's brief,
    never its input. A run whose job is gone is left out; one whose brief can't be read
    comes back as ``Unreadable``."""
    if not run_ids:
        return []
    runs = yield from send(
        *(Call("hmget", (keys.run(run_id), "job_id", "nominal_ms", "traceparent")) for run_id in run_ids)
    )
    briefs = yield from _briefs(keys, [text(job_id or b"-") for job_id, _, _ in runs])
    out: list[Dispatch | Unreadable] = []
    for run_id, (job_id, nominal, traced), brief in zip(run_ids, runs, briefs, strict=True):
        if not job_id or not brief:
            continue
        try:
            out.append(
                Dispatch(run_id, jobfields.brief_of(brief), int(nominal or 0), trace_of(text(traced or b"")))
            )
        except ValueError as exc:  # a damaged record: the checked dataclasses raise ValueError
            out.append(Unreadable(text(job_id), reason("could not read this job's record", exc), run_id))
    return out


def _briefs(keys: Keys, job_ids: Sequence[str]) -> Flow[list[dict[str, str] | None]]:
    """Each job's brief fields (jobfields.BRIEF; an old record's ``brief``, or its ``spec`` when
    it is older than briefs), None when the job is gone."""
    names = jobfields.BRIEF
    rows = yield from send(*(Call("hmget", (keys.job(job_id), *names)) for job_id in job_ids))
    briefs = [jobfields.fields(dict(zip(names, row, strict=True))) or None for row in rows]
    older = [at for at, brief in enumerate(briefs) if not brief]
    specs = yield from send(*(Call("hget", (keys.job(job_ids[at]), jobfields.LEGACY_SPEC)) for at in older))
    for at, spec in zip(older, specs, strict=True):
        briefs[at] = {jobfields.LEGACY_SPEC: text(spec)} if spec else None
    return briefs


def set_aside_run(
    keys: Keys, retention: Retention, run: InFlight, job_id: str, why: str, now_ms: int
) -> Flow[bool]:
    """Take an in-flight run whose job can't be read out of flight, unless it moved since
    ``run`` was read: the run is dead-lettered and its job (if still there) failed with the
    reason, retired and listed as set aside (CHANGE_STATE). False when it had moved."""
    k = keys
    touched = [k.run(run.run_id), k.inflight, k.dead, k.job(job_id)]
    args = [run.run_id, run.moved_ms, why, now_ms, retention.dead_s]
    if not (yield from one(Eval("SET_ASIDE_RUN", touched, args))):
        return False
    yield from change_state(keys, "set_aside", job_id, now_ms, job_retention_s=retention.job_s)
    return True


def unmoved_runs(keys: Keys, before_ms: int, limit: int) -> Flow[list[InFlight]]:
    """In-flight runs that have not moved since before_ms, oldest first, with their state."""
    rows = yield from one(
        Call("zrangebyscore", (keys.inflight, "-inf", before_ms, 0, limit), {"withscores": True})
    )
    fields = ("status", "attempts", "queued_ms", "lease_ms")
    states = yield from send(*(Call("hmget", (keys.run(text(m)), *fields)) for m, _ in rows))
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


def head_queued_ms(keys: Keys, queue_key: str) -> Flow[int | None]:
    """When the message next out of a queue was pushed: None for an empty queue, 0 when unknown."""
    head = yield from one(Call("lindex", (queue_key, -1)))
    if head is None:
        return None
    try:
        run_id = run_id_of(json.loads(head))
    except ValueError:
        return 0
    if run_id is None:
        return 0
    return int((yield from one(Call("hget", (keys.run(run_id), "queued_ms")))) or 0)


def held_run_ids(keys: Keys, since_ms: int) -> Flow[set[str]]:
    """Runs whose messages workers hold unacknowledged (kombu's unacked hash, scanned), taken
    since ``since_ms`` (its unacked index). One held longer should have been put back by kombu's
    restore long ago: it is stuck (its index entry gone, the restore blocked), not held."""
    fresh = set((yield from one(Call("zrangebyscore", (keys.broker_unacked_index, since_ms / 1000, "+inf")))))
    held: set[str] = set()
    cursor = 0
    while True:
        cursor, page = yield from one(
            Call("hscan", (keys.broker_unacked,), {"cursor": cursor, "count": HSCAN_COUNT})
        )
        for tag, value in page.items():
            if tag not in fresh:
                continue
            try:
                run_id = run_id_of(json.loads(value)[0])  # kombu stores [message, exchange, key]
            except (ValueError, LookupError, TypeError):
                continue
            if run_id is not None:
                held.add(run_id)
        if not cursor:
            return held


def touch_runs(keys: Keys, run_ids: Sequence[str], now_ms: int) -> Flow[None]:
    """Look at these runs again later (those still in flight: XX adds none back)."""
    if run_ids:
        yield from one(Call("zadd", (keys.inflight, dict.fromkeys(run_ids, now_ms)), {"xx": True}))


def forget_runs(keys: Keys, runs: Sequence[InFlight]) -> Flow[int]:
    """Drop finished or vanished runs from the in-flight index, each unless it moved since read."""
    if not runs:
        return 0
    args: list[Any] = [value for run in runs for value in (run.run_id, run.moved_ms)]
    return int((yield from one(Eval("FORGET_RUNS", [keys.inflight], args))))


def resend(keys: Keys, run: InFlight, message: Message, now_ms: int) -> Flow[bool]:
    """Push a lost run's message again, if the run has not moved since ``run`` was read."""
    touched = [keys.run(run.run_id), keys.inflight, message.queue_key]
    args = [run.run_id, now_ms, run.status or "", run.attempts, message.payload]
    return bool((yield from one(Eval("RESEND_RUN", touched, args))))


# -- lifecycle (the sweep and the counters of what left; README "Sizing Redis") ----------------


def sweep(keys: Keys, retention: Retention, now_ms: int, limit: int, cursor: int) -> Flow[Swept]:
    """Remove finished jobs past their retention and dead letters past theirs or beyond the
    cap, and check ``limit`` entries of the jobs index from ``cursor`` (one bounded script)."""
    k, r = keys, retention
    got = yield from one(
        Eval(
            "SWEEP",
            [k.retired, k.dead, k.jobs, k.stats],
            [k.space, now_ms, limit, cursor, r.job_s, r.dead_s, r.dead_max],
        )
    )
    return Swept(*(int(v) for v in got))


def forget_workers(keys: Keys, unseen_since_ms: int) -> Flow[int]:
    """Drop registrations of workers not seen since then (hostnames of replaced containers
    would otherwise pile up); returns how many went."""
    # An entry that can't be read can't tell when its worker was seen, so it goes too.
    gone = [
        name
        for name, entry in (yield from workers(keys)).items()
        if entry is None or entry.seen_ms < unseen_since_ms
    ]
    if gone:
        yield from one(Call("hdel", (keys.workers, *gone)))
    return len(gone)


# -- health and metrics -------------------------------------------------------------------------


def counters(keys: Keys) -> Flow[dict[str, int]]:
    """The lifecycle counters (``jobs_expired``, ``dead_dropped``, ``due_vanished``, ...), summed
    over the shards."""
    got = yield from send(*(Call("hgetall", (k.stats,)) for k in keys.every_shard()))
    totals: dict[str, int] = {}
    for stats in got:
        for name, value in stats.items():
            totals[text(name)] = totals.get(text(name), 0) + int(value)
    return totals


def memory() -> Flow[tuple[int, int] | None]:
    """The server's used_memory and maxmemory in bytes (0: no limit); None when INFO is not allowed."""
    try:
        info = yield from one(Call("info", ("memory",)))
    except redis.ResponseError:
        return None
    return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))


def eviction_policy() -> Flow[str | None]:
    """The server's maxmemory-policy, or None when CONFIG is not allowed."""
    try:
        got = yield from one(Call("config_get", ("maxmemory-policy",)))
    except redis.ResponseError:
        return None
    value = got.get("maxmemory-policy") or got.get(b"maxmemory-policy")
    return None if value is None else text(value)


def schedule_states(keys: Keys, job_ids: Sequence[str]) -> Flow[list[ScheduleState | None]]:
    """Per job, its status, failed runs (FINISH_RUN counts them), last change and skipped slots
    (CLAIM_DUE counts them), in one round trip; None for a job that is gone."""
    fields = ("status", "failed_runs", "updated_ms", "skipped_slots", "created_ms")
    rows = yield from send(*(Call("hmget", (keys.job(job_id), *fields)) for job_id in job_ids))
    return [
        None
        if status is None
        else ScheduleState(text(status), int(failed or 0), int(updated or created or 0), int(skipped or 0))
        for status, failed, updated, skipped, created in rows
    ]
