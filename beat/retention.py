"""Removing what left: beat's sweep over finished jobs, dead letters and the jobs index.

Finished jobs get their retention when they finish (the scripts put them in the ``retired``
index with the time it ends, and give their keys a TTL as a backstop); this sweep, run by the
leader about once a second with bounded work per call, deletes them then with their runs and
every index entry pointing at them, trims the dead letters to their retention and cap (counting
what it drops), walks the jobs index a slice at a time for entries whose record is gone, and
once a minute drops the registrations of workers not seen for the job retention.
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass

from ductape_jobs import ops
from ductape_jobs.keys import Keys
from ductape_jobs.store import Store, Swept

log = logging.getLogger("beat")

SWEEP_EVERY_MS = 1_000
SWEEP_LIMIT = 250  # records per sweep call: keeps each call to about a millisecond of server time
SWEEP_CALLS_MAX = 4  # calls per pass while a call comes back full (catching up)
WORKERS_EVERY_MS = 60_000  # how often registrations of long-gone workers are looked for


@dataclass
class SweepTotals:
    """What one pass removed, summed over its calls."""

    jobs_expired: int = 0
    dead_dropped: int = 0
    retired: int = 0
    jobs_vanished: int = 0
    workers_forgotten: int = 0

    def add(self, got: Swept) -> None:
        """Count one call's removals."""
        self.jobs_expired += got.jobs_expired
        self.dead_dropped += got.dead_dropped
        self.retired += got.retired
        self.jobs_vanished += got.jobs_vanished

    def plus(self, other: SweepTotals) -> SweepTotals:
        """Both passes' removals (one pass per shard in a tick)."""
        return SweepTotals(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class Sweeper:
    """Runs the sweep of one shard (``keys``, shard 0 unless told) at most every SWEEP_EVERY_MS;
    keeps its place in the shard's jobs index. Shard 0's also drops long-gone workers."""

    def __init__(self, store: Store, keys: Keys | None = None) -> None:
        self.store = store
        self.keys = store.keys if keys is None else keys
        self.cursor = 0
        self._next_ms = 0
        self._workers_next_ms = 0

    def sweep(self, now_ms: int) -> SweepTotals | None:
        """One pass when it is time (None otherwise): what it removed."""
        if now_ms < self._next_ms:
            return None
        self._next_ms = now_ms + SWEEP_EVERY_MS
        totals = SweepTotals()
        for _ in range(SWEEP_CALLS_MAX):
            got = self.store.run(
                ops.beat.sweep(self.keys, self.store.retention, now_ms, SWEEP_LIMIT, self.cursor)
            )
            self.cursor = got.next_cursor
            totals.add(got)
            if max(got.jobs_expired, got.dead_dropped) < SWEEP_LIMIT:
                break
        if self.keys.shard == 0 and now_ms >= self._workers_next_ms:
            self._workers_next_ms = now_ms + WORKERS_EVERY_MS
            totals.workers_forgotten = self.store.run(
                ops.beat.forget_workers(self.keys, now_ms - self.store.retention.job_s * 1000)
            )
        if totals.jobs_vanished:
            log.warning(
                "%d job record(s) vanished from Redis before their retention (evicted, or deleted by "
                "hand?); their index entries were removed (counted as jobs_vanished, see doctor)",
                totals.jobs_vanished,
            )
        return totals
