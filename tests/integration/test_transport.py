"""ductape_jobs.transport: kombu#582 reproduced on a real Redis, and worked around."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection, Queue

from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.transport import Transport


def hold(redis_url: str, prefix: str, transport: object) -> tuple[Connection, Any]:
    """A channel holding one unacknowledged message, as a worker holds a prefetched one."""
    conn = Connection(redis_url, transport=transport, transport_options={"global_keyprefix": f"{prefix}:"})
    conn.Producer().publish({"run": 1}, routing_key="q", declare=[Queue("q", routing_key="q")])
    channel = conn.channel()
    assert channel.basic_get("q", no_ack=False) is not None
    return conn, channel


def hold_then_drop_transport(redis_url: str, prefix: str, transport: object) -> tuple[Connection, Any]:
    """The same, after its transport dropped its client, as kombu's Connection._close leaves it
    when a worker loses its broker connection."""
    conn, channel = hold(redis_url, prefix, transport)
    conn.transport.client = None  # what Connection._do_close_transport does
    return conn, channel


def test_stock_kombu_dies_restoring_unacked_messages_after_its_transport_dropped_its_client(
    redis_url: str, prefix: str
):
    # If this starts failing, kombu fixed #582 and ductape_jobs/transport.py can go.
    _, channel = hold_then_drop_transport(redis_url, prefix, "redis")
    with pytest.raises(AttributeError, match="hostname"):
        channel.close()


def test_our_channel_restores_its_unacknowledged_messages_after_its_transport_dropped_its_client(
    redis_url: str, prefix: str, r: redis.Redis
):
    _, channel = hold_then_drop_transport(redis_url, prefix, Transport)
    assert r.hlen(f"{prefix}:unacked") == 1 and r.llen(f"{prefix}:q") == 0
    channel.close()
    assert r.hlen(f"{prefix}:unacked") == 0 and r.llen(f"{prefix}:q") == 1  # back on its queue


def test_messages_held_when_redis_went_down_are_put_back_by_the_next_connection(prefix: str):
    server = EmbeddedRedis.start(appendonly=True)
    try:
        conn, channel = hold(server.url, prefix, Transport)
        server.kill()
        with pytest.raises(redis.ConnectionError):
            channel.close()  # Celery ignores this and reconnects
        server.launch()
        r = redis.Redis.from_url(server.url)
        assert r.hlen(f"{prefix}:unacked") == 1 and r.llen(f"{prefix}:q") == 0  # stranded
        conn.close()
        again = Connection(
            server.url, transport=Transport, transport_options={"global_keyprefix": f"{prefix}:"}
        )
        again.channel()
        assert r.hlen(f"{prefix}:unacked") == 0 and r.llen(f"{prefix}:q") == 1  # back on its queue
        again.close()
        r.close()
    finally:
        server.stop()
