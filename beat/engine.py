"""Beat's work, free of Celery: lead, claim what is due, hand it over, advance the schedules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ductape_jobs import timing
from ductape_jobs.models import JobSpec, run_id_for
from ductape_jobs.settings import Settings
from ductape_jobs.store import Claim, Dispatch, DueEntry, Store

log = logging.getLogger("beat")

DispatchFn = Callable[[Sequence[Dispatch], int], list[str]]


@dataclass
class TickReport:
    """What one tick did (for logs, metrics and tests)."""

    leader: bool = False
    released: int = 0
    republished: int = 0
    fenced_out: bool = False
    sleep_ms: int = 0
    lateness_ms: list[int] = field(default_factory=list)


class BeatEngine:
    """Releases due runs; only the instance holding the leader lock does any work."""

    def __init__(self, store: Store, settings: Settings, dispatch: DispatchFn, instance: str) -> None:
        self.store = store
        self.settings = settings
        self.dispatch = dispatch
        self.instance = instance
        self.token: str | None = None
        self._specs: dict[str, tuple[str, JobSpec]] = {}

    # -- leadership -------------------------------------------------------------------------

    def lead(self) -> bool:
        """Renew our lock, or take it when free; returns whether we lead now."""
        ttl = self.settings.beat_lock_ttl_ms
        if self.token is not None and self.store.renew_lock(self.token, ttl):
            return True
        if self.token is not None:
            log.warning("beat %s lost the leader lock", self.instance)
        acquired, token = self.store.acquire_lock(self.instance, ttl)
        self.token = token if acquired else None
        if acquired:
            log.info("beat %s is leader (fencing token %s)", self.instance, token.split(":", 1)[0])
        return acquired

    def step_down(self) -> None:
        """Release the lock so a standby takes over at once."""
        if self.token is not None:
            self.store.release_lock(self.token)
            self.token = None

    # -- ticking ----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> TickReport:
        """Release everything due at now_ms (in batches) and say how long to sleep."""
        report = TickReport()
        if not self.lead():
            report.sleep_ms = max(self.settings.beat_lock_ttl_ms // 4, 100)
            return report
        report.leader = True
        batch = self.settings.beat_batch
        while True:
            entries = self.store.due_entries(now_ms, batch)
            if not entries:
                break
            claimed = self.store.claim(
                self.token or "", [self._decide(e, now_ms) for e in entries], now_ms, self.settings.runs_kept
            )
            if claimed is None:  # a newer leader exists: we were stalled past our lock
                report.fenced_out, self.token = True, None
                log.warning("beat %s was fenced out; standing by", self.instance)
                return report
            self._hand_over(claimed, now_ms)
            report.released += len(claimed)
            report.lateness_ms += [max(now_ms - c.nominal_ms, 0) for c in claimed]
            if len(entries) < batch:
                break
        report.republished = self._sweep_outbox(now_ms)
        report.sleep_ms = self._sleep_ms(now_ms)
        return report

    def _decide(self, entry: DueEntry, now_ms: int) -> Claim:
        if entry.run_id is not None:  # a retry waiting out a long backoff
            return Claim(entry, entry.run_id, entry.due_ms, None)
        run_id = run_id_for(entry.job_id, entry.due_ms)
        spec = self._spec(entry)
        rule = None if spec is None else spec.timing_rule()
        if rule is None:
            return Claim(entry, run_id, entry.due_ms, None)
        # The next run is fixed now, when this one is handed over (BullMQ's rule).
        next_ms = timing.next_run_ms(rule, entry.anchor_ms, entry.due_ms, entry.runs_done + 1, now_ms)
        return Claim(entry, run_id, entry.due_ms, next_ms)

    def _spec(self, entry: DueEntry) -> JobSpec | None:
        if entry.spec_json is None:
            return None
        cached = self._specs.get(entry.job_id)
        if cached is not None and cached[0] == entry.spec_json:
            return cached[1]
        spec = JobSpec.model_validate_json(entry.spec_json)
        if len(self._specs) > 100_000:
            self._specs.clear()
        self._specs[entry.job_id] = (entry.spec_json, spec)
        return spec

    def _hand_over(self, claimed: Sequence[Claim], now_ms: int) -> None:
        ready: list[Dispatch] = []
        retries: list[str] = []
        for c in claimed:
            spec = self._spec(c.entry)
            if c.entry.run_id is not None or spec is None:
                retries.append(c.run_id)
            else:
                ready.append(Dispatch(c.run_id, spec, c.nominal_ms))
        ready += self.store.dispatches(retries)
        sent = self.dispatch(ready, now_ms)
        self.store.confirm_published(sent)

    def _sweep_outbox(self, now_ms: int) -> int:
        """Publish again what was claimed (by anyone) but never confirmed: a producer or beat died."""
        stale = self.store.stale_outbox(now_ms - self.settings.outbox_grace_ms, self.settings.beat_batch)
        if stale:
            log.warning("re-publishing %d run(s) claimed but never confirmed", len(stale))
            self.store.confirm_published(self.dispatch(stale, now_ms))
        return len(stale)

    def _sleep_ms(self, now_ms: int) -> int:
        cap = min(self.settings.beat_max_sleep_ms, self.settings.beat_lock_ttl_ms // 3)
        next_due = self.store.next_due_ms()
        if next_due is None:
            return cap
        return max(0, min(cap, next_due - now_ms))
