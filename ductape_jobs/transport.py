"""kombu's Redis transport, made faster for a busy worker and safe for one that loses its broker
connection; used by workers (the consumers; kept here so importing it builds no worker app).

Speed (design §8.4): stock kombu makes three round trips per message in the worker's event loop,
two of them waiting on the loop: BRPOP (one message), a MULTI/EXEC recording the message in its
unacked hash and index, and a MULTI/EXEC removing it there at the ack, each built on a fresh
redis-py client. This channel, while messages keep coming, takes them with FETCH instead: one
script call that removes the tags acknowledged since the last call from the unacked hash and
index, pops as many messages as the prefetch allows and records each there, atomically (a message
is never in neither place, as it is between kombu's BRPOP and its HSET). Its reply is read by the
event loop like BRPOP's, so nothing waits on it. While the pool has work, a worker's FETCH waits
for room for a batch of messages (``fetch_in_batches``; only in an event loop, with a timer so it
waits no longer than ``HOLD_S``): one round trip for several messages and their acks. An empty
FETCH falls back to kombu's blocking BRPOP (an idle worker costs Redis nothing more); the message
BRPOP brings is recorded as kombu does, and the next call is a FETCH again. Acks wait for the
next FETCH, or are sent on the next tick of the event loop (one script call for all of them) when
no FETCH is under way or held back; one still in the unacked hash when the worker dies is put
back at the visibility timeout and its run skipped (BEGIN_RUN: finished). What a FETCH took when
its reply is lost with the connection is put back once Redis answers again.

Two fixes for a worker that loses its broker connection, for kombu upstream (README, "Redis
restarts"):

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

Behind Sentinel the same channel runs on kombu's sentinel transport (``SentinelTransport``): the
fetching, the acks and the fixes are the same, only the pool differs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import hiredis
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger("ductape_jobs.transport")

# Delivery tags of messages this process held when its connection was lost and could not put
# back then; they are still in kombu's unacked hash in Redis.
_stranded: set[str] = set()

# FETCHes whose reply was lost with their connection, as (unacked index key, the score they
# recorded their messages at): whatever they took waits in the unacked hash, delivered to no one;
# the channel puts it back once Redis answers again, not at the visibility timeout.
_lost_fetches: set[tuple[str, str]] = set()

MAX_FETCH = 100  # messages one FETCH takes when the prefetch is unlimited
# A FETCH held back for a batch (and the acks riding with it) goes this long after the ack that
# held it back at the latest: a timer makes the event loop look again by then.
HOLD_S = 0.05


class _Batching:
    """How many messages a FETCH waits to have room for while the pool has work (``batch``), and
    the pool's size: a worker sets both once it is ready (``fetch_in_batches``); a batch of 1
    fetches as soon as one message is acknowledged, as kombu does."""

    batch = 1
    pool = 0


def fetch_in_batches(prefetch: int, pool: int) -> int:
    """Let each FETCH of a worker's event loop wait until it has room for half of the messages the
    prefetch holds beyond what the pool runs (``spare``: ``prefetch - pool``), and one, at most
    all of them: ``max(1, min(spare // 2 + 1, spare))``. One round trip for Redis and the event
    loop per several messages, not per message, while the pool keeps working. For a pool of one or
    two at a prefetch of twice its size (ours by default; Celery's multiplier is 4), the FETCH goes
    as the last spare message goes to the pool, so a process that finishes within the FETCH's
    round trip waits that long. With a prefetch of the pool size or one more, every FETCH goes at
    once. A prefetch lowered later (Celery's, after a reconnection) lowers the batch with it.
    Returns the batch."""
    spare = prefetch - pool  # held beyond what the pool runs: its next work
    _Batching.batch, _Batching.pool = max(1, min(spare // 2 + 1, spare)), pool
    return _Batching.batch


def _look_again() -> None:
    """A timer's callback: waking the event loop is all it does (the tick after it sends the FETCH)."""


# KEYS: the unacked index (zset), the unacked hash, then the queue lists in the order to take from
# ARGV: now (seconds, kombu's index score), how many to take (0: none), then acknowledged tags
# Returns: a flat list of (queue key's position among the queue KEYS, 1-based; message) pairs,
# in the order RPOP would give them. Each message is recorded as kombu's QoS.append does
# ([message, exchange, routing key] in the hash, now in the index), so kombu's restore puts it
# back. Messages are read (LRANGE), recorded, and only then trimmed off their list: a write
# refused midway (a full noeviction server) leaves them queued, never lost. One whose envelope
# can't be read (no delivery tag) is returned unrecorded, as BRPOP would hand it over.
FETCH = """
local index, hash = KEYS[1], KEYS[2]
if #ARGV > 2 then
  for i = 3, #ARGV, 1000 do
    local part = {unpack(ARGV, i, math.min(i + 999, #ARGV))}
    redis.call('ZREM', index, unpack(part))
    redis.call('HDEL', hash, unpack(part))
  end
end
local want, out = tonumber(ARGV[2]), {}
for k = 3, #KEYS do
  if want <= 0 then break end
  local items = redis.call('LRANGE', KEYS[k], -want, -1)
  local n = #items
  for j = n, 1, -1 do
    local item = items[j]
    local ok, envelope = pcall(cjson.decode, item)
    local props = ok and type(envelope) == 'table' and envelope.properties
    local tag = type(props) == 'table' and props.delivery_tag
    if type(tag) == 'string' then
      local info = type(props.delivery_info) == 'table' and props.delivery_info or {}
      redis.call('ZADD', index, ARGV[1], tag)
      redis.call('HSET', hash, tag, '[' .. item .. ',' .. cjson.encode(info.exchange or '') .. ','
        .. cjson.encode(info.routing_key or '') .. ']')
    end
    out[#out + 1] = k - 2
    out[#out + 1] = item
  end
  if n > 0 then
    redis.call('LTRIM', KEYS[k], 0, -n - 1)
    want = want - n
  end
end
return out
"""
FETCH_SHA = hashlib.sha1(FETCH.encode()).hexdigest()  # Redis names scripts by SHA-1


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with the messages FETCH took recorded already and acks sent in
    batches by the channel."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        """Hold a delivered message; recorded in Redis unless FETCH did it."""
        if self.channel._fetched:
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
        else:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        """Let the message go; its unacked record is removed with the channel's next call."""
        if not self.channel._defer_ack():
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        self.channel._acked.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        self.channel._acked_on_loop()


class Channel(kombu_redis.Channel):
    """A Redis channel that fetches in batches, acknowledges in batches, can still reach Redis
    after its transport dropped its client, and puts back what an earlier channel of this
    process could not."""

    QoS = QoS

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        self._opened_with = SimpleNamespace(client=connection.client, default_port=connection.default_port)
        self._acked: list[str] = []  # acknowledged, still in the unacked hash
        self._fetching: list[str] | None = None  # the queue keys of the FETCH under way
        self._sending: list[str] = []  # the acks that FETCH carries
        self._fetch_score = ""  # the instant it records its messages at
        self._fetch_next = True  # FETCH (messages are coming) or BRPOP (wait for one)
        self._held_since: float | None = None  # since when a FETCH waits for a fuller batch
        self._fetched = False  # delivering what FETCH recorded
        self._loop_thread: int | None = None  # the thread of the event loop (acks deferred there)
        self._shared: Any = None  # one redis-py client on the pool, not one per command
        super().__init__(connection, *args, **kwargs)  # type: ignore[no-untyped-call]
        if _stranded:
            self._restore_stranded()

    # -- batched fetch and ack ------------------------------------------------------------------

    def _brpop_start(self, timeout: int | None = None) -> None:
        self._loop_thread = threading.get_ident()
        if _lost_fetches:
            self._restore_lost_fetches()
        if not self._fetch_next or not self.active_queues:
            self._held_since = None
            self.flush_acks()  # BRPOP holds its connection: the acks can't ride with it
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        if self._holding(time.monotonic()):
            return  # the pool has work: the next FETCH takes a fuller batch, the acks with it
        queues = self._queue_cycle.consume(len(self.active_queues))
        lists: list[str] = [
            self._q_for_pri(q, pri)  # type: ignore[no-untyped-call]
            for pri in self.priority_steps
            for q in queues
        ]
        prefix = self.global_keyprefix
        want = min(self.qos.can_consume_max_estimate() or 1, MAX_FETCH)
        acked, self._acked = self._acked, []
        conn = self.client.connection
        self._in_poll = conn
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self._fetching = lists
        self._sending = acked
        self._fetch_score = repr(time.time())
        conn.send_packed_command(
            [
                _fetch_command(
                    prefix, self.unacked_index_key, self.unacked_key, lists, want, acked, self._fetch_score
                )
            ]
        )

    def _batch(self) -> int:
        """The room a FETCH waits for: the worker's batch, lowered with a prefetch lowered since
        (1 outside an event loop: ``drain_events`` never waits for a batch)."""
        batch = _Batching.batch
        if batch == 1 or self.connection.cycle.hub is None:
            return 1
        return min(batch, max(1, (self.qos.prefetch_count or 0) - _Batching.pool))

    def _short_of_room(self) -> bool:
        """Whether the prefetch has room for fewer messages than a batch (an unlimited one never)."""
        free = self.qos.can_consume_max_estimate()
        return free is not None and free < self._batch()

    def _hold_running(self, now: float) -> bool:
        """Whether a FETCH is held back, and has been for less than ``HOLD_S``."""
        return self._held_since is not None and now - self._held_since < HOLD_S

    def _holding(self, now: float) -> bool:
        """Whether the next FETCH waits for room for a fuller batch (``fetch_in_batches``): until
        ``HOLD_S`` after it was first held back, so an acknowledgement never waits longer."""
        if self._short_of_room():
            if self._held_since is None:
                self._hold(now)
                return True
            if self._hold_running(now):
                return True
        self._held_since = None
        return False

    def _hold(self, now: float) -> None:
        """Start holding the next FETCH back, with a timer that makes the event loop look again
        once ``HOLD_S`` has passed (the loop may otherwise sleep for a second or more)."""
        self._held_since = now
        self.connection.cycle.hub.call_later(HOLD_S, _look_again)

    def _acked_on_loop(self) -> None:
        """An ack was just kept for the next FETCH: if that FETCH will wait for a batch, its clock
        and timer start now, before the event loop works out how long it may sleep."""
        if self._held_since is None and self.active_queues and self._short_of_room():
            self._hold(time.monotonic())

    def _acks_wait(self) -> bool:
        """Whether the acks wait for a FETCH held back for a batch: while the channel consumes, and
        no longer than ``HOLD_S`` after it was first held back."""
        return bool(self.active_queues) and self._hold_running(time.monotonic())

    def _brpop_read(self, **options: Any) -> bool:
        lists = self._fetching
        if lists is None:
            got: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
            self._fetch_next = True  # (Empty raised otherwise) a message came: more may follow
            return got
        conn = self.client.connection
        try:
            reply = conn.read_response()
        except redis.ResponseError as exc:  # the script did not run
            reply = exc
        except BaseException as exc:
            self._fetch_lost()
            if isinstance(exc, self.connection_errors):
                conn.disconnect()  # the next tick reconnects, as after kombu's BRPOP
            raise
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._fetching = None
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]
        acked, self._sending = self._sending, []
        if isinstance(reply, redis.ResponseError):
            self._acked[:0] = acked
            if isinstance(reply, redis.exceptions.NoScriptError):  # a new or restarted server
                self._load_fetch()
            else:  # refused (a full noeviction server?): BRPOP still works
                log.warning("FETCH failed (%s); taking the next message with BRPOP", reply)
                self._fetch_next = False
            raise virtual.Empty()
        if not reply:
            self._fetch_next = False  # none waiting: block in BRPOP until one comes
            raise virtual.Empty()
        self._deliver_fetched(lists, reply)
        return True

    def _deliver_fetched(self, lists: list[str], reply: list[Any]) -> None:
        pending = [(lists[int(reply[i]) - 1], reply[i + 1]) for i in range(0, len(reply), 2)]
        self._fetched = True
        try:
            while pending:
                key, item = pending.pop(0)
                dest = key.rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                self.connection._deliver(loads(bytes_to_str(item)), dest)  # type: ignore[no-untyped-call]
        except BaseException:
            # Recorded but not handed over: back on their queues now, not at the visibility timeout.
            for _, item in pending:
                tag = _tag_of(item)
                if tag is not None:
                    self.qos.restore_by_tag(tag)
            raise
        finally:
            self._fetched = False

    def _fetch_lost(self) -> None:
        """The FETCH under way will never be read: its acks are sent again, and what it may have
        taken is put back once Redis answers (``_restore_lost_fetches``)."""
        if self._fetching is None:
            return
        self._fetching = None
        self._acked[:0] = self._sending
        self._sending = []
        _lost_fetches.add((self.global_keyprefix + self.unacked_index_key, self._fetch_score))

    def _on_connection_disconnect(self, connection: Any) -> None:
        if self._fetching is not None and self._in_poll is connection:
            self._fetch_lost()
        super()._on_connection_disconnect(connection)  # type: ignore[no-untyped-call]

    def _restore_lost_fetches(self) -> None:
        index = self.global_keyprefix + self.unacked_index_key
        for key, score in list(_lost_fetches):
            if key != index:
                continue  # another deployment's channel in this process puts it back
            try:
                with self.conn_or_acquire() as client:
                    tags = client.zrange(self.unacked_index_key, score, score, byscore=True)
                for tag in tags:
                    self.qos.restore_by_tag(bytes_to_str(tag))  # type: ignore[no-untyped-call]
            except self.connection_errors:
                return  # still down: the next FETCH tries again
            _lost_fetches.discard((key, score))
            if tags:
                log.warning("put back %d message(s) taken by a FETCH whose reply was lost", len(tags))

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP" and self._fetching is not None:
            self._brpop_read(**options)  # a FETCH reply is not BRPOP's
            return
        super()._poll_error(type, **options)  # type: ignore[no-untyped-call]

    def _defer_ack(self) -> bool:
        """Acks are batched on the event loop's thread while it takes messages; elsewhere (a
        thread pool's thread, no loop) each is sent at once, as kombu does."""
        return self._loop_thread == threading.get_ident() and bool(self.active_queues) and not self.closed

    def flush_acks(self) -> None:
        """Remove the acknowledged messages from the unacked hash now (one round trip)."""
        if not self._acked or self._fetching is not None:
            return  # none, or they ride with the next FETCH, sent as soon as this one is read
        acked, self._acked = self._acked, []
        try:
            self._call(
                _fetch_command(self.global_keyprefix, self.unacked_index_key, self.unacked_key, [], 0, acked)
            )
        except BaseException:
            self._acked[:0] = acked
            raise

    def _call(self, packed: bytes) -> Any:
        pool = self.pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([packed])
            try:
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                self._load_fetch()
                conn.send_packed_command([packed])
                return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _load_fetch(self) -> None:
        pool = self.pool
        conn = pool.get_connection()
        try:
            conn.send_command("SCRIPT", "LOAD", FETCH)
            conn.read_response()
        finally:
            pool.release(conn)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """A client on the channel's pool: one for the channel, not one built per command."""
        if client:
            yield client
            return
        shared = self._shared
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared = self._create_client()  # type: ignore[no-untyped-call]
        yield shared

    # -- losing the connection ------------------------------------------------------------------

    def close(self) -> None:
        """Close, remembering the held messages when Redis can't take them back now."""
        qos = self.__dict__.get("_qos")
        held = list(qos._delivered) if qos is not None and not self.closed else []
        if self._acked and not self.closed:
            try:
                self.flush_acks()
            except self.connection_errors:
                # Still in the unacked hash: put back at the visibility timeout, then skipped.
                log.warning("%d acknowledgement(s) could not be sent; Redis is unreachable", len(self._acked))
                self._acked = []
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


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller; after each tick's FETCH or BRPOP is sent, the acks left are sent too,
    unless they wait for a FETCH held back for a fuller batch."""

    hub: Any = None  # the event loop, once the transport is registered with one

    def on_poll_start(self) -> None:
        """Start each channel's FETCH or BRPOP, then send the acks no FETCH took or waits for."""
        super().on_poll_start()  # type: ignore[no-untyped-call]
        for channel in self._channels:
            if isinstance(channel, Channel) and channel._acked and not channel._acks_wait():
                try:
                    channel.flush_acks()
                except channel.connection_errors:
                    log.warning("could not send acknowledgements; will again", exc_info=True)


class _KeepsLoop:
    """A transport keeping the event loop it is registered with, for the timers of FETCHes held
    back for a batch."""

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's, then the loop kept."""
        super().register_with_event_loop(connection, loop)  # type: ignore[misc]
        self.cycle.hub = loop  # type: ignore[attr-defined]


class Transport(_KeepsLoop, kombu_redis.Transport):
    """kombu's Redis transport with the channel and poller above."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.cycle = Poller()  # type: ignore[no-untyped-call,assignment]


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same channel for Redis behind Sentinel: its pool asks the sentinels for the master."""

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # Reads .client.alt (the sentinels) and .default_port besides _connparams: kombu#582 too.
        with self._connected():
            return super()._sentinel_managed_pool(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class SentinelTransport(_KeepsLoop, kombu_redis.SentinelTransport):
    """kombu's ``sentinel://`` transport with the channel and poller above (``REDIS_URL=sentinel://...``)."""

    Channel = SentinelChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.cycle = Poller()  # type: ignore[no-untyped-call,assignment]


def _fetch_command(
    prefix: str, index: str, hash_: str, lists: list[str], want: int, acked: list[str], score: str = ""
) -> bytes:
    keys = [prefix + index, prefix + hash_, *(prefix + key for key in lists)]
    at = score or repr(time.time())
    command: tuple[str | int, ...] = ("EVALSHA", FETCH_SHA, len(keys), *keys, at, want, *acked)
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub takes one argument
    return packed


def _tag_of(item: bytes) -> str | None:
    try:
        tag = loads(bytes_to_str(item))["properties"]["delivery_tag"]  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError):
        return None
    return tag if isinstance(tag, str) else None
