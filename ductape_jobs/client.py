"""The producer side: ``Ductape`` and its ``job`` namespace (schedule, inspect, manage)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis

from ductape_jobs import timing
from ductape_jobs.celery_app import create_app
from ductape_jobs.errors import (
    BackendUnavailableError,
    JobNotFoundError,
    JobStateError,
    JobValidationError,
    UnknownEventError,
)
from ductape_jobs.keys import Keys
from ductape_jobs.models import (
    JobRecord,
    JobRequest,
    JobStatus,
    RunRecord,
    ScheduleHandle,
    job_id_of,
    ms_to_datetime,
)
from ductape_jobs.planning import plan_job
from ductape_jobs.publisher import Publisher
from ductape_jobs.sealed import Vault
from ductape_jobs.sessions import Sessions, session_types_from_config
from ductape_jobs.settings import Settings
from ductape_jobs.store import NewJob, Store
from ductape_jobs.wire import MessageBuilder


def now_ms() -> int:
    """The wall clock in epoch ms; read only at the edges and passed in."""
    return time.time_ns() // 1_000_000


def connect(settings: Settings) -> redis.Redis:
    """A Redis client with bounded timeouts, so an outage fails fast instead of hanging."""
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )


Jobs = list[JobRecord]
Runs = list[RunRecord]


class Ductape:
    """The ductape-jobs client: ``ductape.job.schedule(...)`` and friends."""

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
        self.redis = connect(settings)
        self.store = Store(self.redis, Keys(settings.key_prefix))
        self.sessions = Sessions(session_types_from_config(settings.sessions))
        self.vault = Vault(self.sessions)
        self.celery = create_app(settings, name="ductape_jobs.producer")
        self.messages = MessageBuilder(self.celery, settings)
        self.publisher = Publisher(self.store, self.messages)
        self.job = JobClient(self)

    def __repr__(self) -> str:
        return f"Ductape(key_prefix={self.settings.key_prefix!r})"

    def close(self) -> None:
        """Release connections."""
        self.redis.close()
        self.celery.close()

    def __enter__(self) -> Ductape:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobClient:
    """``ductape.job``: schedule jobs and look after them."""

    def __init__(self, owner: Ductape) -> None:
        self._owner = owner
        self._store = owner.store
        self._settings = owner.settings
        self._known_events: set[tuple[str, str]] = set()

    # -- scheduling -------------------------------------------------------------------------

    def schedule(
        self, request: JobRequest | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> ScheduleHandle:
        """Validate, store and (when due) hand a job to Celery; nothing is written if it is refused."""
        if request is not None and fields:
            raise JobValidationError("request", "pass either one dict/JobRequest or keyword fields, not both")
        return self.schedule_many([request if request is not None else fields])[0]

    def schedule_many(self, requests: Sequence[JobRequest | Mapping[str, Any]]) -> list[ScheduleHandle]:
        """Schedule a batch: every request is validated first, then all are written in one round trip."""
        now = now_ms()
        plans: list[NewJob] = []
        for index, raw in enumerate(requests):
            try:
                req = JobRequest.parse(dict(raw) if isinstance(raw, Mapping) else raw)
                self._check_event(req.product_tag, req.event)
                plan = plan_job(req, self._settings, self._owner.sessions, now, uuid.uuid4().hex)
                if plan.run_id is not None:
                    message = self._owner.messages.build(plan.run_id, plan.spec, plan.nominal_ms or now, now)
                    plan = replace(plan, message=message)
                plans.append(plan)
            except JobValidationError as exc:
                if len(requests) > 1:
                    raise type(exc)(f"requests[{index}].{exc.field}", str(exc).split(": ", 1)[1]) from None
                raise
        outcomes = self._store.create_jobs(plans, now)
        handles = []
        for plan, (job_id, created) in zip(plans, outcomes, strict=True):
            if created:
                handles.append(_handle(plan))
            else:
                handles.append(self._existing_handle(job_id))
        return handles

    def validate(self, request: JobRequest | Mapping[str, Any]) -> JobRequest:
        """Check a request exactly as ``schedule()`` would, writing and sending nothing."""
        req = JobRequest.parse(dict(request) if isinstance(request, Mapping) else request)
        self._check_event(req.product_tag, req.event)
        plan_job(req, self._settings, self._owner.sessions, now_ms(), "validate")
        return req

    def _check_event(self, product_tag: str, event: str) -> None:
        if not self._settings.require_handler or (product_tag, event) in self._known_events:
            return
        if self._store.events_known(product_tag, event):
            self._known_events.add((product_tag, event))
            return
        known = self._store.known_events(product_tag)
        raise UnknownEventError(
            "event",
            f"no worker has registered a handler for {product_tag}/{event} (known for {product_tag}: "
            f"{known or 'none'}); start a worker with that handler in DUCTAPE_HANDLERS, or set "
            "DUCTAPE_REQUIRE_HANDLER=false to schedule before deploying it",
        )

    def _existing_handle(self, job_id: str) -> ScheduleHandle:
        job = self.get(job_id)
        when = job.next_run_ms or job.created_ms
        return ScheduleHandle(
            job_id=job_id,
            status=job.status,
            scheduled_at=ms_to_datetime(when),  # type: ignore[arg-type]
            recurring=job.recurring,
            next_run_at=job.next_run_at,
            created=False,
        )

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """The job's record; JobNotFoundError when there is none."""
        job = self._store.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r} under key prefix {self._settings.key_prefix!r}")
        return self._opened(job)

    def list(
        self,
        *,
        env: str | None = None,
        product_tag: str | None = None,
        event: str | None = None,
        status: str | JobStatus | None = None,
        limit: int = 100,
    ) -> Jobs:
        """Jobs, newest first, filtered by env, product, event and status."""
        wanted = {"env": env, "product_tag": product_tag, "event": event}
        out: Jobs = []
        ids = self._store.job_ids(limit=max(limit * 10, 1000))
        for start in range(0, len(ids), 500):
            for job in self._store.get_jobs(ids[start : start + 500]):
                if status is not None and job.status != JobStatus(status):
                    continue
                if any(v is not None and getattr(job.spec, k) != v for k, v in wanted.items()):
                    continue
                out.append(self._opened(job))
                if len(out) >= limit:
                    return out
        return out

    def runs(self, job_id: str, limit: int = 20) -> Runs:
        """The job's recent runs, newest first."""
        spec = self.get(job_id).spec
        runs = self._store.get_runs(self._store.recent_run_ids(job_id, limit))
        vault = self._owner.vault
        return [run.model_copy(update={"result": vault.open_result(spec, run.result)}) for run in runs]

    def _opened(self, job: JobRecord) -> JobRecord:
        # A session job's result is stored sealed; this client holds the secret to open it.
        return job.model_copy(update={"result": self._owner.vault.open_result(job.spec, job.result)})

    def failed(self, limit: int = 100) -> Runs:
        """Dead-lettered runs, newest first."""
        return self._store.get_runs(self._store.dead_run_ids(limit))

    def upcoming(self, job_id: str, n: int = 5) -> Any:
        """The next n run times (aware UTC datetimes), honouring limit, endDate and tz."""
        job = self.get(job_id)
        if job.status not in (JobStatus.SCHEDULED, JobStatus.PAUSED) or job.next_run_ms is None:
            return []
        rule = job.spec.timing_rule()
        if rule is None:
            return [ms_to_datetime(job.next_run_ms)]
        anchor = self._store.anchor_ms(job_id)
        times = timing.upcoming_ms(rule, anchor, job.next_run_ms, job.runs_done, n)
        return [ms_to_datetime(t) for t in times]

    # -- managing ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobRecord:
        """Stop the job: no further runs; released runs that have not started are skipped."""
        return self._change("cancel", job_id)

    def pause(self, job_id: str) -> JobRecord:
        """Hold a scheduled job; runs already handed to workers still run."""
        return self._change("pause", job_id)

    def resume(self, job_id: str) -> JobRecord:
        """Put a paused job back on its schedule; a missed slot runs once, then back on phase."""
        job = self.get(job_id)
        if job.status != JobStatus.PAUSED:
            raise JobStateError(
                f"job {job_id} is {job.status.value}, not paused; only a paused job can resume"
            )
        now = now_ms()
        next_ms = job.next_run_ms
        rule = job.spec.timing_rule()
        if next_ms is not None and rule is not None and next_ms < now:
            anchor = self._store.anchor_ms(job_id)
            nxt = timing.occurrence_after_ms(rule, anchor, now - 1)
            if nxt is not None and rule.end_ms is not None and nxt > rule.end_ms:
                nxt = None
            next_ms = nxt
        elif next_ms is not None:
            next_ms = max(next_ms, now) if rule is None else next_ms
        return self._change("resume", job_id, next_ms=next_ms, runs_done=job.runs_done)

    def trigger(self, job_id: str) -> str:
        """Run the job once more now, outside its schedule (not counted toward limit); returns the run id."""
        now = now_ms()
        run_id = f"{job_id}:{now}m"
        message = self._owner.messages.build(run_id, self.get(job_id).spec, now, now)
        verdict, status = self._store.add_run("trigger", job_id, run_id, now, message)
        self._refused(verdict, status, job_id, "trigger")
        return run_id

    def redrive(self, run_id: str) -> str:
        """Run a dead-lettered run again with fresh attempts; returns its run id."""
        now = now_ms()
        job_id = job_id_of(run_id)
        message = self._owner.messages.build(run_id, self.get(job_id).spec, now, now)
        verdict, status = self._store.add_run("redrive", job_id, run_id, now, message)
        self._refused(verdict, status, run_id, "redrive")
        return run_id

    def _change(self, action: str, job_id: str, next_ms: int | None = None, runs_done: int = 0) -> JobRecord:
        verdict, status = self._store.change_state(action, job_id, now_ms(), next_ms, runs_done)
        self._refused(verdict, status, job_id, action)
        return self.get(job_id)

    def _refused(self, verdict: str, status: str | None, what: str, action: str) -> None:
        if verdict == "missing" or status == "missing":  # redrive: the job exists, the run does not
            raise JobNotFoundError(f"no job or run {what!r} under key prefix {self._settings.key_prefix!r}")
        if verdict == "refused":
            raise JobStateError(f"cannot {action} {what}: it is {status}")


def _handle(plan: NewJob) -> ScheduleHandle:
    when = plan.nominal_ms if plan.run_id is not None else plan.next_run_ms
    return ScheduleHandle(
        job_id=plan.job_id,
        status=JobStatus.QUEUED if plan.run_id is not None and not plan.recurring else plan.status,
        scheduled_at=ms_to_datetime(when or plan.anchor_ms),  # type: ignore[arg-type]
        recurring=plan.recurring,
        next_run_at=ms_to_datetime(plan.next_run_ms if plan.recurring else when),
    )


__all__ = ["BackendUnavailableError", "Ductape", "JobClient", "connect", "now_ms"]
