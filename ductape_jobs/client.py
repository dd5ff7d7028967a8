"""The producer side: ``Ductape`` and its ``job`` namespace (schedule, inspect, manage).

The logic of every ``job.*`` method lives in flows.py, shared with ``AsyncDuctape`` (aclient.py);
this client drives those flows over a blocking Redis connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

import redis

from ductape_jobs.connection import connect
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.flows import ClientCore, JobFilter, Request, RunIds, Runs, SetAsides, Times
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRecord, JobRequest, RunRecord, ScheduleHandle
from ductape_jobs.ops import Replicas
from ductape_jobs.records import JobList
from ductape_jobs.store import Retention, Store


class Ductape(ClientCore):
    """The ductape-jobs client: ``ductape.job.schedule(...)`` and friends."""

    redis: redis.Redis
    store: Store
    job: JobClient

    def _open(self) -> None:
        self.redis = connect(self.settings)
        keys = Keys(self.settings.key_prefix, self.settings.shards)
        self.store = Store(self.redis, keys, Retention.of(self.settings), Replicas.of(self.settings))
        self.job = JobClient(self)

    def close(self) -> None:
        """Release connections."""
        self.redis.close()
        self.sent.close()
        self.celery.close()

    def __enter__(self) -> Ductape:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobClient:
    """``ductape.job``: schedule jobs and look after them."""

    def __init__(self, owner: Ductape) -> None:
        self._flows = owner.flows
        self._run = owner.store.run
        self._revoke = owner.revoke

    def schedule(self, request: Request | None = None, /, **fields: Any) -> ScheduleHandle:
        """Validate, store and (when due) hand a job to Celery; nothing is written if it is refused."""
        return self._run(self._flows.schedule(request, fields))

    def schedule_many(self, requests: Sequence[Request]) -> list[ScheduleHandle]:
        """Schedule a batch: every request is validated first, then all are written in one round trip."""
        return self._run(self._flows.schedule_many(requests))

    def validate(self, request: Request) -> JobRequest:
        """Check a request exactly as ``schedule()`` would, writing and sending nothing."""
        return self._run(self._flows.validate(request))

    def get(self, job_id: str) -> JobRecord:
        """The job's record; JobNotFoundError when there is none."""
        return self._run(self._flows.get(job_id))

    def list(self, **filters: Unpack[JobFilter]) -> JobList:
        """Jobs, newest first, filtered by env, product, event and status; records that can't be
        read are skipped and reported in the list's ``unreadable``."""
        return self._run(self._flows.list(**filters))

    def runs(self, job_id: str, limit: int = 20) -> Runs:
        """The job's recent runs, newest first."""
        return self._run(self._flows.runs(job_id, limit))

    def failed(self, limit: int = 100) -> Runs:
        """Dead-lettered runs, newest first."""
        return self._run(self._flows.failed(limit))

    def set_aside(self, limit: int = 100) -> SetAsides:
        """Jobs beat could not read or decide, newest first: each failed with the reason."""
        return self._run(self._flows.set_aside(limit))

    def upcoming(self, job_id: str, n: int = 5) -> Times:
        """The next n run times (aware UTC datetimes), honouring limit, endDate and tz."""
        return self._run(self._flows.upcoming(job_id, n))

    def update(self, job_id: str, /, **fields: Any) -> JobRecord:
        """Change a live job in place (``repeat``, ``input``, ``retries``, ``timeout``, ``start_at``,
        ``app``, ``cache``, ``session``): same job id, its runs kept, the next run from the new rule."""
        return self._run(self._flows.update(job_id, fields))

    def cancel(self, job_id: str, *, terminate: bool = False) -> JobRecord:
        """Stop the job: no further runs; released runs that have not started are skipped; its
        running runs are cancelled (``terminate``: their worker processes are killed)."""
        job, revoke = self._run(self._flows.cancel(job_id, terminate))
        self._revoke(revoke)
        return job

    def cancel_run(self, run_id: str, *, terminate: bool = False) -> RunRecord:
        """Stop one run, its schedule going on: ``ctx.cancelled()`` turns True in its handler
        (``terminate``: its worker process is killed); it ends ``cancelled``, never retried."""
        run, revoke = self._run(self._flows.cancel_run(run_id, terminate))
        self._revoke(revoke)
        return run

    def pause(self, job_id: str) -> JobRecord:
        """Hold a scheduled job; runs already handed to workers still run."""
        return self._run(self._flows.pause(job_id))

    def resume(self, job_id: str) -> JobRecord:
        """Put a paused job back on its schedule; slots missed while paused are skipped, phase kept."""
        return self._run(self._flows.resume(job_id))

    def trigger(self, job_id: str) -> str:
        """Run the job once more now, outside its schedule (not counted toward limit); returns the run id."""
        return self._run(self._flows.trigger(job_id))

    def redrive(self, run_id: str) -> str:
        """Run a dead-lettered run again with fresh attempts; returns its run id."""
        return self._run(self._flows.redrive(run_id))

    def backfill(self, job_id: str, start: object, end: object) -> RunIds:
        """Run every slot of a past range [start, end] once, under the slots' own run ids (not
        counted toward limit, outside repeat.overlap); returns the run ids added."""
        return self._run(self._flows.backfill(job_id, start, end))


__all__ = ["BackendUnavailableError", "Ductape", "JobClient"]
