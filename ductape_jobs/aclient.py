"""The asyncio producer: ``AsyncDuctape`` and its ``job`` namespace, every method awaitable.

Same methods, arguments, results and errors as ``Ductape`` (client.py): both drive the flows of
flows.py, this one over ``redis.asyncio``. Create it inside the event loop that uses it (its
connections belong to that loop) and ``await aclose()`` it, or use ``async with``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Unpack

import redis.asyncio as aredis

from ductape_jobs.astore import AsyncStore
from ductape_jobs.connection import connect_async
from ductape_jobs.flows import ClientCore, JobFilter, Request, RunIds, Runs, SetAsides, Times
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRecord, JobRequest, RunRecord, ScheduleHandle
from ductape_jobs.ops import Replicas
from ductape_jobs.records import JobList, Message


class AsyncDuctape(ClientCore):
    """The ductape-jobs client for asyncio: ``await ductape.job.schedule(...)`` and friends."""

    redis: aredis.Redis
    store: AsyncStore
    job: AsyncJobClient

    def _open(self) -> None:
        self.redis = connect_async(self.settings)
        keys = Keys(self.settings.key_prefix, self.settings.shards)
        self.store = AsyncStore(self.redis, keys, Replicas.of(self.settings))
        self.job = AsyncJobClient(self)
        self._sending: set[asyncio.Future[None]] = set()

    def handed(self, messages: Sequence[Message]) -> None:
        """``task-sent`` events, when on, are published by kombu, which blocks: on a thread, so
        the event loop never waits for them (``aclose()`` does)."""
        if not self.sent.enabled or not messages:
            return
        sending = asyncio.get_running_loop().run_in_executor(None, self.sent, messages)
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def aclose(self) -> None:
        """Release connections (once the task-sent events under way are out)."""
        await asyncio.gather(*self._sending)
        await self.redis.aclose()
        self.sent.close()
        self.celery.close()

    async def __aenter__(self) -> AsyncDuctape:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncJobClient:
    """``ductape.job`` for asyncio; each method is the awaitable form of ``JobClient``'s."""

    def __init__(self, owner: AsyncDuctape) -> None:
        self._flows = owner.flows
        self._run = owner.store.run
        self._revoke = owner.revoke

    async def schedule(self, request: Request | None = None, /, **fields: Any) -> ScheduleHandle:
        """Awaitable ``JobClient.schedule``: validate, store and (when due) hand a job to Celery."""
        return await self._run(self._flows.schedule(request, fields))

    async def schedule_many(self, requests: Sequence[Request]) -> list[ScheduleHandle]:
        """Awaitable ``JobClient.schedule_many``: all validated first, then written in one round trip."""
        return await self._run(self._flows.schedule_many(requests))

    async def validate(self, request: Request) -> JobRequest:
        """Awaitable ``JobClient.validate``: check a request as ``schedule()`` would, writing nothing."""
        return await self._run(self._flows.validate(request))

    async def get(self, job_id: str) -> JobRecord:
        """Awaitable ``JobClient.get``: the job's record, or JobNotFoundError."""
        return await self._run(self._flows.get(job_id))

    async def list(self, **filters: Unpack[JobFilter]) -> JobList:
        """Awaitable ``JobClient.list``: jobs, newest first, filtered."""
        return await self._run(self._flows.list(**filters))

    async def runs(self, job_id: str, limit: int = 20) -> Runs:
        """Awaitable ``JobClient.runs``: the job's recent runs, newest first."""
        return await self._run(self._flows.runs(job_id, limit))

    async def failed(self, limit: int = 100) -> Runs:
        """Awaitable ``JobClient.failed``: dead-lettered runs, newest first."""
        return await self._run(self._flows.failed(limit))

    async def set_aside(self, limit: int = 100) -> SetAsides:
        """Awaitable ``JobClient.set_aside``: jobs beat could not read or decide, newest first."""
        return await self._run(self._flows.set_aside(limit))

    async def upcoming(self, job_id: str, n: int = 5) -> Times:
        """Awaitable ``JobClient.upcoming``: the next n run times."""
        return await self._run(self._flows.upcoming(job_id, n))

    async def update(self, job_id: str, /, **fields: Any) -> JobRecord:
        """Awaitable ``JobClient.update``: change a live job in place, same job id, runs kept."""
        return await self._run(self._flows.update(job_id, fields))

    async def cancel(self, job_id: str, *, terminate: bool = False) -> JobRecord:
        """Awaitable ``JobClient.cancel``: no further runs; running runs cancelled."""
        job, revoke = await self._run(self._flows.cancel(job_id, terminate))
        await asyncio.to_thread(self._revoke, revoke)  # Celery's broadcast is blocking I/O
        return job

    async def cancel_run(self, run_id: str, *, terminate: bool = False) -> RunRecord:
        """Awaitable ``JobClient.cancel_run``: stop one run, its schedule going on."""
        run, revoke = await self._run(self._flows.cancel_run(run_id, terminate))
        await asyncio.to_thread(self._revoke, revoke)
        return run

    async def pause(self, job_id: str) -> JobRecord:
        """Awaitable ``JobClient.pause``: hold a scheduled job."""
        return await self._run(self._flows.pause(job_id))

    async def resume(self, job_id: str) -> JobRecord:
        """Awaitable ``JobClient.resume``: back on its schedule."""
        return await self._run(self._flows.resume(job_id))

    async def trigger(self, job_id: str) -> str:
        """Awaitable ``JobClient.trigger``: one extra run now; its run id."""
        return await self._run(self._flows.trigger(job_id))

    async def redrive(self, run_id: str) -> str:
        """Awaitable ``JobClient.redrive``: a dead-lettered run again; its run id."""
        return await self._run(self._flows.redrive(run_id))

    async def backfill(self, job_id: str, start: object, end: object) -> RunIds:
        """Awaitable ``JobClient.backfill``: every slot of a past range once; the run ids added."""
        return await self._run(self._flows.backfill(job_id, start, end))


__all__ = ["AsyncDuctape", "AsyncJobClient"]
