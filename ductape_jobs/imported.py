"""A Celery app's ``beat_schedule`` as schedules of ours: their ids, specs and what the leader's
SYNC_IMPORTED writes. Pure: the clock comes in; beat/imported.py reads the entries from Celery.

An imported entry is a recurring job whose runs send the entry's own Celery task (its
``JobSpec.celery``) instead of one of our handlers' tasks; its job id is derived from the app's
name and the entry's name, so every beat of that app names it the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ductape_jobs import jobfields
from ductape_jobs.errors import JobValidationError
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import CeleryCall

if TYPE_CHECKING:
    from ductape_jobs.models import Repeat

PRODUCT_TAG = "beat_schedule"  # what ``ductape-jobs list --product-tag`` finds them by
_NOT_SLUG = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ImportedEntry:
    """One ``beat_schedule`` entry: the task it sends and its recurrence."""

    call: CeleryCall
    repeat: Repeat


@dataclass(frozen=True)
class ImportRow:
    """What SYNC_IMPORTED writes for one entry."""

    job_id: str
    digest: str  # of everything the config says of the entry: unchanged digest, untouched job
    spec: str  # its spec's fields packed (jobfields.pack_spec)
    next_run_ms: int
    anchor_ms: int


class ImportCounts(NamedTuple):
    """What one SYNC_IMPORTED did."""

    created: int
    updated: int
    unchanged: int
    removed: int


def job_id_for(app: str, entry: str) -> str:
    """The stable job id of entry ``entry`` of Celery app ``app`` (32 hex digits, as any job's)."""
    return hashlib.sha256(f"beat_schedule\0{app}\0{entry}".encode()).hexdigest()[:32]


def slug(name: str) -> str:
    """``name`` made a slug (a task or app name as our event and app fields hold it)."""
    made = _NOT_SLUG.sub("_", name)[:128]
    return made if made[:1].isalnum() else ("x" + made)[:128]


class BeatSchedule:
    """The entries one Celery app's beat imports; ``rows`` plans them at the sync's time."""

    def __init__(self, app: str, entries: list[ImportedEntry], settings: Settings) -> None:
        self.app = app
        self.entries = entries
        self.settings = settings

    def rows(self, now_ms: int) -> tuple[list[ImportRow], list[str]]:
        """The rows to sync, and a reason (naming the entry) for each entry refused."""
        rows, refused = [], []
        for entry in self.entries:
            try:
                rows.append(self._row(entry, now_ms))
            except JobValidationError as exc:
                refused.append(f"beat_schedule entry {entry.call.entry!r} not imported: {exc}")
        return rows, refused

    def _row(self, entry: ImportedEntry, now_ms: int) -> ImportRow:
        # Imported here: planning validates through the request models (pydantic, ~10 MB a
        # process), which a beat without beat_schedule entries never loads.
        from ductape_jobs.models import JobRequest
        from ductape_jobs.planning import plan_job

        call = entry.call
        request = JobRequest(
            env=self.settings.envs[0],
            product_tag=PRODUCT_TAG,
            event=slug(call.task),
            app=slug(self.app),
            input={"args": call.args, "kwargs": call.kwargs},
            repeat=entry.repeat,
        )
        job_id = job_id_for(self.app, call.entry)
        # plan_job checks what any schedule is checked for (rate, input size and shape, tz).
        planned = plan_job(request, self.settings, Sessions({}), now_ms, job_id)
        spec = dataclasses.replace(planned.spec, celery=call)
        said = [request.model_dump(mode="json"), dataclasses.asdict(call)]
        digest = hashlib.sha256(json.dumps(said, sort_keys=True, default=str).encode()).hexdigest()[:32]
        # The first slot goes to the due index (beat releases it), never straight to Celery here.
        return ImportRow(
            job_id,
            digest,
            jobfields.pack_spec(spec),
            planned.anchor_ms,
            planned.anchor_ms,
        )
