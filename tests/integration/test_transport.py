"""ductape_jobs.transport: kombu#582 reproduced on a real Redis, and worked around."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection, Queue
from kombu.asynchronous import Hub

from ductape_jobs import transport
from ductape_jobs.embedded import EmbeddedRedis
from ductape_jobs.transport import FETCH, Transport
from tests.support import wait_for


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


# -- FETCH: several messages per round trip, acks in batches (design §8.4) ----------------------


def subscribed(redis_url: str, prefix: str, n: int, prefetch: int = 10) -> tuple[Connection, list[Any]]:
    """A connection on our transport, ``n`` messages published to queue q and a consumer of it
    (nothing taken yet); the messages it is handed land in the list."""
    conn = Connection(redis_url, transport=Transport, transport_options={"global_keyprefix": f"{prefix}:"})
    queue = Queue("q", routing_key="q")
    producer = conn.Producer()
    for i in range(n):
        producer.publish({"n": i}, routing_key="q", declare=[queue])
    got: list[Any] = []
    consumer = conn.Consumer(queue, callbacks=[lambda _body, message: got.append(message)])
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return conn, got


def consuming(redis_url: str, prefix: str, n: int, prefetch: int = 10) -> tuple[Connection, list[Any]]:
    """As ``subscribed``, the messages then consumed (unacked) by one ``drain_events``: the sync
    path runs the same FETCH a worker's event loop does."""
    conn, got = subscribed(redis_url, prefix, n, prefetch)
    conn.drain_events(timeout=5)
    return conn, got


def test_one_fetch_takes_every_waiting_message_up_to_the_prefetch_and_records_each_as_kombu_does(
    redis_url: str, prefix: str, r: redis.Redis
):
    conn, got = consuming(redis_url, prefix, 5, prefetch=4)
    try:
        # Stock kombu's BRPOP hands over one message per drain_events.
        assert [m.payload["n"] for m in got] == [0, 1, 2, 3]  # queue order, the prefetch's worth
        assert r.llen(f"{prefix}:q") == 1
        tags = [m.delivery_tag for m in got]
        assert sorted(x.decode() for x in r.hkeys(f"{prefix}:unacked")) == sorted(tags)
        scores = {score for _, score in r.zrange(f"{prefix}:unacked_index", 0, -1, withscores=True)}
        assert len(scores) == 1  # recorded in one step (kombu's appends each read the clock)
        # kombu's own restore reads what FETCH recorded and puts the messages back.
        channel = got[0].channel
        for tag in tags:
            channel.qos.restore_by_tag(tag)
        assert r.hlen(f"{prefix}:unacked") == 0 and r.zcard(f"{prefix}:unacked_index") == 0
        assert r.llen(f"{prefix}:q") == 5
        restored = [json.loads(m)["properties"]["delivery_tag"] for m in r.lrange(f"{prefix}:q", 0, -1)]
        assert set(restored) >= set(tags)
    finally:
        conn.close()


def test_acks_on_the_loop_thread_ride_with_the_next_fetch(redis_url: str, prefix: str, r: redis.Redis):
    conn, got = consuming(redis_url, prefix, 3)
    try:
        for message in got:
            message.ack()
        assert r.hlen(f"{prefix}:unacked") == 3  # not sent yet: no round trip per ack
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.3)  # the next tick's FETCH (none waiting) carries them
        assert r.hlen(f"{prefix}:unacked") == 0 and r.zcard(f"{prefix}:unacked_index") == 0
    finally:
        conn.close()


def test_acks_left_when_the_channel_closes_are_sent(redis_url: str, prefix: str, r: redis.Redis):
    conn, got = consuming(redis_url, prefix, 2)
    got[0].ack()
    conn.close()  # the other is put back on its queue, as kombu does
    assert r.hlen(f"{prefix}:unacked") == 0 and r.llen(f"{prefix}:q") == 1


def test_an_ack_from_another_thread_is_sent_at_once(redis_url: str, prefix: str, r: redis.Redis):
    conn, got = consuming(redis_url, prefix, 1)
    try:
        acking = threading.Thread(target=got[0].ack)  # a thread pool's thread: no loop to ride
        acking.start()
        acking.join()
        assert r.hlen(f"{prefix}:unacked") == 0
    finally:
        conn.close()


def test_messages_a_fetch_took_are_put_back_when_its_reply_is_lost_with_the_connection(
    redis_url: str, prefix: str, r: redis.Redis
):
    conn, got = subscribed(redis_url, prefix, 3)
    try:
        r.script_load(FETCH)  # as a worker's first FETCH does after NOSCRIPT
        conn.transport.cycle.on_poll_start()  # a FETCH sent, its reply not read yet
        wait_for(lambda: r.hlen(f"{prefix}:unacked") == 3, 5, "the FETCH to run")
        channel = conn.default_channel  # the consumer's
        channel.client.connection.disconnect()  # the reply is lost with the connection
        assert r.llen(f"{prefix}:q") == 0 and r.hlen(f"{prefix}:unacked") == 3  # delivered to no one
        conn.drain_events(timeout=5)  # the next FETCH puts them back first, then takes them
        assert sorted(m.payload["n"] for m in got) == [0, 1, 2]
        assert r.hlen(f"{prefix}:unacked") == 3  # held again, by this consumer now
    finally:
        conn.close()


def test_what_a_fetch_under_way_took_is_put_back_when_the_channel_closes(
    redis_url: str, prefix: str, r: redis.Redis
):
    conn, _ = subscribed(redis_url, prefix, 3)
    r.script_load(FETCH)  # as a worker's first FETCH does after NOSCRIPT
    conn.transport.cycle.on_poll_start()  # a FETCH sent, its reply not read yet
    wait_for(lambda: r.hlen(f"{prefix}:unacked") == 3, 5, "the FETCH to run")
    conn.close()  # kombu's close reads the reply (our FETCH's too) and puts back what it held
    assert r.hlen(f"{prefix}:unacked") == 0 and r.llen(f"{prefix}:q") == 3


# -- batches: a busy worker's FETCH waits for room for several messages (design §8.4) -----------


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int, int], int]]:
    """``fetch_in_batches``, as a worker calls it once ready; this process's default is back
    after. HOLD_S is long here, so no hold runs out between two steps of a test on a slow day."""
    monkeypatch.setattr(transport, "HOLD_S", 30.0)
    before = (transport._Batching.batch, transport._Batching.pool)
    yield transport.fetch_in_batches
    transport._Batching.batch, transport._Batching.pool = before


@contextmanager
def looping(
    redis_url: str, prefix: str, prefetch: int, *, loop: bool = True
) -> Iterator[tuple[Connection, list[Any], Hub]]:
    """As ``consuming`` (8 messages), the connection then registered with a real kombu event loop
    as a worker's is (not run: the test calls its ticks itself); ``loop=False``: not registered."""
    conn, got = consuming(redis_url, prefix, 8, prefetch=prefetch)
    hub = Hub()
    if loop:
        conn.register_with_event_loop(hub)
    try:
        yield conn, got, hub
    finally:
        conn.close()
        hub.close()


def hold_timers(hub: Hub) -> list[float]:
    """When the loop's timers that end a held-back FETCH are due, in seconds from now."""
    now = time.monotonic()
    return [t.eta - now for t in hub.timer._queue if t.entry.fun is transport._look_again]


def sent_with_a_fetch(r: redis.Redis, prefix: str, acked: Any, left: int) -> None:
    """Wait for a FETCH to leave ``left`` messages queued; the ``acked`` message went with it."""
    wait_for(lambda: r.llen(f"{prefix}:q") == left, 5, "the FETCH to run")
    assert acked.delivery_tag.encode() not in r.hkeys(f"{prefix}:unacked")


@pytest.mark.parametrize(
    ("prefetch", "pool", "batch"),
    [(2, 2, 1), (3, 2, 1), (4, 2, 2), (5, 2, 2), (8, 2, 4), (16, 8, 5), (1, 4, 1)],
)
def test_a_batch_is_half_of_what_the_prefetch_holds_beyond_the_pool_and_one(
    batches: Callable[[int, int], int], prefetch: int, pool: int, batch: int
):
    assert batches(prefetch, pool) == batch == transport._Batching.batch


def test_in_an_event_loop_a_fetch_and_its_acks_wait_for_room_for_a_batch(
    redis_url: str, prefix: str, r: redis.Redis, batches: Callable[[int, int], int]
):
    batches(4, 2)  # a worker's default: prefetch 2 x 2 processes, batches of 2
    with looping(redis_url, prefix, prefetch=4) as (conn, got, hub):
        tick = conn.transport.cycle.on_poll_start  # what the event loop calls each time round
        assert len(got) == 4 and r.llen(f"{prefix}:q") == 4
        got[0].ack()
        # The hold starts with the ack, before the loop works out how long it may sleep: a
        # timer makes it look again once HOLD_S has passed.
        assert [round(due) for due in hold_timers(hub)] == [round(transport.HOLD_S)]
        tick()  # room for one: the FETCH waits, and the ack with it
        channel = got[0].channel
        assert channel._fetching is None and channel._acked == [got[0].delivery_tag]
        assert r.llen(f"{prefix}:q") == 4 and r.hlen(f"{prefix}:unacked") == 4
        got[1].ack()
        tick()  # room for two: sent, with both acks
        sent_with_a_fetch(r, prefix, got[1], left=2)
        assert got[0].delivery_tag.encode() not in r.hkeys(f"{prefix}:unacked")
        assert r.hlen(f"{prefix}:unacked") == 4  # two held, two taken
        # The loop reads its reply: two more handed over.
        wait_for(lambda: hub.run_once() or len(got) == 6, 5, "the FETCH's messages")
        assert [m.payload["n"] for m in got] == [0, 1, 2, 3, 4, 5]


def test_a_fetch_held_back_for_a_batch_goes_once_it_has_waited_hold_s(
    redis_url: str, prefix: str, r: redis.Redis, batches: Callable[[int, int], int]
):
    batches(4, 2)
    with looping(redis_url, prefix, prefetch=4) as (conn, got, _):
        got[0].ack()
        conn.transport.cycle.on_poll_start()
        assert r.llen(f"{prefix}:q") == 4 and r.hlen(f"{prefix}:unacked") == 4  # held back
        got[0].channel._held_since -= transport.HOLD_S  # as if its timer had fired (no test sleeps)
        conn.transport.cycle.on_poll_start()  # it has waited long enough: it goes, with the ack
        sent_with_a_fetch(r, prefix, got[0], left=3)
        assert r.hlen(f"{prefix}:unacked") == 4


@pytest.mark.parametrize(
    ("loop", "sized_for", "prefetch", "left"),
    [
        # drain_events (a script's consumer, or one in a pool process, which inherits the batch):
        # nothing would wake it to send a held-back FETCH.
        pytest.param(False, (4, 2), 4, 3, id="without an event loop"),
        # Sized for a prefetch of 8 (batches of 4); Celery runs at a prefetch of 3 now (as after a
        # reconnection): one beyond the pool of 2, so a FETCH goes for every freed slot.
        pytest.param(True, (8, 2), 3, 4, id="a prefetch lowered since the worker started"),
    ],
)
def test_a_fetch_that_cannot_wait_for_a_batch_goes_with_the_first_ack(
    redis_url: str,
    prefix: str,
    r: redis.Redis,
    batches: Callable[[int, int], int],
    loop: bool,
    sized_for: tuple[int, int],
    prefetch: int,
    left: int,
):
    batches(*sized_for)
    with looping(redis_url, prefix, prefetch=prefetch, loop=loop) as (conn, got, hub):
        got[0].ack()
        assert not hold_timers(hub)
        conn.transport.cycle.on_poll_start()
        sent_with_a_fetch(r, prefix, got[0], left=left)


def test_acks_waiting_for_a_held_back_fetch_are_sent_once_the_consumer_is_cancelled(
    redis_url: str, prefix: str, r: redis.Redis, batches: Callable[[int, int], int]
):
    batches(4, 2)
    with looping(redis_url, prefix, prefetch=4) as (conn, got, _):
        got[0].ack()
        conn.transport.cycle.on_poll_start()
        assert r.hlen(f"{prefix}:unacked") == 4  # waiting for the held-back FETCH
        channel = got[0].channel
        channel.basic_cancel(next(iter(channel._consumers)))  # Celery's cancel_consumer: no more FETCH
        conn.transport.cycle.on_poll_start()
        assert r.hlen(f"{prefix}:unacked") == 3 and r.llen(f"{prefix}:q") == 4  # the ack, alone
