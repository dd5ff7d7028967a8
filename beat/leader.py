"""Beat's leadership: the shards' leader locks and their fencing tokens, owned by one object.

The jobs are split into ``shards`` (keys.py); each shard has its own lock and fencing token, and
any number of beats share them. Every beat says it is alive in the beat registry (``beats``,
renewed with its locks) and aims at its share, ceil(shards / live beats): it takes free shards
until it holds its share, and gives up the ones beyond it (a beat that has just started takes
them). A beat that dies stops renewing both its locks and its registry entry, which run out
together: the others' share grows and they take its shards within the lock TTL.

The tick takes or renews the locks and fences its claims with each shard's token; a thread of
the Celery adapter renews them on its own timer so a long tick cannot let them lapse; the
metrics thread asks whether we lead. Only ``Leadership`` reads or writes the tokens, under a
lock, so a renewal refused on one thread never drops a token the tick has just taken again.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Callable

from ductape_jobs import clock, ops
from ductape_jobs.store import Store

log = logging.getLogger("beat")

STEP_DOWN_WAIT_S = 2.0  # how long step_down waits for a tick or renewal under way (see there)


class Leadership:
    """One beat instance's hold on the shards' locks: a fencing token per shard it leads."""

    def __init__(
        self, store: Store, instance: str, ttl_ms: int, now_ms: Callable[[], int] = clock.now_ms
    ) -> None:
        # Leadership lives on real time (the locks expire on Redis's clock), not on the tick's
        # ``now``, which tests move at will: the registry and the balancing read this clock.
        self.now_ms = now_ms
        self.store = store
        self.keys = store.keys
        self.instance = instance
        self.ttl_ms = ttl_ms
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()
        # The registry and free shards are looked at this often (a standby's takeover delay
        # beyond the lock TTL); held locks are renewed at every call.
        self.balance_every_ms = max(ttl_ms // 4, 100)
        self._balance_at_ms = 0
        self.live = 1  # beats alive at the last look at the registry
        # Each beat tries the free shards from its own starting point, so beats starting
        # together mostly try different ones first.
        self._start = zlib.crc32(instance.encode()) % self.keys.shards

    @property
    def tokens(self) -> dict[int, str]:
        """The fencing token of each shard we lead (a copy)."""
        with self._lock:
            return dict(self._tokens)

    @property
    def token(self) -> str | None:
        """The token of shard 0, when we lead it (the only shard of a deployment of one)."""
        return self._tokens.get(0)

    @property
    def held(self) -> bool:
        """Whether we lead any shard (as far as we know: the claim script's fence has the last word)."""
        return bool(self._tokens)

    @property
    def share(self) -> int:
        """How many shards this beat aims to lead: ceil(shards / live beats)."""
        return math.ceil(self.keys.shards / max(self.live, 1))

    def lead(self) -> dict[int, str]:
        """Renew our locks and registry entry; every ``balance_every_ms``, take free shards up
        to our share and give up those beyond it. The shards we lead now, with their tokens."""
        with self._lock:
            now_ms = self.now_ms()
            self._renew(now_ms)
            if now_ms >= self._balance_at_ms:
                self._balance_at_ms = now_ms + self.balance_every_ms
                self._balance()
            return dict(self._tokens)

    def renew(self) -> None:
        """Extend the locks we hold and our registry entry; stand by on the shards that are
        someone else's (or gone)."""
        with self._lock:
            self._renew(self.now_ms())

    def fenced_out(self, shard: int, token: str) -> None:
        """A claim on ``shard`` made with ``token`` was refused by the fence: a newer leader exists."""
        with self._lock:
            if self._tokens.get(shard) == token:
                del self._tokens[shard]
                log.warning("beat %s was fenced out of shard %d; standing by on it", self.instance, shard)

    def step_down(self) -> bool:
        """Release every lock and leave the registry, so the other beats take over at once.

        False, having done nothing, when ``self._lock`` is not free within STEP_DOWN_WAIT_S: that
        is a signal handler (Celery's SIGTERM handler closes the scheduler) that interrupted this
        very thread inside ``lead()`` or ``renew()``, and a threading.Lock is not re-entrant:
        waiting would hang the process. Celery's beat service closes the scheduler again once the
        handler's SystemExit has unwound (its ``finally``), and that call steps down."""
        if not self._lock.acquire(timeout=STEP_DOWN_WAIT_S):
            log.info("beat %s: stepping down once the tick under way has unwound", self.instance)
            return False
        try:
            for shard, token in sorted(self._tokens.items()):
                self.store.run(ops.beat.release_lock(self.keys.for_shard(shard), token))
            self._tokens.clear()
            self.store.run(ops.beat.leave(self.keys, self.instance))
        finally:
            self._lock.release()
        return True

    # -- under self._lock ----------------------------------------------------------------------

    def _renew(self, now_ms: int) -> None:
        # The registry entry and the locks are renewed together, so they run out together when
        # this beat dies: the others see it gone when its shards come free.
        self.live, kept = self.store.run(
            ops.beat.renew_locks(self.keys, self.instance, self._tokens, now_ms, self.ttl_ms)
        )
        for shard, ours in kept.items():
            if not ours:
                del self._tokens[shard]
                log.warning(
                    "beat %s lost the leader lock of shard %d; standing by on it", self.instance, shard
                )

    def _balance(self) -> None:
        share = self.share
        for shard in sorted(self._tokens, reverse=True)[: max(len(self._tokens) - share, 0)]:
            # Beyond our share: another live beat has fewer and takes it at its next look.
            self.store.run(ops.beat.release_lock(self.keys.for_shard(shard), self._tokens.pop(shard)))
            log.info("beat %s gave up shard %d (%d live beats)", self.instance, shard, self.live)
        if len(self._tokens) >= share:
            return
        shards = self.keys.shards
        free = set(self.store.run(ops.beat.free_shards(self.keys)))  # one round trip, not one per shard
        for step in range(shards):
            if len(self._tokens) >= share:
                break
            shard = (self._start + step) % shards
            if shard not in free:
                continue
            acquired, token = self.store.run(
                ops.beat.acquire_lock(self.keys.for_shard(shard), self.instance, self.ttl_ms)
            )
            if acquired:
                self._tokens[shard] = token
                number = token.split(":", 1)[0]
                # "is leader (fencing token n)" as before shards: logs are read for it
                log.info("beat %s is leader (fencing token %s) of shard %d", self.instance, number, shard)
