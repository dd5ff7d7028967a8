"""The data model's values: what the store writes and hands back, and how Redis replies become them.

Pure: no I/O, and imports neither Celery nor the store (``Message`` is only carried here;
wire.py builds it). Both stores (store.py, astore.py) and the operations in ops/ build on this,
and so do the scripts' words (``Verdict``, ``Answer``, ``StateAction`` ...), typed for mypy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ductape_jobs.brief import JobBrief
from ductape_jobs.errors import validation_error
from ductape_jobs.jobfields import spec_of
from ductape_jobs.terms import JobSpec, JobStatus, RunStatus
from ductape_jobs.timing import Overlap

if TYPE_CHECKING:  # the validated models (pydantic): loaded where a record is read back, not in beat
    from ductape_jobs.models import JobRecord, RunRecord

# The scripts' words, as types mypy checks: what callers pass in as Literals, what Redis answers as
# StrEnums (parsed where the reply is read, so an unknown word fails there). Both are plain str.
StateAction = Literal["cancel", "pause", "resume", "set_aside"]  # CHANGE_STATE's action
RunAction = Literal["trigger", "redrive"]  # ADD_RUN's action
Finish = Literal["completed", "retry", "retry_due", "failed", "cancelled"]  # FINISH_RUN's outcome


class Answer(StrEnum):
    """A management script's answer (CHANGE_STATE, ADD_RUN, UPDATE_JOB)."""

    OK = "ok"
    REFUSED = "refused"  # not in a state the action applies to
    MISSING = "missing"  # no such job (or, for a redrive, no such run)
    MOVED = "moved"  # UPDATE_JOB: the job changed since it was read; read and plan again


class Verdict(StrEnum):
    """What BEGIN_RUN says of a delivery."""

    RUN = "run"  # go: this delivery runs the attempt
    DONE = "done"  # finished already (or its last attempt was lost): nothing to do
    SKIP = "skip"  # cancelled, stale, or its record is gone
    BUSY = "busy"  # another delivery holds the run's lease: look again later


class Lease(StrEnum):
    """What RENEW_RUN says of a lease (its replies 0, 1, 2, in this order)."""

    LOST = "lost"  # not this delivery's attempt any more: let it go
    HELD = "held"  # extended
    CANCELLED = "cancelled"  # extended, and the run was cancelled: tell the handler


class Lost(StrEnum):
    """What LOSE_RUN made of an attempt whose process died."""

    DEAD = "dead"  # that was its last attempt: dead-lettered
    RETRY = "retry"  # the next delivery runs the next attempt
    MOVED = "moved"  # the run had moved on already (not that process's attempt)
    CANCELLED = "cancelled"  # it was cancelled: it ends cancelled, not retried


@dataclass(frozen=True)
class Message:
    """One ready-to-push broker message: the Redis list it goes to and its payload (wire.py builds
    it with Celery; everything else only carries it)."""

    queue_key: str
    payload: str
    # Fires Celery's after_task_publish for it (wire.py sets it only when receivers are connected).
    after: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    # The W3C traceparent of the span it was built in, when a tracer is set and publish receivers
    # are connected ('' otherwise): its run's trace, kept in the run record (retries, resends).
    traceparent: str = field(default="", compare=False, repr=False)

    def sent(self) -> None:
        """Say it was written: Celery's after_task_publish, as a publish would (nothing without receivers)."""
        if self.after is not None:
            self.after()


class Messages(Protocol):
    """What builds a run's message from its job's brief: ``wire.MessageBuilder``, the one Celery
    user; beat's engine and lost-run sweep take it, so they need no Celery themselves."""

    def from_brief(self, run_id: str, brief: JobBrief, nominal_ms: int, now_ms: int) -> Message:
        """The message that runs ``run_id`` (with an ETA only when not yet due)."""
        ...

    def queue_key(self, brief: JobBrief) -> str:
        """The broker list the job's messages go to."""
        ...


def run_id_of(envelope: Any) -> str | None:
    """The run id a broker message (a decoded envelope as kombu stores it) carries, if any."""
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    run_id = headers.get("id") if isinstance(headers, dict) else None
    return run_id if isinstance(run_id, str) else None


@dataclass(frozen=True)
class NewJob:
    """Everything CREATE_JOBS writes for one accepted request (``planning.plan_job`` makes it)."""

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
    # The input digest under the session key ring's older keys: a twin scheduled before the
    # newest key came in is still found (dedupe) after a rotation.
    older_digests: tuple[str, ...] = ()
    idempotency_ttl_ms: int = 0  # with spec.idempotency_key: how long the key returns this job


@dataclass(frozen=True)
class Current:
    """A job as an update reads it: its record, phase anchor, version (the UPDATE_JOB check)
    and the latest slot of it ever released (None before its first run)."""

    job: JobRecord
    anchor_ms: int
    version: int
    last_slot_ms: int | None
    identity: str = ""  # the job hash's ``fp``: its key index or fingerprint entry ('' = none)


@dataclass(frozen=True)
class Update:
    """What UPDATE_JOB writes: the new spec, the job's next run and phase anchor."""

    spec: JobSpec
    next_run_ms: int | None
    anchor_ms: int


@dataclass(frozen=True)
class Retention:
    """How long finished records stay (seconds) and how many dead letters are kept."""

    job_s: int = 7 * 86_400
    dead_s: int = 30 * 86_400
    dead_max: int = 100_000

    @classmethod
    def of(cls, settings: Any) -> Retention:
        """The retention a deployment's settings ask for."""
        return cls(settings.job_retention_s, settings.dead_retention_s, settings.dead_max)


@dataclass(frozen=True)
class Swept:
    """What one sweep call removed (beat.retention)."""

    jobs_expired: int  # finished jobs whose retention passed, deleted with their runs
    dead_dropped: int  # dead letters past their retention or beyond the cap
    retired: int  # finished jobs found without a retention (older data), given one now
    jobs_vanished: int  # job index entries whose record was gone before its time
    next_cursor: int  # where the next call looks in the jobs index (0: from the start)


@dataclass(frozen=True)
class DueEntry:
    """One member of the due index with what beat needs to release it."""

    member: str
    due_ms: int
    job_id: str
    brief_json: str | None  # its brief fields packed (jobfields.read_brief); None when the job is gone
    runs_done: int
    anchor_ms: int
    run_id: str | None = None  # set for a retry entry ``r:<run_id>``
    version: int = 0  # the job's version (UPDATE_JOB bumps it): the claim holds only if unchanged
    traceparent: str | None = None  # an ``r:`` entry's run's trace (its record's traceparent)


@dataclass(frozen=True)
class Claim:
    """Beat's decision for one due entry, checked and applied atomically by CLAIM_DUE."""

    entry: DueEntry
    run_id: str
    nominal_ms: int
    new_next_ms: int | None
    message: Message | None  # None: nothing to send (the job is gone, or the entry is set aside)
    reason: str = ""  # set when beat could not read or decide the entry: it is set aside, not sent
    # a schedule's repeat.overlap ('' = allow), or 'celery': an imported beat_schedule entry's plain
    # Celery task, always released and recorded 'sent'. CLAIM_DUE decides by it
    overlap: Overlap | Literal["", "celery"] = ""
    skip_next_ms: int | None = None  # the next run should CLAIM_DUE skip this slot (limit not counted)


@dataclass(frozen=True)
class Dispatch:
    """What sending one run's message again needs (beat's lost-run sweep)."""

    run_id: str
    brief: JobBrief
    nominal_ms: int
    traceparent: str | None = None  # the run's trace (its record's traceparent), if kept


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be read back, and why: skipped and reported, never raised."""

    job_id: str
    reason: str
    run_id: str | None = None


REASON_MAX = 300


def reason(what: str, exc: BaseException) -> str:
    """A one-line reason for a record set aside: what failed, the exception's type and its gist."""
    if validation_error(exc):
        first = exc.errors(include_url=False)[0]  # type: ignore[attr-defined]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        gist = f"{where}: {first['msg']}"
    else:
        gist = (str(exc).splitlines() or [""])[0]
    return f"{what} ({type(exc).__name__}: {gist})"[:REASON_MAX]


@dataclass(frozen=True)
class ScheduleState:
    """What beat's metrics read of a schedule at a scrape."""

    status: str
    failed_runs: int  # runs that failed after their last retry
    updated_ms: int  # its last change (for a finished schedule: when it finished)
    skipped_slots: int = 0  # slots repeat.overlap skipped (CLAIM_DUE counts them)


@dataclass(frozen=True)
class InFlight:
    """A run handed to Celery and not finished, as read from the in-flight index."""

    run_id: str
    moved_ms: int  # when it was last sent, started or retried
    status: str | None  # None when the run record is gone
    attempts: str
    queued_ms: int  # when its message was last pushed onto its queue
    lease_ms: int = 0  # a running attempt: until when its heartbeat holds it (0: not running)


@dataclass(frozen=True)
class Started:
    """The outcome of BEGIN_RUN, with what a ``run`` verdict needs."""

    verdict: Verdict
    attempt: int = 0
    spec: JobSpec | None = None
    nominal_ms: int = 0
    manual: bool = False
    wait_ms: int = 0
    unreadable: str = ""  # with 'run': why the job's spec could not be read (the run is set aside)


def job_record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    """A job hash (HGETALL reply) as a JobRecord."""
    from ductape_jobs.models import JobRecord  # see TYPE_CHECKING above

    f = {text(k): text(v) for k, v in raw.items()}
    spec = spec_of(f)
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
        updated_ms=int(f.get("updated_ms") or f["created_ms"]),  # none until its first change
        skipped_slots=int(f.get("skipped_slots") or 0),
        version=int(f.get("version") or 0),
    )


def read_job(job_id: str, raw: dict[bytes, bytes]) -> JobRecord | Unreadable:
    """A job hash as a JobRecord, or as Unreadable with the reason when it can't be read."""
    try:
        return job_record(job_id, raw)
    except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
        return Unreadable(job_id, reason("could not read this job's record", exc))


class JobList(list["JobRecord"]):
    """What ``job.list()`` returns: the jobs, and the records it skipped as unreadable."""

    def __init__(self, jobs: list[JobRecord] = (), unreadable: list[Unreadable] | None = None) -> None:  # type: ignore[assignment]
        super().__init__(jobs)
        self.unreadable: list[Unreadable] = unreadable or []


@dataclass(frozen=True)
class WorkerEntry:
    """A worker's entry in the workers hash (``ops.worker.register_worker`` writes it)."""

    name: str  # its Celery hostname
    envs: list[str]  # the envs whose queues it consumes
    events: int  # how many events it serves
    seen_ms: int  # when it last said it is here (0: unknown)


def worker_entry(name: Any, raw: Any) -> WorkerEntry | None:
    """One entry of the workers hash, or None when it can't be read."""
    try:
        info = json.loads(raw)
        events = len(info.get("events") or [])
        return WorkerEntry(text(name), list(info.get("envs") or []), events, int(info.get("seen_ms") or 0))
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class SetAside:
    """A job beat set aside: it could not read or decide it, so the job failed with the reason."""

    job_id: str
    at_ms: int
    reason: str


def run_record(run_id: str, raw: dict[bytes, bytes]) -> RunRecord:
    """A run hash (HGETALL reply) as a RunRecord."""
    from ductape_jobs.models import RunRecord  # see TYPE_CHECKING above

    f = {text(k): text(v) for k, v in raw.items()}
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


def opt(value: int | None) -> str | int:
    """An optional number as a script argument ('' for none)."""
    return "" if value is None else value


def text(value: Any) -> str:
    """A reply value (bytes or not) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
