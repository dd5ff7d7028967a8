"""kombu's Redis transport with two fixes for a worker that loses its broker connection, used by
workers (the consumers; kept here so importing it builds no worker app). Both are for kombu
upstream (README, "Redis restarts"). Behind Sentinel the same channel runs on kombu's sentinel
transport (``SentinelTransport``): the fixes are the same, only the pool differs.

1. kombu#582: when a worker loses its broker connection, Celery closes the kombu connection,
   which drops the transport's ``client`` (the connection details); a channel closed or
   collected after that still restores its unacknowledged (prefetched) messages, and building a
   Redis client for that reads ``self.connection.client.hostname``: ``AttributeError:
   'NoneType' object has no attribute 'hostname'``. That is not a connection error, so Celery
   does not reconnect and the worker exits. This channel keeps the connection details it was
   opened with and uses them when the transport has dropped its own.
2. The restore itself fails while Redis is down (that is why the connection was lost), and kombu
   then forgets the messages: they stay in its unacked hash until the visibility timeout (an
   hour by default), while Celery has dropped the prefetched ones from memory. This channel
   remembers their delivery tags and the next channel of the process (the reconnection) puts
   them back on their queues. A copy of a run that is still running is harmless (BEGIN_RUN).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("ductape_jobs.transport")

# Delivery tags of messages this process held when its connection was lost and could not put
# back then; they are still in kombu's unacked hash in Redis.
_stranded: set[str] = set()


class Channel(kombu_redis.Channel):
    """A Redis channel that can still reach Redis after its transport dropped its client, and
    puts back what an earlier channel of this process could not."""

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        self._opened_with = SimpleNamespace(client=connection.client, default_port=connection.default_port)
        super().__init__(connection, *args, **kwargs)  # type: ignore[no-untyped-call]
        if _stranded:
            self._restore_stranded()

    def close(self) -> None:
        """Close, remembering the held messages when Redis can't take them back now."""
        qos = self.__dict__.get("_qos")
        held = list(qos._delivered) if qos is not None and not self.closed else []
        try:
            super().close()  # type: ignore[no-untyped-call]
        except self.connection_errors:
            if held:
                _stranded.update(held)
                log.warning("%d held message(s) could not be put back; will be on reconnection", len(held))
            raise

    def _restore_stranded(self) -> None:
        tags = list(_stranded)
        try:
            for tag in tags:
                self.qos.restore_by_tag(tag, leftmost=True)
                _stranded.discard(tag)
        except self.connection_errors:
            return  # still down: the next channel tries again
        log.warning("put back %d message(s) held when the broker connection was lost", len(tags))

    def _connparams(self, asynchronous: bool = False) -> Any:
        # kombu#582: _connparams only reads .client and .default_port.
        with self._connected():
            return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    @contextmanager
    def _connected(self) -> Iterator[None]:
        """Within: ``self.connection`` has its connection details, those the channel was opened
        with when the transport has dropped its own (kombu#582), or this channel was detached."""
        transport = self.connection
        if transport is not None and transport.client is not None:
            yield
            return
        self.connection = self._opened_with
        try:
            yield
        finally:
            self.connection = transport


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same channel for Redis behind Sentinel: its pool asks the sentinels for the master."""

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # Reads .client.alt (the sentinels) and .default_port besides _connparams: kombu#582 too.
        with self._connected():
            return super()._sentinel_managed_pool(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's ``sentinel://`` transport with the channel above (``REDIS_URL=sentinel://...``)."""

    Channel = SentinelChannel
