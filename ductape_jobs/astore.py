"""The Redis data model for asyncio: drives the flows of ops/ and flows.py over ``redis.asyncio``.

The operations themselves live in ops/ (shared with the sync ``Store``); this module only sends
each batch a flow yields and awaits the replies. No thread pool: every round trip is real
non-blocking I/O on the caller's event loop.
"""

from __future__ import annotations

from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from ductape_jobs import ops
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.keys import Keys
from ductape_jobs.ops import REDIS_DOWN, Batch, Flow, Replicas, Stream, unreachable

T = TypeVar("T")


class AsyncStore:
    """The asyncio twin of ``Store`` for the producer's operations."""

    def __init__(self, client: aredis.Redis, keys: Keys, replicas: Replicas | None = None) -> None:
        self.redis = client
        self.keys = keys
        self._scripts = ops.register_scripts(client)
        self.replicas = replicas  # DUCTAPE_WAIT_REPLICAS, as Store

    async def run(self, flow: Flow[T]) -> T:
        """Drive a flow: send each batch it yields, awaiting the replies, until it returns. A
        command that fails is thrown into the flow at its ``yield``, as ``Store.run`` does."""
        try:
            batch = next(flow)
            while True:
                if isinstance(batch, Stream):  # no overlap to gain on one event loop: one pipeline
                    batch = Batch(tuple(batch.calls))
                try:
                    replies = await self._send(batch)
                except (redis.RedisError, BackendUnavailableError) as exc:  # a flow may expect a refusal
                    batch = flow.throw(exc)
                else:
                    batch = flow.send(replies)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _send(self, batch: Batch) -> list[Any]:
        waits = self.replicas is not None and self.replicas.needed(batch.calls)
        try:
            if batch.direct and not waits:
                return [await ops.issue(self.redis, batch.calls[0], self._scripts)]
            # A WAIT ends the pipeline, on its connection after its writes (as Store._send).
            assert not (waits and batch.transaction), "a REPLICATED script in a transaction batch"
            async with self.redis.pipeline(transaction=batch.transaction) as pipe:
                for call in batch.calls:
                    await ops.issue(pipe, call, self._scripts)  # buffers; a script also registers itself
                if not waits:
                    return await pipe.execute()
                assert self.replicas is not None
                pipe.set(self.keys.replicated, "1", px=Replicas.MARK_MS)
                pipe.execute_command("WAIT", self.replicas.count, self.replicas.timeout_ms)
                *replies, _, reached = await pipe.execute()
        except REDIS_DOWN as exc:
            raise unreachable(exc) from None
        self.replicas.check(reached, batch.calls)
        return replies
