"""Runs whose Celery message was lost, sent again: beat's safety net under at-least-once delivery.

kombu's Redis transport pops a message (BRPOP) before it records it as unacknowledged, so a
worker killed in between loses the message: its run stays queued with no message anywhere and
would never run. Every run handed to Celery sits in the in-flight index until it finishes,
scored by when it last moved (sent, started, retried). A run that has not moved for a while,
whose message is neither waiting in its queue nor held by a worker, is sent again under the
same run id; a copy that turns out to be spare is skipped by the worker (BEGIN_RUN). A run
started by a worker that is gone (its heartbeat stopped renewing its lease) is sent again too,
even though its message is still held: that worker will never finish or acknowledge it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ductape_jobs import ops, tracing
from ductape_jobs.keys import Keys
from ductape_jobs.records import Dispatch, InFlight, Message, Messages, Unreadable
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

log = logging.getLogger("beat")

FINISHED = ("completed", "failed", "skipped", "cancelled")
LOST_AFTER_MAX_MS = 60_000  # never wait longer than this to look at a run that has not moved


class LostRuns:
    """Finds in-flight runs of one shard whose message is gone and sends them again."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        messages: Messages,
        handed: Callable[[Sequence[Message]], None] = lambda _: None,
        keys: Keys | None = None,
    ) -> None:
        self.store = store
        self.keys = store.keys if keys is None else keys  # the shard it sweeps
        self.messages = messages
        self.handed = handed  # told of each message sent again (beat: task-sent events)
        self.batch = settings.beat_batch
        # A worker holds a message it runs in kombu's unacked hash for up to the visibility
        # timeout; a run unmoved for that long (or a minute) is worth a look.
        self.after_ms = min(settings.visibility_timeout_s * 1000, LOST_AFTER_MAX_MS)
        self.every_ms = max(self.after_ms // 4, 500)
        # kombu puts a held message back once it is older than the visibility timeout; one held
        # twice that long was never put back (its worker died inside kombu's restore, say).
        self.stuck_after_ms = 2 * settings.visibility_timeout_s * 1000
        self._next_ms = 0
        self.set_aside = 0  # runs set aside so far (their job's record could not be read)

    def sweep(self, now_ms: int) -> int:
        """Send again the runs whose message was lost (looks every every_ms); how many were sent."""
        if now_ms < self._next_ms:
            return 0
        self._next_ms = now_ms + self.every_ms
        runs = self.store.run(ops.beat.unmoved_runs(self.keys, now_ms - self.after_ms, self.batch))
        live = [run for run in runs if run.status is not None and run.status not in FINISHED]
        loaded = self.store.run(ops.beat.dispatches(self.keys, [run.run_id for run in live]))
        dispatches = {d.run_id: d for d in self._readable(loaded, {run.run_id: run for run in live}, now_ms)}
        self.store.run(
            ops.worker.runs_gone(
                self.keys,
                self.store.retention,
                [run.run_id for run in runs if run.status is None],
                now_ms,
            )
        )  # counted, logged
        self.store.run(ops.beat.forget_runs(self.keys, [run for run in runs if run.run_id not in dispatches]))

        heads: dict[str, int | None] = {}
        waiting: list[str] = []
        suspects: list[tuple[InFlight, Dispatch]] = []
        for run in live:
            dispatch = dispatches.get(run.run_id)
            if dispatch is None:
                continue
            queue_key = self.messages.queue_key(dispatch.brief)
            if queue_key not in heads:
                heads[queue_key] = self.store.run(ops.beat.head_queued_ms(self.keys, queue_key))
            head_ms = heads[queue_key]
            # Queues are FIFO: while the next message out was pushed no later than this run's,
            # this run's message may still be behind it.
            if head_ms is not None and head_ms <= run.queued_ms:
                waiting.append(run.run_id)
            else:
                suspects.append((run, dispatch))
        held = (
            self.store.run(ops.beat.held_run_ids(self.keys, now_ms - self.stuck_after_ms))
            if suspects
            else set()
        )
        waiting += [run.run_id for run, _ in suspects if run.run_id in held and not lapsed(run, now_ms)]
        self.store.run(ops.beat.touch_runs(self.keys, waiting, now_ms))
        resent = [
            (run.run_id, message)
            for run, dispatch in suspects
            if (run.run_id not in held or lapsed(run, now_ms))
            for message in [self._resend(run, dispatch, now_ms)]
            if message is not None
        ]
        self.handed([message for _, message in resent])
        sent = [run_id for run_id, _ in resent]
        if sent:
            log.warning("sent %d run(s) again whose message was lost: %s", len(sent), ", ".join(sent[:5]))
        return len(sent)

    def _resend(self, run: InFlight, dispatch: Dispatch, now_ms: int) -> Message | None:
        """Build the run's message again, in its run's trace (kept in its record when it was
        first sent; without it, as beat's release does), and push it if the run has not moved;
        the message, if it was pushed."""
        brief = dispatch.brief
        parent = dispatch.traceparent or brief.traceparent
        link = dispatch.traceparent is None and brief.rule is not None
        with tracing.span("ductape.resend", parent, link=link, run_id=run.run_id):
            message = self.messages.from_brief(run.run_id, brief, dispatch.nominal_ms, now_ms)
        pushed = self.store.run(ops.beat.resend(self.keys, run, message, now_ms))
        message.sent()  # also when the run had moved: a receiver's state for it must end
        return message if pushed else None

    def _readable(
        self, loaded: list[Dispatch | Unreadable], read: dict[str, InFlight], now_ms: int
    ) -> list[Dispatch]:
        """The runs whose job could be read; each other one is set aside with its reason (unless
        it moved meanwhile), so one bad record never stops the sweep (it would fail every pass)."""
        for bad in (b for b in loaded if isinstance(b, Unreadable) and b.run_id in read):
            assert bad.run_id is not None  # it is in `read`
            if self.store.run(
                ops.beat.set_aside_run(
                    self.keys, self.store.retention, read[bad.run_id], bad.job_id, bad.reason, now_ms
                )
            ):
                log.error("set aside run %s: %s", bad.run_id, bad.reason)
                self.set_aside += 1
        return [d for d in loaded if isinstance(d, Dispatch)]


def lapsed(run: InFlight, now_ms: int) -> bool:
    """A started run whose heartbeat stopped: its whole worker is gone (a lone pool process that
    dies is reported by its worker at once). Its message may still sit in kombu's unacked hash
    until the visibility timeout; sending it again now (BEGIN_RUN counts the lost attempt) does not
    wait for that, and the late copy is skipped."""
    return run.status == "running" and 0 < run.lease_ms <= now_ms
