"""A worker process's heartbeat: one thread renewing the lease of every run the process executes.

A started run is held against other deliveries for ``run_lease_s`` (BEGIN_RUN); the heartbeat
renews it every third of that while the run's process lives, so a run alive for hours is never
started twice, and a run whose process died is free again once one lease has passed.

Its reply also says when a run was cancelled (``cancel``/``cancel_run``): the run's cancel signal
is set, so the handler's ``ctx.cancelled()`` turns True within ``CANCEL_CHECK_S`` with no polling
of its own. Leases are renewed that often at least, however long they are.

It also confirms completions sent without waiting (``Store.finish_run(wait=False)``): their
reply is read before the process's next run, so a process left idle would never learn that
Redis restarted before taking one; after ``CONFIRM_AFTER_S`` unread, the heartbeat writes it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.records import Lease

log = logging.getLogger("ductape_jobs.heartbeat")
CONFIRM_AFTER_S = 1.0
CANCEL_CHECK_S = 2.0  # the longest a running handler waits to learn of a cancel (one RENEW_RUN each)


class Leases(Protocol):
    """What the heartbeat needs of the store (``Store``)."""

    def renew_run(self, run_id: str, owner: str, now_ms: int, lease_ms: int) -> Lease:
        """Extend ``owner``'s lease of a running attempt: 'held', 'cancelled' (still theirs, and
        cancelled) or 'lost' (not theirs any more)."""
        ...


class Heartbeat:
    """Renews the leases of the runs this process holds, from a daemon thread of its own."""

    def __init__(
        self,
        store: Leases,
        lease_ms: int,
        clock_ms: Callable[[], int],
        cancel_check_s: float = CANCEL_CHECK_S,
    ) -> None:
        self.store = store
        self.lease_ms = lease_ms
        self.clock_ms = clock_ms
        self.every_s = max(min(lease_ms / 3000, cancel_check_s), 0.05)
        self.tick_s = min(self.every_s, CONFIRM_AFTER_S / 2)
        # run_id -> (owner: the delivery that started it, what to call when it is cancelled)
        self._held: dict[str, tuple[str, Callable[[], None]]] = {}
        # run_id -> (when to look, still unread?, write it again)
        self._unconfirmed: dict[str, tuple[float, Callable[[], bool], Callable[[], object]]] = {}
        self._lock = threading.Lock()
        self._pid = 0

    def hold(self, run_id: str, owner: str, on_cancel: Callable[[], None] = lambda: None) -> None:
        """Keep ``run_id`` leased to ``owner`` until ``release``; call ``on_cancel`` (from this
        thread, on each renewal after it) once the run is cancelled."""
        with self._lock:
            self._held[run_id] = (owner, on_cancel)
            self._start()

    def confirm(self, run_id: str, unread: Callable[[], bool], write: Callable[[], object]) -> None:
        """Call ``write`` (from this thread) if ``unread()`` still holds in CONFIRM_AFTER_S."""
        with self._lock:
            self._unconfirmed[run_id] = (time.monotonic() + CONFIRM_AFTER_S, unread, write)
            self._start()

    def _start(self) -> None:
        if self._pid != os.getpid():  # first use in this (forked pool) process
            self._pid = os.getpid()
            threading.Thread(target=self._beat, name="ductape-heartbeat", daemon=True).start()

    def release(self, run_id: str) -> None:
        """Stop renewing ``run_id``'s lease (its outcome is written)."""
        with self._lock:
            self._held.pop(run_id, None)

    def _beat(self) -> None:
        renew_at = time.monotonic() + self.every_s
        while True:
            time.sleep(self.tick_s)
            self._confirm_due()
            if time.monotonic() >= renew_at:
                renew_at = time.monotonic() + self.every_s
                self.renew_all()

    def renew_all(self) -> None:
        """Renew every held lease now (the thread does it every third of a lease); a lease that is
        not ours any more is let go."""
        with self._lock:
            held = list(self._held.items())
        for run_id, (owner, on_cancel) in held:
            try:
                renewed = self.store.renew_run(run_id, owner, self.clock_ms(), self.lease_ms)
                if renewed == Lease.LOST:
                    self.release(run_id)  # another delivery owns it now, or it is gone
                elif renewed == Lease.CANCELLED:
                    on_cancel()
            except BackendUnavailableError:
                log.warning("could not renew the lease of run %s; Redis is unreachable", run_id)
            except Exception:  # the heartbeat must outlive any one failure
                log.exception("could not renew the lease of run %s", run_id)

    def _confirm_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(k, v) for k, v in self._unconfirmed.items() if v[0] <= now]
            for run_id, _ in due:
                del self._unconfirmed[run_id]
        for run_id, (_, unread, write) in due:
            if not unread():
                continue
            try:
                write()
            except Exception:  # the heartbeat must outlive any one failure
                log.exception("could not confirm the outcome of run %s", run_id)
