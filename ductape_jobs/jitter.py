"""Jitter: each run of a recurring job falls due a little after its slot, the same for everyone.

A run keeps its slot's id (``{job_id}:{slot_ms}``), so dedupe, ``limit`` and the missed-run
rules all work on slots; only the time it falls due moves, by an offset in ``[0, jitter_ms)``
taken from a hash of that run id. Any process (a redelivery, a restarted beat, a standby that
takes over, ``upcoming()``) computes the same due time from the rule alone: nothing random and
nothing extra is stored. Python's ``hash()`` is salted per process, so blake2b is used.

Two rules keep the mapping from a due time back to its slot unique: ``jitter_ms`` is below the
rule's period (models.Repeat), and a run falls due before the next slot even where a clock change
brings two cron slots closer. A run never falls due after ``endDate``: a slot at or before it is
due at ``min(slot + offset, endDate)`` (clamped, never dropped, so a jittered schedule runs as many
times as the same schedule without jitter). Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib

from ductape_jobs import timing
from ductape_jobs.terms import run_id_for


def offset_ms(run_id: str, window_ms: int) -> int:
    """A stable offset in ``[0, window_ms)`` for a run id (0 for an empty window)."""
    if window_ms <= 1:
        return 0
    digest = hashlib.blake2b(run_id.encode(), digest_size=8, person=b"ductape-jitter").digest()
    return int.from_bytes(digest, "big") % window_ms


class Spread:
    """When each slot of one recurring job falls due, and back."""

    def __init__(self, rule: timing.Rule, job_id: str, anchor_ms: int) -> None:
        self.rule = rule
        self.job_id = job_id
        self.anchor_ms = anchor_ms

    def due_ms(self, slot_ms: int) -> int:
        """When the run of a slot falls due: ``slot + offset``, before the next slot, by endDate."""
        jitter_ms = self.rule.jitter_ms
        if jitter_ms == 0:
            return slot_ms
        window_ms = jitter_ms
        # The next slot is at least jitter_ms away (models check the period), unless a clock
        # change between brings a zoned cron's next slot closer: only then is it looked up.
        if self.rule.cron is not None and timing.clock_changes(self.rule.tz, slot_ms, slot_ms + jitter_ms):
            following_ms = timing.occurrence_after_ms(self.rule, self.anchor_ms, slot_ms)
            if following_ms is not None:
                window_ms = min(jitter_ms, following_ms - slot_ms)
        at_ms = slot_ms + offset_ms(run_id_for(self.job_id, slot_ms), window_ms)
        if self.rule.end_ms is not None and slot_ms <= self.rule.end_ms:
            at_ms = min(at_ms, self.rule.end_ms)
        return min(at_ms, timing.MAX_MS)

    def slot_ms(self, due_ms: int) -> int:
        """The slot whose run falls due at due_ms; a time no slot maps to (one written without
        jitter) is its own slot, as it would be without jitter."""
        jitter_ms = self.rule.jitter_ms
        if jitter_ms == 0:
            return due_ms
        # due(slot) lies in [slot, slot + jitter_ms) and before the next slot: at most a few
        # slots (one for 'every') can map to due_ms, and exactly one does.
        at_ms = timing.occurrence_after_ms(self.rule, self.anchor_ms, due_ms - jitter_ms)
        while at_ms is not None and at_ms <= due_ms:
            if self.due_ms(at_ms) == due_ms:
                return at_ms
            at_ms = timing.occurrence_after_ms(self.rule, self.anchor_ms, at_ms)
        return due_ms

    def next_run(self, released_slot_ms: int, runs_done: int, now_ms: int) -> tuple[int, int] | None:
        """The next run after the released slot as (slot, due), or None when the schedule ends;
        the misfire policy measures lateness from due times."""
        rule, anchor_ms = self.rule, self.anchor_ms
        slot_ms = timing.next_run_ms(rule, anchor_ms, released_slot_ms, runs_done, now_ms, self.due_ms)
        return None if slot_ms is None else (slot_ms, self.due_ms(slot_ms))

    def first_due_from(self, from_ms: int) -> int | None:
        """The due time of the first run due at or after from_ms (resuming skips what was missed)."""
        slot_ms = timing.first_due_from(self.rule, self.anchor_ms, from_ms, self.due_ms)
        if slot_ms is None or (self.rule.end_ms is not None and slot_ms > self.rule.end_ms):
            return None
        return self.due_ms(slot_ms)

    def upcoming_ms(self, next_due_ms: int, runs_done: int, n: int) -> list[int]:
        """The due times of the next n runs, starting with the one due at next_due_ms."""
        slots = timing.upcoming_ms(self.rule, self.anchor_ms, self.slot_ms(next_due_ms), runs_done, n)
        return [self.due_ms(s) for s in slots]
