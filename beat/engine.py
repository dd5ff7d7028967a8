"""Beat's work, free of Celery: lead, claim what is due, hand it over, advance the schedules.

Claiming, advancing and pushing the Celery message are atomic in each claim script (store.claim
streams them, 250 claims each), so the engine only decides: the next run time of each due
schedule and the message to send, for runs due within PREPARE_AHEAD_MS ahead of their time.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from beat.leader import Leadership
from beat.lost import LostRuns
from beat.retention import Sweeper, SweepTotals
from ductape_jobs import jobfields, ops, timing, tracing
from ductape_jobs.brief import JobBrief
from ductape_jobs.imported import BeatSchedule
from ductape_jobs.jitter import Spread
from ductape_jobs.records import Message, Messages, reason
from ductape_jobs.settings import Settings
from ductape_jobs.store import Claim, DueEntry, Store
from ductape_jobs.terms import run_id_for

log = logging.getLogger("beat")

PREPARE_AHEAD_MS = 250  # due runs are decided this far ahead, then sent at their due time
# Parsed briefs kept between ticks (LRU, by job), for schedules that come back within a few
# hundred releases (every second or so). Bounded by count, not by stored size: a parsed brief
# takes ~2 KiB (ten times its JSON, measured with tracemalloc), so a 4 MiB-of-JSON bound held
# ~20,000 of them (~40 MB) through a large burst, to save ~3 us of parsing each.
BRIEF_CACHE_ENTRIES = 512


@dataclass(frozen=True)
class Release:
    """One new run of a job handed to Celery by a tick (retries handed back are not releases)."""

    job_id: str
    product_tag: str
    event: str
    env: str
    recurring: bool
    lateness_ms: int  # handed over minus due
    missed: int  # slots the misfire policy skipped after this run (timing.missed_slots)


@dataclass
class TickReport:
    """What one tick did (for logs, metrics and tests)."""

    leader: bool = False
    shards: list[int] = field(default_factory=list)  # the shards led in this tick
    released: int = 0
    fenced_out: bool = False
    sleep_ms: int = 0
    lateness_ms: list[int] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    resent: int = 0  # runs whose lost message was sent again (beat.lost)
    swept: SweepTotals | None = None  # what the retention sweep removed, when it ran (beat.retention)
    set_aside: list[Claim] = field(default_factory=list)  # entries beat could not read or decide
    runs_set_aside: int = 0  # in-flight runs the lost-run sweep could not read (beat.lost)


Handed = Callable[[Sequence[Message]], None]


def _nothing(messages: Sequence[Message]) -> None:
    """What ``handed`` does unless told: nothing."""


class BeatEngine:
    """Releases due runs; only the instance holding the leader lock does any work.

    ``handed`` is told of every message pushed to Celery (released runs, retries released from
    the due index, lost runs sent again): the Celery adapter sends ``task-sent`` events for them.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        messages: Messages,
        instance: str,
        *,
        record_releases: bool = False,
        imports: BeatSchedule | None = None,
        handed: Handed = _nothing,
    ) -> None:
        self.store = store
        self.handed = handed
        # A Celery app's beat_schedule, synced each time this beat takes the lead of a shard
        # (its entries in that shard, before it decides anything), under the shard's token.
        self.imports = imports
        # Per-run release records (with the missed-slot count) only feed metrics: skip the work
        # on the hot path unless something reads them.
        self.record_releases = record_releases
        self.settings = settings
        self.messages = messages
        self.instance = instance
        self.leadership = Leadership(store, instance, settings.beat_lock_ttl_ms)
        self._briefs: OrderedDict[str, tuple[str, JobBrief]] = OrderedDict()
        self.shards = [
            ShardWork(store, settings, messages, handed, shard) for shard in range(store.keys.shards)
        ]

    @property
    def lost(self) -> LostRuns:
        """Shard 0's lost-run sweep (a deployment of one shard has no other)."""
        return self.shards[0].lost

    @property
    def sweeper(self) -> Sweeper:
        """Shard 0's retention sweep (the one that also drops long-gone workers)."""
        return self.shards[0].sweeper

    # -- leadership -------------------------------------------------------------------------

    @property
    def token(self) -> str | None:
        """The fencing token we lead shard 0 with (``Leadership`` owns them), or None."""
        return self.leadership.token

    def step_down(self) -> bool:
        """Release the locks so the other beats take over at once (False: not now, see
        Leadership.step_down)."""
        return self.leadership.step_down()

    # -- ticking ----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> TickReport:
        """Release everything due at now_ms (in batches) in each shard we lead, and say how long
        to sleep."""
        report = TickReport()
        tokens = self.leadership.lead()
        for work in self.shards:
            if work.shard not in tokens:
                work.prepared = []
        if not tokens:
            report.sleep_ms = max(self.settings.beat_lock_ttl_ms // 4, 100)
            return report
        report.leader, report.shards = True, sorted(tokens)
        report.sleep_ms = min(self.settings.beat_max_sleep_ms, self.settings.beat_lock_ttl_ms // 3)
        # Leading only some shards: wake for each look at the registry, to take a shard that frees
        if len(tokens) < self.store.keys.shards:
            report.sleep_ms = min(report.sleep_ms, self.leadership.balance_every_ms)
        for shard, token in sorted(tokens.items()):
            sleep_ms = self._tick_shard(report, self.shards[shard], token, now_ms)
            report.sleep_ms = min(report.sleep_ms, sleep_ms)
        return report

    def _tick_shard(self, report: TickReport, work: ShardWork, token: str, now_ms: int) -> int:
        """One shard's tick; how long it may sleep (a shard we were fenced out of: no limit)."""
        idle = self.settings.beat_max_sleep_ms
        if self.imports is not None and token != work.synced and not self._sync(report, work, token, now_ms):
            return idle
        ready = [c for c in work.prepared if c.entry.due_ms <= now_ms]
        if ready and now_ms - min(c.entry.due_ms for c in ready) > PREPARE_AHEAD_MS:
            work.prepared = []  # woke late: decide afresh, with the real time
        elif ready:
            work.prepared = [c for c in work.prepared if c.entry.due_ms > now_ms]
            if not self._hand_over(report, work, token, ready, now_ms):
                return idle
        batch = self.settings.beat_batch
        while True:
            entries = self.store.run(ops.beat.due_entries(work.keys, now_ms, batch))
            if not entries:
                break
            decided = (self._decide(e, now_ms) for e in entries)  # decided as the claims stream out
            if not self._hand_over(report, work, token, decided, now_ms):
                return idle
            if len(entries) < batch:
                break
        aside = work.lost.set_aside
        report.resent += work.lost.sweep(now_ms)
        swept = work.sweeper.sweep(now_ms)
        if swept is not None:
            report.swept = swept if report.swept is None else report.swept.plus(swept)
        report.runs_set_aside += work.lost.set_aside - aside
        return self._prepare(work, now_ms)

    def _sync(self, report: TickReport, work: ShardWork, token: str, now_ms: int) -> bool:
        """Sync the imported beat_schedule entries of the shard; False when fenced out."""
        assert self.imports is not None
        work.prepared = []  # decided under an earlier lead: decide afresh after the sync
        rows, refused = self.imports.rows(now_ms)
        if work.shard == 0:  # refusals are the config's, logged once
            for why in refused:
                log.error("%s", why)
        keys = work.keys
        rows = [row for row in rows if keys.shard_of(row.job_id) == work.shard]
        counts = self.store.run(
            ops.beat.sync_imported(keys, self.store.retention, token, self.imports.app, rows, now_ms)
        )
        if counts is None:
            report.fenced_out, work.prepared = True, []
            self.leadership.fenced_out(work.shard, token)
            return False
        work.synced = token
        log.info(
            "beat_schedule of %r (shard %d): %d created, %d updated, %d unchanged, %d removed",
            self.imports.app, work.shard, *counts,
        )  # fmt: skip
        return True

    def _hand_over(
        self, report: TickReport, work: ShardWork, token: str, claims: Iterable[Claim], now_ms: int
    ) -> bool:
        """Claim and send; False when fenced out (a newer leader exists: we stalled past our lock)."""
        built: list[Message] = []

        def noted() -> Iterator[Claim]:
            for claim in claims:
                if claim.message is not None:
                    built.append(claim.message)
                yield claim

        claimed = self.store.run(
            ops.beat.claim(work.keys, self.store.retention, token, noted(), now_ms, self.settings.runs_kept)
        )
        # Celery's after_task_publish, also for a slot CLAIM_DUE skipped or buffered: a receiver's
        # state for a message (OpenTelemetry's publish span) must end, or it piles up in beat.
        for message in built:
            message.sent()
        if claimed is None:
            report.fenced_out, work.prepared = True, []
            self.leadership.fenced_out(work.shard, token)
            return False
        aside = [c for c in claimed if c.reason]
        if aside:
            claimed = [c for c in claimed if not c.reason]
            report.set_aside += aside
            for c in aside:
                log.error("set aside %s: %s", c.entry.member, c.reason)
        # a buffer_one slot claimed but held back (buffered) is reported too: it is on its way
        self.handed([c.message for c in claimed if c.message is not None])
        report.released += len(claimed)
        report.lateness_ms += [max(now_ms - c.entry.due_ms, 0) for c in claimed]
        if self.record_releases:
            report.releases += [r for r in (self._release(c, now_ms) for c in claimed) if r is not None]
        return True

    def _prepare(self, work: ShardWork, now_ms: int) -> int:
        """Decide ahead what falls due in the shard within PREPARE_AHEAD_MS (as if at its due
        time), so the tick at that time only sends it; how long to sleep."""
        cap = min(self.settings.beat_max_sleep_ms, self.settings.beat_lock_ttl_ms // 3)
        next_due = self.store.run(ops.beat.next_due_ms(work.keys))
        if next_due is None:
            return cap
        if not work.prepared:
            if next_due - now_ms > PREPARE_AHEAD_MS:  # wake up in time to decide ahead
                return max(0, min(cap, next_due - now_ms - PREPARE_AHEAD_MS))
            entries = self.store.run(
                ops.beat.due_entries(work.keys, now_ms + PREPARE_AHEAD_MS, self.settings.beat_batch)
            )
            # Nothing is sent early: a claim holds only if its schedule is unchanged when it is
            # sent at its due time, and carries the same message and next run as if decided then.
            work.prepared = [self._decide(e, e.due_ms) for e in entries if e.due_ms > now_ms]
        return max(0, min(cap, next_due - now_ms))

    def _decide(self, entry: DueEntry, now_ms: int) -> Claim:
        """The claim for one entry; one beat cannot read or decide is set aside with the reason,
        so that it never stops the tick (or comes first again on the next one)."""
        try:
            return self._decide_one(entry, now_ms)
        except UnreadableRecordError as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of one entry is that entry's alone
            why = reason("beat could not decide this job's next run", exc)
        self._note_gone(entry)
        return Claim(entry, entry.run_id or "", entry.due_ms, None, None, why)

    def _decide_one(self, entry: DueEntry, now_ms: int) -> Claim:
        brief = self._brief(entry)
        if brief is None:  # the job is gone; the claim script drops its index entry
            self._note_gone(entry)
            return Claim(entry, entry.run_id or "", entry.due_ms, None, None)
        if entry.run_id is not None:  # a retry waiting out a long backoff
            message = self._message(entry.run_id, brief, entry, now_ms)
            return Claim(entry, entry.run_id, entry.due_ms, None, message)
        rule = brief.timing_rule()
        if rule is None:
            run_id = run_id_for(entry.job_id, entry.due_ms)
            return Claim(entry, run_id, entry.due_ms, None, self._message(run_id, brief, entry, now_ms))
        # A jittered run is due after its slot and keeps the slot's id (ductape_jobs.jitter).
        spread = Spread(rule, entry.job_id, entry.anchor_ms)
        slot_ms = spread.slot_ms(entry.due_ms)
        run_id = run_id_for(entry.job_id, slot_ms)
        message = self._message(run_id, brief, entry, now_ms)
        # The next run is fixed now, when this one is handed over (BullMQ's rule).
        following = spread.next_run(slot_ms, entry.runs_done + 1, now_ms)
        next_ms = None if following is None else following[1]
        if brief.celery is not None:
            # An imported beat_schedule entry sends its own Celery task at every slot, as Celery
            # beat does, and its run is recorded 'sent' (CLAIM_DUE's overlap 'celery').
            return Claim(entry, run_id, slot_ms, next_ms, message, overlap="celery")
        if rule.overlap == "allow":
            return Claim(entry, run_id, slot_ms, next_ms, message)
        # CLAIM_DUE may skip the slot instead (repeat.overlap): a skipped slot does not count
        # toward limit, so its next run differs only where this one would have been the last.
        skip_next = next_ms
        if rule.limit is not None and entry.runs_done + 1 >= rule.limit:
            skipped = spread.next_run(slot_ms, entry.runs_done, now_ms)
            skip_next = None if skipped is None else skipped[1]
        return Claim(entry, run_id, slot_ms, next_ms, message, overlap=rule.overlap, skip_next_ms=skip_next)

    def _release(self, claim: Claim, now_ms: int) -> Release | None:
        entry, brief = claim.entry, self._brief(claim.entry)
        if entry.run_id is not None or brief is None:
            return None
        rule = brief.timing_rule()
        missed = 0
        if rule is not None:
            done, next_ms = entry.runs_done + 1, claim.new_next_ms
            if next_ms is not None:
                next_ms = Spread(rule, entry.job_id, entry.anchor_ms).slot_ms(next_ms)
            missed = timing.missed_slots(rule, entry.anchor_ms, claim.nominal_ms, done, next_ms, now_ms)
        return Release(
            job_id=entry.job_id,
            product_tag=brief.product_tag,
            event=brief.event,
            env=brief.env,
            recurring=rule is not None,
            lateness_ms=max(now_ms - entry.due_ms, 0),
            missed=missed,
        )

    def _note_gone(self, entry: DueEntry) -> None:
        """Log an entry whose record is gone (counted by the claim script: stats due_vanished)."""
        if entry.brief_json is None:
            what = f"run {entry.run_id}" if entry.run_id else f"job {entry.job_id}"
            log.warning("due entry %s: the %s record is gone (evicted?); dropping it", entry.member, what)

    def _message(self, run_id: str, brief: JobBrief, entry: DueEntry, now_ms: int) -> Message:
        # Released when due, so the message carries no ETA (nominal <= now). Built in beat's
        # release span: a recurring run starts its own trace, linked to the span that scheduled
        # the job; a one-off's run stays in that span's trace; a retry handed back (r: entry)
        # stays in its run's trace, kept in its record when the run was first sent.
        parent = entry.traceparent or brief.traceparent
        link = entry.traceparent is None and brief.rule is not None
        with tracing.span("ductape.release", parent, link=link, run_id=run_id):
            return self.messages.from_brief(run_id, brief, min(entry.due_ms, now_ms), now_ms)

    def _brief(self, entry: DueEntry) -> JobBrief | None:
        """The entry's brief, parsed once while it stays unchanged; raises when unreadable."""
        stored = entry.brief_json
        if stored is None:
            return None
        cached = self._briefs.get(entry.job_id)
        if cached is not None and cached[0] == stored:
            self._briefs.move_to_end(entry.job_id)
            return cached[1]
        try:
            brief = jobfields.read_brief(stored)
        except ValueError as exc:  # a damaged record: the checked dataclasses raise ValueError
            raise UnreadableRecordError(reason("beat could not read this job's record", exc)) from None
        if jobfields.holds_spec(stored):  # a record older than briefs: its spec is too big to keep
            return brief
        self._briefs[entry.job_id] = (stored, brief)
        self._briefs.move_to_end(entry.job_id)
        if len(self._briefs) > BRIEF_CACHE_ENTRIES:
            self._briefs.popitem(last=False)
        return brief


class ShardWork:
    """What the engine keeps for one shard: its keys, the claims decided ahead, its lost-run
    sweep and retention sweep, and the token its imports were last synced under."""

    def __init__(
        self, store: Store, settings: Settings, messages: Messages, handed: Handed, shard: int
    ) -> None:
        self.shard = shard
        self.keys = store.keys.for_shard(shard)
        self.prepared: list[Claim] = []  # decided ahead for the next due time (see _prepare)
        self.lost = LostRuns(store, settings, messages, handed, self.keys)
        self.sweeper = Sweeper(store, self.keys)
        self.synced: str | None = None  # the token the imports were last synced under


class UnreadableRecordError(Exception):
    """A job record beat cannot read; its message is the reason the entry is set aside with."""
