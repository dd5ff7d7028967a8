"""What an update may change, and where it puts a job's next run.

Pure: the job as read, the request and the clock come in as arguments (``flows.JobFlows.update``
reads and writes; UPDATE_JOB makes the write conditional on what was read).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ductape_jobs import timing
from ductape_jobs.errors import JobStateError, JobValidationError
from ductape_jobs.jitter import Spread
from ductape_jobs.models import JobRecord
from ductape_jobs.records import Current, Update
from ductape_jobs.terms import JobSpec, JobStatus

# What job.update() may change; env, product_tag and event name the job's queue and Celery task.
UPDATABLE = frozenset({"input", "session", "retries", "timeout", "repeat", "start_at", "app", "cache"})


def settings_differ(old: JobSpec, new: JobSpec) -> bool:
    """Whether a request matching a live schedule's fingerprint asks for other settings than the
    fingerprint covers (retries, timeout, cache, start_at)."""
    fields = ("retries", "timeout_s", "cache", "start_ms")
    return any(getattr(old, name) != getattr(new, name) for name in fields)


def request_of(spec: JobSpec) -> dict[str, Any]:
    """A stored job as the request that would schedule it (its input as stored: masked for a
    session job, whose sealed input an update without ``input`` keeps)."""
    request: dict[str, Any] = {
        "env": spec.env,
        "product_tag": spec.product_tag,
        "event": spec.event,
        "retries": spec.retries,
        "input": spec.input,
        "start_at": spec.start_ms,
    }
    optional = {"timeout": spec.timeout_s, "app": spec.app, "cache": spec.cache, "key": spec.key}
    request.update({name: value for name, value in optional.items() if value is not None})
    rule = spec.timing_rule()
    if rule is not None:
        repeat = {
            "cron": rule.cron,
            "every": rule.every_ms,
            "limit": rule.limit,
            "endDate": rule.end_ms,
            "tz": rule.tz if rule.cron is not None else None,
            "misfire": rule.misfire,
            "catchup_ms": rule.catchup_ms,
            "jitter_ms": rule.jitter_ms or None,
            "overlap": rule.overlap,  # a stored rule without one is 'allow' (timing.Rule)
        }
        request["repeat"] = {name: value for name, value in repeat.items() if value is not None}
    return request


# What an update may not change: where and what a job runs (its queue, its Celery task).
FIXED_FIELDS = ("env", "product_tag", "event")
# Where a job's input lives in its spec: kept as stored when an update gives no input, so the
# input of a session job, masked in Redis, is never needed in clear (its sealed copy stays).
_INPUT_FIELDS = ("input", "redact_paths", "session_tag", "sealed", "input_digest")


def plan_update(current: Current, spec: JobSpec, now_ms: int, *, input_given: bool = True) -> Update:
    """Plan the change of a live job to ``spec`` (a request as ``plan_job`` plans it); raises
    JobValidationError or JobStateError. Without ``input_given`` the stored input stays.

    The rule and ``start_at`` unchanged, the schedule stays as it is. Otherwise the next run is
    the new rule's: after the latest slot ever released (so no slot runs twice), from that slot's
    phase (misfire as beat applies it), or from ``start_at`` when that lies beyond it.
    """
    job = current.job
    old = job.spec
    if old.celery is not None:
        # its app's beat_schedule is what it is: beat's sync would undo a change made here
        raise JobStateError(
            f"cannot update job {job.job_id}: it is the imported beat_schedule entry "
            f"{old.celery.entry!r}; change the entry in its Celery app's config"
        )
    for name in FIXED_FIELDS:
        if getattr(spec, name) != getattr(old, name):
            raise JobValidationError(
                name,
                f"cannot change in an update (job {job.job_id} has {getattr(old, name)!r}, this asks "
                f"{getattr(spec, name)!r}); cancel the job and schedule a new one",
            )
    if (spec.rule is None) == job.recurring:
        now_is = "repeats" if job.recurring else "is a one-off"
        raise JobValidationError(
            "repeat",
            f"job {job.job_id} {now_is}; an update cannot change that: cancel it and schedule a new one",
        )
    _check_updatable(job)
    kept: dict[str, Any] = {
        "created_ms": old.created_ms,
        "key": old.key,
        "idempotency_key": old.idempotency_key,
    }
    if not input_given:
        kept.update({name: getattr(old, name) for name in _INPUT_FIELDS})
    spec = dataclasses.replace(spec, **kept)
    if spec.rule == old.rule and spec.start_ms == old.start_ms:
        return Update(spec, job.next_run_ms, current.anchor_ms)
    rule = spec.timing_rule()
    if rule is None:
        at_ms = max(spec.start_ms, now_ms)
        return Update(spec, at_ms, at_ms)
    # Slots (run ids, the runs set, the anchor) and due times (next_run_ms, the due index) differ
    # by a jittered rule's offset (jitter.py).
    last = current.last_slot_ms
    if last is not None and spec.start_ms <= last:
        # Going on from the latest released slot: its phase, the new rule's next slot after it.
        following = Spread(rule, job.job_id, last).next_run(last, job.runs_done, now_ms)
        return Update(spec, None if following is None else following[1], last)
    first = timing.first_run_ms(rule, spec.start_ms, now_ms)
    if first is None or (rule.limit is not None and job.runs_done >= rule.limit):
        return Update(spec, None, current.anchor_ms)
    return Update(spec, Spread(rule, job.job_id, first).due_ms(first), first)


def _check_updatable(job: JobRecord) -> None:
    """Only a job with something ahead of it that has not been handed over can change."""
    waiting = job.status in (JobStatus.SCHEDULED, JobStatus.PAUSED)
    if waiting and (job.recurring or job.runs_done == 0):
        return
    why = (
        "its run was already handed to a worker"
        if not job.recurring and job.status not in _FINISHED
        else f"it is {job.status.value}"
    )
    raise JobStateError(
        f"cannot update job {job.job_id}: {why}; only a scheduled or paused job changes "
        "(schedule a new one instead)"
    )


_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
