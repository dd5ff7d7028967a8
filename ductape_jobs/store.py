"""The sync driver of the data model's flows: connections, round trips and error mapping.

Every operation is a flow in ops/ (the producer's, beat's and the worker's, each written once);
``Store.run`` sends what a flow yields and hands back the replies, as ``AsyncStore.run`` does for
asyncio. What the driver adds: a lone script call runs on this thread's own connection, packed by
hiredis (the hot path of workers and beat), a deferred ``Eval`` is sent without waiting for its
reply (read before the thread's next command: ``unread``, ``settle``), a ``Stream`` overlaps its
calls, and connection trouble becomes BackendUnavailableError. The runner and the heartbeat keep
a few thin methods (runner.RunStore, heartbeat.Leases): their stable interface. Only doctor
also reads a few keys itself, to diagnose a deployment. Times are passed in, never read here.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hiredis
import redis

from ductape_jobs import ops
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.keys import Keys
from ductape_jobs.ops import REDIS_DOWN, Batch, Eval, Flow, Replicas, Stream, unreachable
from ductape_jobs.records import (
    Claim,
    Dispatch,
    DueEntry,
    Finish,
    Lease,
    Retention,
    Started,
    StateAction,
    Swept,
    Unreadable,
)
from ductape_jobs.rows import Answered

__all__ = [
    "Claim",
    "Dispatch",
    "DueEntry",
    "Retention",
    "Started",
    "Store",
    "Swept",
    "Unreadable",
    "guarded",
]

T = TypeVar("T")
log = logging.getLogger("ductape_jobs.store")


class Store:
    """The sync driver for one deployment's records in one Redis: ``run(flow)``."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        retention: Retention | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.retention = retention or Retention()
        # DUCTAPE_WAIT_REPLICAS: each REPLICATED write waits for them on its own connection
        # (WAIT counts what that connection wrote), and none is deferred.
        self.replicas = replicas
        self._scripts = ops.register_scripts(client)
        self._names = {script.sha: name for name, script in self._scripts.items()}  # for logs
        self._local = threading.local()

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow from ops/ (or flows.py): send each round trip it yields, hand back the
        replies. A command that fails is thrown into the flow at its ``yield``."""
        try:
            request = next(flow)
            while True:
                try:
                    replies = self._round(request)
                except (redis.RedisError, BackendUnavailableError) as exc:  # a flow may expect a refusal
                    request = flow.throw(exc)
                else:
                    request = flow.send(replies)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _round(self, request: Batch | Stream) -> list[Any]:
        if isinstance(request, Stream):
            return self._stream(request)
        if request.direct and isinstance(request.calls[0], Eval):
            return [self._eval(request.calls[0])]
        return self._send(request)

    def _eval(self, call: Eval) -> Any:
        """Run a lone script call on this thread's own connection, packed by hiredis and read
        directly: redis-py's per-command layers cost about as much as the round trip on a small
        machine, and workers and beat make these calls on every run. Its retries are kept.

        A deferred call (``Eval.defer``) is sent and its reply left to be read before this
        thread's next command (None is returned): for an idempotent write whose reply nobody
        waits on.
        """
        script = self._scripts[call.script]
        held = self._held()
        conn = held.conn
        packed = [hiredis.pack_command(("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args))]
        # Deferred only once this connection has run the script: a NOSCRIPT reply read later
        # would leave the command undone until this thread's next call. Never while writes wait
        # for replicas: the reply would come before the replicas have it.
        defer = call.defer and script.sha in held.loaded and self.replicas is None

        def attempt() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return None if defer else conn.read_response()

        # guarded(), written out: a generator's context manager costs ~2 us, twice a run.
        try:
            self._settle(held)
            _drop_if_stale(conn)
            try:
                reply = conn.retry.call_with_retry(attempt, lambda _: conn.disconnect())
            except redis.exceptions.NoScriptError:  # a new or restarted server: load, then once more
                # on this thread's own connection: a pool connection would stay open after it
                conn.send_command("SCRIPT", "LOAD", script.script)
                conn.read_response()
                reply = conn.retry.call_with_retry(attempt, lambda _: conn.disconnect())
            except redis.ResponseError:
                raise  # the reply was read whole: the connection is still in step
            except BaseException:
                conn.disconnect()
                raise
            if defer:
                held.pending = (script, packed)
            else:
                held.loaded.add(script.sha)
            if self.replicas is not None and self.replicas.needed([call]):
                self._wait(conn, [call])
            return reply
        except REDIS_DOWN as exc:
            raise unreachable(exc) from None

    def _wait(self, conn: Any, calls: list[Eval]) -> None:
        """WAIT on ``conn`` until the replicas have what it wrote (NotReplicatedError if not)."""
        assert self.replicas is not None
        try:
            conn.send_command("SET", self.keys.replicated, "1", "PX", Replicas.MARK_MS)
            conn.send_command("WAIT", self.replicas.count, self.replicas.timeout_ms)
            conn.read_response()
            reached = conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        self.replicas.check(reached, calls)

    def _settle(self, held: _Held) -> None:
        """Read the reply a deferred command left on this thread's connection.

        Sent whole before the caller moved on, the command has reached Redis; it is sent again
        only when its reply can't be read (connection trouble) or the server lost its scripts.
        """
        if held.pending is None:
            return
        pending = held.pending
        script, packed = pending
        held.pending = None
        conn = held.conn
        try:
            conn.read_response()
            return
        except redis.exceptions.NoScriptError:
            self.redis.script_load(script.script)
        except redis.ResponseError as exc:
            log.error("a deferred %s failed in Redis: %s", self._names.get(script.sha, "script"), exc)
            return
        except REDIS_DOWN:
            conn.disconnect()
        except BaseException:
            conn.disconnect()
            raise

        def again() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()

        try:
            conn.retry.call_with_retry(again, lambda _: conn.disconnect())
        except REDIS_DOWN:
            # Still unread: kept, so the next call (the worker retries until Redis is back)
            # sends it again rather than forgetting a run's outcome.
            held.pending = pending
            raise

    def _held(self) -> _Held:
        """This thread's connection (taken from the pool once, so ``close()`` still ends it)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():  # new thread, or a forked pool child
            pool = self.redis.connection_pool
            try:
                conn = pool.get_connection()  # connects: Redis may be down right now
            except REDIS_DOWN as exc:
                # BackendUnavailableError like any other call, so the runner writes a run's outcome
                # again once Redis is back: the heartbeat thread's first call (confirming a
                # completion sent without waiting) may come while Redis restarts.
                raise unreachable(exc) from None
            held = _Held(os.getpid(), conn)
            # When its thread (or greenlet) ends, the connection goes back to the pool, closed, so
            # a reply still unread there can never reach the connection's next user.
            weakref.finalize(held, _give_back, pool, held.conn)
            self._local.held = held
        return held

    def _stream(self, stream: Stream) -> list[Any]:
        """Send each script call as soon as it is built, then read all replies: one round trip,
        with the server running each call while the client builds the next."""
        pool = self.redis.connection_pool
        sent: list[tuple[Eval, tuple[Any, ...]]] = []  # (call, command)
        replies: list[Any] = []
        with guarded():
            conn: Any = pool.get_connection()  # redis-py's Connection: its send/read calls are untyped
            try:
                for call in stream.calls:
                    script = self._scripts[call.script]
                    command = ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
                    conn.send_packed_command([hiredis.pack_command(command)], check_health=False)
                    sent.append((call, command))
                for _ in sent:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:  # the rest are read, so the connection stays in step
                        replies.append(exc)
                for at, reply in enumerate(replies):
                    if isinstance(reply, redis.exceptions.NoScriptError):
                        # The server lost its script cache (a restart, a failover): nothing of this
                        # call ran. Run again on this connection, so a WAIT below counts it.
                        call, command = sent[at]
                        conn.send_command("SCRIPT", "LOAD", self._scripts[call.script].script)
                        conn.read_response()
                        conn.send_command(*command)
                        replies[at] = conn.read_response()
                    elif isinstance(reply, redis.ResponseError):
                        raise reply
                calls = [call for call, _ in sent]
                if self.replicas is not None and self.replicas.needed(calls):
                    self._wait(conn, calls)
            except redis.ResponseError:
                raise  # every reply was read: the connection is still in step
            except BaseException:
                conn.disconnect()  # a half-sent or half-read stream leaves the connection unusable
                raise
            finally:
                pool.release(conn)
        return replies

    def _send(self, batch: Batch) -> list[Any]:
        waits = self.replicas is not None and self.replicas.needed(batch.calls)
        with guarded():
            if batch.direct and not waits:
                return [ops.issue(self.redis, batch.calls[0], self._scripts)]
            # A WAIT ends the pipeline: on its connection, after its writes (never in a MULTI,
            # where WAIT would not block: no transaction batch holds a REPLICATED script).
            assert not (waits and batch.transaction), "a REPLICATED script in a transaction batch"
            with self.redis.pipeline(transaction=batch.transaction) as pipe:
                for call in batch.calls:
                    ops.issue(pipe, call, self._scripts)
                if not waits:
                    return pipe.execute()
                assert self.replicas is not None
                pipe.set(self.keys.replicated, "1", px=Replicas.MARK_MS)
                pipe.execute_command("WAIT", self.replicas.count, self.replicas.timeout_ms)  # type: ignore[no-untyped-call]
                *replies, _, reached = pipe.execute()
            self.replicas.check(reached, batch.calls)
            return replies

    def unread(self) -> Callable[[], bool]:
        """Whether the command this thread last sent without waiting is still unread (its reply
        is read before the thread's next command; an idle thread leaves it unread)."""
        held = self._held()
        mark = held.pending
        return lambda: mark is not None and held.pending is mark

    def settle(self) -> None:
        """Make sure this thread's outcome sent without waiting has reached Redis (sent again if
        its reply can't be read); raises BackendUnavailableError while Redis is down."""
        held = self._held()
        with guarded():
            self._settle(held)

    # -- the runner's and the heartbeat's stable interface (runner.RunStore, heartbeat.Leases) --

    def begin_run(self, run_id: str, job_id: str, now_ms: int, lease_ms: int, owner: str) -> Started:
        """BEGIN_RUN for delivery ``owner`` (ops.worker.begin_run)."""
        return self.run(
            ops.worker.begin_run(self.keys, self.retention, run_id, job_id, now_ms, lease_ms, owner)
        )

    def renew_run(self, run_id: str, owner: str, now_ms: int, lease_ms: int) -> Lease:
        """RENEW_RUN: extend ``owner``'s lease (ops.worker.renew_run)."""
        return self.run(ops.worker.renew_run(self.keys, run_id, owner, now_ms, lease_ms))

    def finish_run(
        self, run_id: str, job_id: str, attempt: int, now_ms: int, outcome: Finish, **rest: Any
    ) -> bool:
        """FINISH_RUN: one attempt's outcome (ops.worker.finish_run, which names ``rest``);
        ``wait=False`` defers it."""
        k, r = self.keys, self.retention
        return self.run(ops.worker.finish_run(k, r, run_id, job_id, attempt, now_ms, outcome, **rest))

    def change_state(
        self, action: StateAction, job_id: str, now_ms: int, next_ms: int | None = None, runs_done: int = 0
    ) -> Answered:
        """CHANGE_STATE with this store's retention (ops.change_state)."""
        flow = ops.change_state(
            self.keys, action, job_id, now_ms, next_ms, runs_done, job_retention_s=self.retention.job_s
        )
        return self.run(flow)

    def cached_result(self, key: str) -> str | None:
        """A live cached result (JSON), or None (ops.worker.cached_result)."""
        return self.run(ops.worker.cached_result(key))

    def store_result(self, key: str, result_json: str, ttl_ms: int) -> None:
        """Cache a successful result for ttl_ms (ops.worker.store_result)."""
        self.run(ops.worker.store_result(key, result_json, ttl_ms))


@contextmanager
def guarded() -> Iterator[None]:
    """Context-manager form of the same translation, for multi-step callers."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise unreachable(exc) from None


@dataclass
class _Held:
    """One thread's own connection, the scripts its server is known to hold, and the deferred
    command whose reply is still to be read."""

    pid: int
    conn: Any  # redis-py's Connection: its send/read calls are untyped
    pending: tuple[Any, list[bytes]] | None = None
    loaded: set[str] = field(default_factory=set)  # shas run on this connection since it connected

    def __post_init__(self) -> None:
        self.conn.register_connect_callback(self.on_connect)  # kept weakly: a method of ours

    def on_connect(self, _: Any) -> None:
        """A new connection may be to a restarted server, which has lost its scripts."""
        self.loaded.clear()


def _give_back(pool: Any, conn: Any) -> None:
    conn.disconnect()
    pool.release(conn)


def _drop_if_stale(conn: Any) -> None:
    """Disconnect a connection with something to read though nothing is owed: the server closed
    it (restarted) while it sat idle. The next send reconnects, as redis-py's pool does."""
    try:
        if conn.can_read(timeout=0):
            conn.disconnect()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()
