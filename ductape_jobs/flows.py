"""What ``job.*`` does, written once for ``Ductape`` and ``AsyncDuctape``.

Each method of ``JobFlows`` is a flow (see ops/): validation, planning, message building and
reading replies happen here, and every Redis round trip is yielded to the caller, so the sync
client drives these flows with ``Store.run`` and the async one with ``await AsyncStore.run``.
``ClientCore`` is what both clients hold besides their Redis connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, TypeVar, cast

from ductape_jobs import ops, timing, tracing
from ductape_jobs.celery_app import create_app, revoke_runs
from ductape_jobs.clock import now_ms
from ductape_jobs.errors import (
    JobNotFoundError,
    JobStateError,
    JobValidationError,
    RecordUnreadableError,
    UnknownEventError,
)
from ductape_jobs.events import SentEvents
from ductape_jobs.jitter import Spread
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRecord, JobRequest, RunRecord, ScheduleHandle
from ductape_jobs.ops import Flow
from ductape_jobs.planning import Build, _iso, handle_of, plan_job
from ductape_jobs.records import (
    Answer,
    Current,
    JobList,
    Message,
    NewJob,
    RunAction,
    SetAside,
    StateAction,
    Unreadable,
)
from ductape_jobs.rows import CreateJobsRow
from ductape_jobs.scripts import BACKFILL_MAX_SLOTS
from ductape_jobs.sealed import Vault
from ductape_jobs.sessions import Sessions, session_types_from_config
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec, JobStatus, job_id_of, ms_to_datetime, run_id_for
from ductape_jobs.twins import Shapes, Twin, shape_key
from ductape_jobs.updating import UPDATABLE, plan_update, request_of, settings_differ
from ductape_jobs.wire import MessageBuilder

T = TypeVar("T")
Request = JobRequest | Mapping[str, Any]
Jobs = list[JobRecord]
Runs = list[RunRecord]
Times = list[datetime]
RunIds = list[str]
SetAsides = list[SetAside]
UPDATE_TRIES = 10  # reads and writes of one update racing beat's releases of the same job


class JobFilter(TypedDict, total=False):
    """What ``job.list()`` takes: filters combined with AND (None = any), and ``limit`` (100)."""

    env: str | None
    product_tag: str | None
    event: str | None
    status: str | JobStatus | None
    limit: int


@dataclass(frozen=True)
class Revoke:
    """What a cancel asks of Celery: revoke these run ids (their task ids, wire.py), and with
    ``terminate`` kill the pool processes running them (SIGTERM)."""

    run_ids: tuple[str, ...] = ()
    terminate: bool = False


class ClientCore:
    """Settings, sessions, the message builder and the task-sent events: what both clients hold
    besides Redis."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        caches: Mapping[str, Mapping[str, int]] | None = None,
        sessions: Mapping[str, Mapping[str, Any]] | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(redis_url=redis_url, caches=caches, sessions=sessions, **overrides)
        self.settings = settings
        self.sessions = Sessions(session_types_from_config(settings.sessions))
        self.vault = Vault(self.sessions)
        self.celery = create_app(settings, name="ductape_jobs.producer")
        self.messages = MessageBuilder(self.celery, settings)
        self.sent = SentEvents(self.celery)
        self.flows = JobFlows(self)
        self._open()

    def _open(self) -> None:
        """Connect to Redis and build ``job``: each client does it its own way."""
        raise NotImplementedError

    def handed(self, messages: Sequence[Message]) -> None:
        """Runs just handed to Celery: Celery's ``task-sent`` for each, when events are on."""
        self.sent(messages)

    def revoke(self, revoke: Revoke) -> None:
        """Send Celery's revoke for cancelled runs (a broadcast to every worker over the broker):
        a worker drops a revoked run it has not started and kills the process of one it runs
        when ``terminate``; each sends ``task-revoked``, which Flower shows."""
        if revoke.run_ids:
            revoke_runs(self.celery, revoke.run_ids, terminate=revoke.terminate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_prefix={self.settings.key_prefix!r})"


class JobFlows:
    """The ``job.*`` methods as flows; the clients only drive them."""

    def __init__(self, core: ClientCore) -> None:
        self._settings = core.settings
        self._keys = Keys(core.settings.key_prefix, core.settings.shards)
        self._sessions = core.sessions
        self._vault = core.vault
        self._messages = core.messages
        self._handed = core.handed
        self._report = core.sent.enabled  # collect what is handed over only for someone to tell
        self._known_events: set[tuple[str, str]] = set()

    # -- scheduling -------------------------------------------------------------------------

    def schedule(self, request: Request | None, fields: Mapping[str, Any]) -> Flow[ScheduleHandle]:
        """Validate, store and (when due) hand a job to Celery; nothing is written if it is refused."""
        if request is not None and fields:
            raise JobValidationError("request", "pass either one dict/JobRequest or keyword fields, not both")
        handles = yield from self.schedule_many([request if request is not None else fields])
        return handles[0]

    def schedule_many(self, requests: Sequence[Request]) -> Flow[list[ScheduleHandle]]:
        """Schedule a batch: every request is validated first, then all are written in one round trip.

        Traced as one ``ductape.schedule`` span (ductape_jobs.tracing), whose traceparent each job
        keeps: its runs' messages carry this trace, a recurring job's runs link to it.
        """
        with tracing.span("ductape.schedule", jobs=len(requests)):
            return (yield from self._schedule_many(requests, tracing.traceparent()))

    def _schedule_many(
        self, requests: Sequence[Request], traceparent: str | None
    ) -> Flow[list[ScheduleHandle]]:
        """Schedule a batch: every request is validated first, then all are written in one round trip.

        Requests that differ only in ``input`` from one already planned in the batch take the
        batch shortcut (twins.py): only their input is checked again.
        """
        now = now_ms()
        planned = yield from self._plan_all(requests, now, traceparent)
        messages: dict[int, Message] = {}  # by request: the run it hands to Celery (events on)
        built: list[Message] = []  # every run's, to say when its write was answered (Message.sent)

        def rows() -> Iterator[CreateJobsRow]:
            for at, item in enumerate(planned):
                if isinstance(item, Twin):
                    row = item.row(now, self._messages, built)
                else:
                    row = ops.create_row(self._keys, item, traceparent)
                    if item.message is not None:
                        built.append(item.message)
                if self._report and row.message:
                    messages[at] = Message(row.queue_key, row.message)
                yield row

        twins = dict((yield from ops.create_rows(self._keys, rows(), now)))
        for message in built:  # a twin's too (not written): a receiver's state for it must end
            message.sent()
        self._handed([message for at, message in messages.items() if at not in twins])
        handles = []
        for at, item in enumerate(planned):
            if at in twins and isinstance(item, NewJob):
                handles.append((yield from self._met(twins[at], item)))
            elif at in twins:
                handles.append((yield from self._existing_handle(twins[at])))
            else:
                handles.append(item.handle() if isinstance(item, Twin) else handle_of(item))
        return handles

    def _plan_all(
        self, requests: Sequence[Request], now: int, traceparent: str | None
    ) -> Flow[list[NewJob | Twin]]:
        """Each request parsed and planned, or taken as a twin; the first refusal is raised, with
        its place in the batch."""
        planned: list[NewJob | Twin] = []
        shapes = Shapes(self._keys, self._settings, new_job_id, traceparent)
        build = traced_build(self._messages, traceparent)
        for index, raw in enumerate(requests):
            try:
                key = shape_key(raw)
                twin = shapes.twin(key, raw)
                if twin is not None:
                    planned.append(twin)
                    continue
                plan = yield from self._plan(raw, now, build)
                shapes.learn(key, plan)
                planned.append(plan)
            except JobValidationError as exc:
                if len(requests) > 1:
                    raise type(exc)(f"requests[{index}].{exc.field}", str(exc).split(": ", 1)[1]) from None
                raise
        return planned

    def _plan(self, raw: Request, now: int, build: Build) -> Flow[NewJob]:
        """One request parsed, checked and planned the long way."""
        req = JobRequest.parse(dict(raw) if isinstance(raw, Mapping) else raw)
        if self._settings.require_handler:
            yield from self._check_event(req.product_tag, req.event)
        return plan_job(req, self._settings, self._sessions, now, new_job_id(), build)

    def validate(self, request: Request) -> Flow[JobRequest]:
        """Check a request exactly as ``schedule()`` would, writing and sending nothing."""
        req = JobRequest.parse(dict(request) if isinstance(request, Mapping) else request)
        yield from self._check_event(req.product_tag, req.event)
        plan_job(req, self._settings, self._sessions, now_ms(), "validate")
        return req

    def _check_event(self, product_tag: str, event: str) -> Flow[None]:
        if not self._settings.require_handler or (product_tag, event) in self._known_events:
            return
        if (yield from ops.events_known(self._keys, product_tag, event)):
            self._known_events.add((product_tag, event))
            return
        known = yield from ops.known_events(self._keys, product_tag)
        raise UnknownEventError(
            "event",
            f"no worker has registered a handler for {product_tag}/{event} (known for {product_tag}: "
            f"{known or 'none'}); start a worker with that handler in DUCTAPE_HANDLERS, or set "
            "DUCTAPE_REQUIRE_HANDLER=false to schedule before deploying it",
        )

    def _existing_handle(self, job_id: str) -> Flow[ScheduleHandle]:
        return _existing((yield from self.get(job_id)))

    def _met(self, job_id: str, plan: NewJob) -> Flow[ScheduleHandle]:
        """The handle for a request that met an existing job: the job of its idempotency key as
        it is; the job of its key, or a fingerprint twin asking other settings, updated to it
        (never a silent no-op: docs/design.md section 4)."""
        job = yield from self.get(job_id)
        spec = plan.spec
        if spec.idempotency_key is None and (spec.key is not None or settings_differ(job.spec, spec)):
            job, changed = yield from self._update(job_id, lambda _, __: (spec, True))
            return _existing(job, updated=changed)
        return _existing(job)

    # -- updating ---------------------------------------------------------------------------

    def update(self, job_id: str, fields: Mapping[str, Any]) -> Flow[JobRecord]:
        """Change a live job in place: same job id, its runs kept, the next run from the new
        rule; fields not given keep their values (``repeat`` replaces the whole rule)."""
        fixed = sorted(set(fields) - UPDATABLE)
        if fixed:
            raise JobValidationError(
                fixed[0],
                f"cannot be changed by update() (it changes {', '.join(sorted(UPDATABLE))}); "
                "cancel the job and schedule a new one",
            )

        def planned(current: Current, now: int) -> tuple[JobSpec, bool]:
            req = JobRequest.parse({**request_of(current.job.spec), **fields})
            return plan_job(req, self._settings, self._sessions, now, job_id).spec, "input" in fields

        job, _ = yield from self._update(job_id, planned)
        return job

    def _update(
        self, job_id: str, planned: Callable[[Current, int], tuple[JobSpec, bool]]
    ) -> Flow[tuple[JobRecord, bool]]:
        """Read, plan and write an update, again while beat releases a run of the job in between
        (UPDATE_JOB refuses a write planned from a state that moved); the job, and whether it
        changed (an update asking for what the job already is writes nothing). ``planned`` gives
        the spec asked for (as ``plan_job`` makes it) and whether it brings its own input."""
        retention = self._settings.job_retention_s
        for _ in range(UPDATE_TRIES):
            current = self._found(job_id, (yield from ops.current_job(self._keys, job_id)))
            now = now_ms()
            spec, input_given = planned(current, now)
            update = plan_update(current, spec, now, input_given=input_given)
            if update.spec == current.job.spec and update.next_run_ms == current.job.next_run_ms:
                return self._opened(current.job), False
            identity = ops.identity_key(self._keys.of_job(job_id), update.spec, current.identity)
            got = yield from ops.update_job(
                self._keys, current, update, identity, now, job_retention_s=retention,
                traceparent=tracing.traceparent(),
            )  # fmt: skip
            if got.answer == Answer.OK:
                return (yield from self.get(job_id)), True
            self._refused(*got, job_id, "update")
        raise JobStateError(
            f"job {job_id} changed {UPDATE_TRIES} times while it was being updated; try again"
        )

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Flow[JobRecord]:
        """The job's record; JobNotFoundError when there is none."""
        return self._opened(self._found(job_id, (yield from ops.get_job(self._keys, job_id))))

    def _found(self, job_id: str, got: T | Unreadable | None) -> T:
        """What was read of a job, or the error for a job that is missing or can't be read."""
        if got is None:
            raise JobNotFoundError(f"no job {job_id!r} under key prefix {self._settings.key_prefix!r}")
        if isinstance(got, Unreadable):
            raise RecordUnreadableError(
                f"job {job_id}: {got.reason}; cancel it (ductape-jobs cancel {job_id}) and schedule it again"
            )
        return got

    def list(
        self,
        *,
        env: str | None = None,
        product_tag: str | None = None,
        event: str | None = None,
        status: str | JobStatus | None = None,
        limit: int = 100,
    ) -> Flow[JobList]:
        """Jobs, newest first, filtered by env, product, event and status; records that can't be
        read are skipped and reported in the list's ``unreadable``."""
        wanted = {"env": env, "product_tag": product_tag, "event": event}
        out = JobList()
        ids = yield from ops.job_ids(self._keys, limit=max(limit * 10, 1000))
        for start in range(0, len(ids), 500):
            for job in (yield from ops.get_jobs(self._keys, ids[start : start + 500])):
                if isinstance(job, Unreadable):
                    out.unreadable.append(job)
                    continue
                if status is not None and job.status != JobStatus(status):
                    continue
                if any(v is not None and getattr(job.spec, k) != v for k, v in wanted.items()):
                    continue
                out.append(self._opened(job))
                if len(out) >= limit:
                    return out
        return out

    def runs(self, job_id: str, limit: int) -> Flow[Runs]:
        """The job's recent runs, newest first."""
        spec = (yield from self.get(job_id)).spec
        run_ids = yield from ops.recent_run_ids(self._keys, job_id, limit)
        runs = yield from ops.get_runs(self._keys, run_ids)
        return [run.model_copy(update={"result": self._vault.open_result(spec, run.result)}) for run in runs]

    def _opened(self, job: JobRecord) -> JobRecord:
        # A session job's result is stored sealed; this client holds the secret to open it.
        return job.model_copy(update={"result": self._vault.open_result(job.spec, job.result)})

    def set_aside(self, limit: int) -> Flow[SetAsides]:
        """Jobs beat could not read or decide, newest first: each failed with the reason."""
        return (yield from ops.set_aside(self._keys, limit))

    def failed(self, limit: int) -> Flow[Runs]:
        """Dead-lettered runs, newest first."""
        return (yield from ops.get_runs(self._keys, (yield from ops.dead_run_ids(self._keys, limit))))

    def upcoming(self, job_id: str, n: int) -> Flow[Times]:
        """The next n run times (aware UTC datetimes), honouring limit, endDate and tz."""
        job = yield from self.get(job_id)
        if job.status not in (JobStatus.SCHEDULED, JobStatus.PAUSED) or job.next_run_ms is None:
            return []
        rule = job.spec.timing_rule()
        if rule is None:
            return [_at(job.next_run_ms)]
        anchor = yield from ops.anchor_ms(self._keys, job_id)
        times = Spread(rule, job_id, anchor).upcoming_ms(job.next_run_ms, job.runs_done, n)
        return [_at(t) for t in times]

    # -- managing ---------------------------------------------------------------------------

    def cancel(self, job_id: str, terminate: bool = False) -> Flow[tuple[JobRecord, Revoke]]:
        """Stop the job: no further runs; released runs that have not started are skipped; its
        running runs are cancelled (``terminate``: their processes are killed, see Revoke)."""
        retention = self._settings.job_retention_s
        verdict, status, running = yield from ops.cancel_job(
            self._keys, job_id, now_ms(), terminate=terminate, job_retention_s=retention
        )
        self._refused(verdict, status, job_id, "cancel")
        job = yield from self.get(job_id)
        return job, Revoke(tuple(running) if terminate else (), terminate)

    def cancel_run(self, run_id: str, terminate: bool = False) -> Flow[tuple[RunRecord, Revoke]]:
        """Stop one run, its schedule going on: one not started never starts; a running one's
        handler sees ``ctx.cancelled()`` (``terminate``: its process is killed). Either ends
        ``cancelled``, never retried. A finished run is refused (JobStateError)."""
        retention = self._settings.job_retention_s
        verdict, status = yield from ops.cancel_run(
            self._keys, run_id, now_ms(), terminate=terminate, job_retention_s=retention
        )
        if verdict == "missing":
            raise JobNotFoundError(
                f"no run {run_id!r} under key prefix {self._settings.key_prefix!r}; a run exists once it is "
                "released (see 'runs'); to stop runs not yet released, cancel or pause the job"
            )
        if verdict == "refused":
            raise JobStateError(f"cannot cancel run {run_id}: it already finished ({status})")
        [run] = yield from ops.get_runs(self._keys, [run_id])
        if status == "running":
            return run, Revoke((run_id,), True) if terminate else Revoke()
        return run, Revoke((run_id,))  # not started: workers holding its message drop it

    def pause(self, job_id: str) -> Flow[JobRecord]:
        """Hold a scheduled job; runs already handed to workers still run."""
        return (yield from self._change("pause", job_id))

    def resume(self, job_id: str) -> Flow[JobRecord]:
        """Put a paused job back on its schedule; slots missed while paused are skipped, phase kept."""
        job = yield from self.get(job_id)
        if job.status != JobStatus.PAUSED:
            raise JobStateError(
                f"job {job_id} is {job.status.value}, not paused; only a paused job can resume"
            )
        now = now_ms()
        next_ms = job.next_run_ms
        rule = job.spec.timing_rule()
        if next_ms is not None and rule is not None and next_ms < now:
            anchor = yield from ops.anchor_ms(self._keys, job_id)
            next_ms = Spread(rule, job_id, anchor).first_due_from(now)
        elif next_ms is not None:
            next_ms = max(next_ms, now) if rule is None else next_ms
        return (yield from self._change("resume", job_id, next_ms=next_ms, runs_done=job.runs_done))

    def trigger(self, job_id: str) -> Flow[str]:
        """Run the job once more now, outside its schedule (not counted toward limit); the run id."""
        now = now_ms()
        return (yield from self._add_run("trigger", job_id, f"{job_id}:{now}m", now, job_id))

    def redrive(self, run_id: str) -> Flow[str]:
        """Run a dead-lettered run again with fresh attempts; its run id."""
        return (yield from self._add_run("redrive", job_id_of(run_id), run_id, now_ms(), run_id))

    def backfill(self, job_id: str, start: object, end: object) -> Flow[RunIds]:
        """Run every slot of a past range once, under the slots' own run ids (not counted toward
        limit, outside repeat.overlap); the run ids added (a slot that ran already adds none)."""
        start_ms = timing.parse_instant_ms(start, "start")
        end_ms = timing.parse_instant_ms(end, "end")
        now = now_ms()
        job = yield from self.get(job_id)
        _not_imported(job, "backfill")
        rule = job.spec.timing_rule()
        if rule is None:
            raise JobValidationError(
                "job_id", f"job {job_id} is a one-off: it has no slots; trigger it instead"
            )
        anchor = yield from ops.anchor_ms(self._keys, job_id)
        # next_run_ms is when the next run falls due, after its slot when jittered
        nxt = None if job.next_run_ms is None else Spread(rule, job_id, anchor).slot_ms(job.next_run_ms)
        _check_range(job, rule, start_ms, end_ms, now, nxt)
        most = min(BACKFILL_MAX_SLOTS, self._settings.runs_kept)
        slots = timing.slots_between_ms(rule, anchor, start_ms, end_ms, most)
        if slots is None:
            raise JobValidationError(
                "end",
                f"{_iso(start_ms)}..{_iso(end_ms)} holds more than {most} slots, the most one backfill "
                f"takes (BACKFILL_MAX_SLOTS {BACKFILL_MAX_SLOTS}, and DUCTAPE_RUNS_KEPT "
                f"{self._settings.runs_kept}, so each run added stays known); backfill shorter ranges",
            )
        messages = [
            (run_id, at, self._messages.build(run_id, job.spec, at, now))
            for at in slots
            for run_id in [run_id_for(job_id, at)]
        ]
        kept = self._settings.runs_kept
        verdict, status, added = yield from ops.backfill(self._keys, job_id, messages, now, runs_kept=kept)
        for _, _, message in messages:  # each one's, also one not added (Message.sent)
            message.sent()
        self._refused(verdict, status, job_id, "backfill")
        pushed = set(added)
        self._handed([message for run_id, _, message in messages if run_id in pushed])
        return added

    def _add_run(self, action: RunAction, job_id: str, run_id: str, now: int, what: str) -> Flow[str]:
        job = yield from self.get(job_id)
        _not_imported(job, action)
        message = self._messages.build(run_id, job.spec, now, now)
        kept = self._settings.runs_kept
        got = yield from ops.add_run(self._keys, action, job_id, run_id, now, message, runs_kept=kept)
        message.sent()
        self._refused(*got, what, action)
        self._handed([message])
        return run_id

    def _change(
        self, action: StateAction, job_id: str, next_ms: int | None = None, runs_done: int = 0
    ) -> Flow[JobRecord]:
        retention = self._settings.job_retention_s
        got = yield from ops.change_state(
            self._keys, action, job_id, now_ms(), next_ms, runs_done, job_retention_s=retention
        )
        self._refused(*got, job_id, action)
        return (yield from self.get(job_id))

    def _refused(self, answer: Answer, status: str | None, what: str, action: str) -> None:
        if answer == Answer.MISSING or status == "missing":  # redrive: the job exists, the run does not
            raise JobNotFoundError(f"no job or run {what!r} under key prefix {self._settings.key_prefix!r}")
        if answer == Answer.REFUSED:
            raise JobStateError(f"cannot {action} {what}: it is {status}")


def _not_imported(job: JobRecord, action: str) -> None:
    """An imported beat_schedule entry's runs are plain Celery tasks that report nothing back:
    a run added outside beat's release would be taken for lost and sent again."""
    if job.spec.celery is not None:
        raise JobStateError(
            f"cannot {action} {job.job_id}: it is the imported beat_schedule entry "
            f"{job.spec.celery.entry!r}; send its task with app.send_task({job.spec.celery.task!r}, ...)"
        )


def _check_range(
    job: JobRecord, rule: timing.Rule, start_ms: int, end_ms: int, now: int, next_slot_ms: int | None
) -> None:
    """Refuse a backfill range that is not past, not within the job's start and endDate, or
    reaches the slots the schedule releases itself (from its next run's slot on)."""
    begins_ms = job.spec.start_ms or job.spec.created_ms  # start_at 0: the job began when created
    if start_ms > end_ms:
        raise JobValidationError("start", f"{_iso(start_ms)} is after end {_iso(end_ms)}; swap them")
    if start_ms < begins_ms:
        raise JobValidationError(
            "start",
            f"{_iso(start_ms)} is before the job's start {_iso(begins_ms)}; start the range there or later "
            "(a schedule given an earlier start_at can be backfilled from it)",
        )
    if rule.end_ms is not None and end_ms > rule.end_ms:
        raise JobValidationError(
            "end", f"{_iso(end_ms)} is after the job's endDate {_iso(rule.end_ms)}; end the range there"
        )
    if end_ms > now:
        raise JobValidationError("end", f"{_iso(end_ms)} is not past yet; backfill runs past slots only")
    if job.status == JobStatus.SCHEDULED and next_slot_ms is not None and end_ms >= next_slot_ms:
        raise JobValidationError(
            "end",
            f"{_iso(end_ms)} reaches the schedule's next run at {_iso(next_slot_ms)}, which beat "
            "releases itself; end the range before it",
        )


def _at(value_ms: int) -> datetime:
    return cast(datetime, ms_to_datetime(value_ms))


def _existing(job: JobRecord, *, updated: bool = False) -> ScheduleHandle:
    return ScheduleHandle(
        job_id=job.job_id,
        status=job.status,
        scheduled_at=ms_to_datetime(job.next_run_ms or job.created_ms),
        recurring=job.recurring,
        next_run_at=job.next_run_at,
        created=False,
        updated=updated,
    )


def traced_build(messages: MessageBuilder, traceparent: str | None) -> Build:
    """``messages.build`` for a job's first run: a schedule's, handed over at once, starts its own
    trace linked to the span that scheduled it, as each later run (beat's release) does."""

    def build(run_id: str, spec: JobSpec, nominal_ms: int, now_ms: int) -> Message:
        if spec.rule is None:
            return messages.build(run_id, spec, nominal_ms, now_ms)
        with tracing.span("ductape.release", traceparent, link=True, run_id=run_id):
            return messages.build(run_id, spec, nominal_ms, now_ms)

    return build


def new_job_id() -> str:
    """A fresh job id: 128 random bits as 32 hex digits (uuid4().hex's form, a tenth of its cost)."""
    return os.urandom(16).hex()
