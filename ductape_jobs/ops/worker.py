"""The worker's operations: registering, starting, renewing, finishing and losing runs, and the
result cache. Sync only (``Store.run`` drives them; the runner and the heartbeat reach the hot
ones through ``Store``'s thin methods, their stable interface); times come in as arguments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from ductape_jobs import jobfields
from ductape_jobs.keys import Keys
from ductape_jobs.ops.core import Call, Eval, Flow, one, send
from ductape_jobs.records import Finish, Lease, Lost, Retention, Started, Verdict, opt, reason, text
from ductape_jobs.rows import BeginReply, FinishRunArgs
from ductape_jobs.terms import job_id_of

log = logging.getLogger("ductape_jobs.store")


def register_worker(
    keys: Keys, hostname: str, pairs: Sequence[str], envs: Sequence[str], now_ms: int
) -> Flow[None]:
    """Publish the events and envs a worker serves (one transaction)."""
    info = json.dumps({"envs": list(envs), "events": list(pairs), "seen_ms": now_ms})
    known = [Call("sadd", (keys.events, *pairs))] if pairs else []
    yield from send(*known, Call("hset", (keys.workers, hostname, info)), transaction=True)


def begin_run(
    keys: Keys, retention: Retention, run_id: str, job_id: str, now_ms: int, lease_ms: int, owner: str
) -> Flow[Started]:
    """Mark a run started by delivery ``owner`` unless it is finished, cancelled or held by
    another delivery; a run whose lease ran out has lost that attempt (dead-lettered after
    its last)."""
    k = keys.of_job(job_id)
    touched = [k.run(run_id), k.job(job_id), k.inflight, k.dead]
    args = [now_ms, lease_ms, run_id, owner, k.space, retention.job_s, retention.dead_s]
    got = BeginReply.from_reply((yield from one(Eval("BEGIN_RUN", touched, args))))
    if got.verdict == "gone":  # its record vanished while it was out: say so, then skip it
        yield from runs_gone(keys, retention, [run_id], now_ms)
        return Started(Verdict.SKIP)
    verdict = Verdict(got.verdict)
    if verdict == Verdict.BUSY:
        return Started(verdict, wait_ms=got.wait_ms)
    if verdict != Verdict.RUN:
        return Started(verdict)
    # Made once, spec included (dataclasses.replace costs twice the construction, on every run).
    try:
        spec, unreadable = jobfields.read_spec(got.spec), ""
    except ValueError as exc:  # a damaged field (JobSpec.__post_init__): the runner sets the run aside
        spec, unreadable = None, reason("this worker could not read the job's spec", exc)
    return Started(
        verdict,
        attempt=got.attempt,
        spec=spec,
        nominal_ms=got.nominal_ms,
        manual=got.manual,
        unreadable=unreadable,
    )


def renew_run(keys: Keys, run_id: str, owner: str, now_ms: int, lease_ms: int) -> Flow[Lease]:
    """Heartbeat: extend the lease of ``owner``'s running attempt. 'held', 'cancelled' (still
    theirs, and cancelled: the handler is told) or 'lost' (not theirs any more)."""
    got = yield from one(
        Eval("RENEW_RUN", [keys.run(run_id), keys.of_run(run_id).inflight], [owner, now_ms, lease_ms, run_id])
    )
    return list(Lease)[int(got)]


def lose_run(
    keys: Keys, retention: Retention, run_id: str, owner_prefix: str, why: str, now_ms: int
) -> Flow[Lost]:
    """Count the attempt of a process that died (or was killed) running it."""
    k = keys.of_run(run_id)
    touched = [k.run(run_id), k.job(job_id_of(run_id)), k.dead, k.inflight]
    args = [run_id, owner_prefix, why, now_ms, k.space, retention.job_s, retention.dead_s]
    return Lost(text((yield from one(Eval("LOSE_RUN", touched, args)))))


def finish_run(
    keys: Keys,
    retention: Retention,
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
) -> Flow[bool]:
    """Record one attempt's outcome; False when a newer attempt owns the run.

    ``wait=False`` sends it without waiting for the reply (a deferred Eval; True is returned):
    a worker's run is recorded by the time its Celery ack is sent, one round trip sooner. Only
    for 'completed', which is safe to send twice should the reply be lost.
    """
    if not wait and outcome != "completed":
        raise ValueError("only a 'completed' outcome is sent without waiting")
    k = keys.of_job(job_id)
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
        k.space,
        retention.job_s,
        retention.dead_s,
    )
    touched = [k.run(run_id), k.job(job_id), k.due, k.dead, k.inflight]
    got = yield from one(Eval("FINISH_RUN", touched, list(args), defer=not wait))
    return not wait or bool(got)


def runs_gone(keys: Keys, retention: Retention, run_ids: Sequence[str], now_ms: int) -> Flow[list[str]]:
    """Of these runs, those whose record vanished while their job is still here: each is
    counted (``runs_vanished``), logged, and recorded as a dead letter saying so (RUN_GONE, one
    call per run). Beat's lost-run sweep asks it too."""
    gone = []
    for run_id in run_ids:
        args = [keys.of_run(run_id).space, run_id, now_ms, retention.job_s, retention.dead_s]
        if (yield from one(Eval("RUN_GONE", [], args))):
            gone.append(run_id)
    if gone:
        log.warning(
            "%d run record(s) vanished from Redis (evicted, or deleted by hand?): %s; their one-off "
            "jobs are marked failed and the runs are dead letters (ductape-jobs failed, doctor)",
            len(gone),
            ", ".join(gone[:5]),
        )
    return gone


def cached_result(key: str) -> Flow[str | None]:
    """A live cached result (JSON), or None."""
    got = yield from one(Call("get", (key,)))
    return None if got is None else text(got)


def store_result(key: str, result_json: str, ttl_ms: int) -> Flow[None]:
    """Cache a successful result for ttl_ms."""
    yield from one(Call("set", (key, result_json), {"px": ttl_ms}))
