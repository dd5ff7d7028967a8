"""Beat's leadership: the leader lock and its fencing token, owned by one object.

The tick takes or renews the lock and fences its claims with the token; a thread of the Celery
adapter renews it on its own timer so a long tick cannot let it lapse; the metrics thread asks
whether we lead. Only ``Leadership`` reads or writes the token, under a lock, so a renewal
refused on one thread never drops a token the tick has just taken again.
"""

from __future__ import annotations

import logging
import threading

from ductape_jobs import ops
from ductape_jobs.store import Store

log = logging.getLogger("beat")


class Leadership:
    """One beat instance's hold on the leader lock: its fencing token, or None while standing by."""

    def __init__(self, store: Store, instance: str, ttl_ms: int) -> None:
        self.store = store
        self.instance = instance
        self.ttl_ms = ttl_ms
        self._token: str | None = None
        self._lock = threading.Lock()

    @property
    def token(self) -> str | None:
        """The fencing token we hold, or None."""
        return self._token

    @property
    def held(self) -> bool:
        """Whether we lead (as far as we know: the claim script's fence has the last word)."""
        return self._token is not None

    def lead(self) -> str | None:
        """Renew our lock, or take it when free; the token we lead with now, or None."""
        with self._lock:
            if self._token is not None and self.store.run(
                ops.beat.renew_lock(self.store.keys, self._token, self.ttl_ms)
            ):
                return self._token
            if self._token is not None:
                log.warning("beat %s lost the leader lock", self.instance)
            acquired, token = self.store.run(
                ops.beat.acquire_lock(self.store.keys, self.instance, self.ttl_ms)
            )
            self._token = token if acquired else None
            if acquired:
                log.info("beat %s is leader (fencing token %s)", self.instance, token.split(":", 1)[0])
            return self._token

    def renew(self) -> None:
        """Extend the lock if we hold it; stand by when it is someone else's (or gone)."""
        with self._lock:
            if self._token is not None and not self.store.run(
                ops.beat.renew_lock(self.store.keys, self._token, self.ttl_ms)
            ):
                self._token = None
                log.warning("beat %s lost the leader lock; standing by", self.instance)

    def fenced_out(self, token: str) -> None:
        """A claim made with ``token`` was refused by the fence: a newer leader exists."""
        with self._lock:
            if self._token == token:
                self._token = None

    def step_down(self) -> None:
        """Release the lock so a standby takes over at once."""
        with self._lock:
            if self._token is not None:
                self.store.run(ops.beat.release_lock(self.store.keys, self._token))
                self._token = None
