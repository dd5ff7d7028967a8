"""What a flow is made of: the commands it sends, the round trips it yields, and the flow type.

Each operation is a *flow*: a generator that yields a ``Batch`` or ``Stream`` (commands for one
round trip) and is sent back the replies, then returns its parsed result. It does no I/O
itself, so ``Store.run`` and ``await AsyncStore.run`` drive the same code, and flows compose
with ``yield from``. psycopg 3 splits its protocol from its sync and async connections the
same way. A command that fails in Redis is thrown into the flow at its ``yield``, so a flow may
catch a refusal it expects (``CONFIG`` or ``INFO`` not allowed); connection trouble arrives as
``BackendUnavailableError``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import redis

from ductape_jobs import scripts
from ductape_jobs.errors import BackendUnavailableError, NotReplicatedError

if TYPE_CHECKING:
    from ductape_jobs.settings import Settings

T = TypeVar("T")

SCRIPT_NAMES = (
    "CREATE_JOBS",
    "CLAIM_DUE",
    "SYNC_IMPORTED",
    "READ_DUE",
    "BEGIN_RUN",
    "FINISH_RUN",
    "RENEW_RUN",
    "LOSE_RUN",
    "CHANGE_STATE",
    "CANCEL_RUN",
    "ADD_RUN",
    "BACKFILL",
    "RESEND_RUN",
    "FORGET_RUNS",
    "SET_ASIDE_RUN",
    "ACQUIRE_LOCK",
    "RENEW_LOCK",
    "RUN_GONE",
    "SWEEP",
    "UPDATE_JOB",
)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
# The writes a failover must not lose, waited on with DUCTAPE_WAIT_REPLICAS (docs/design.md
# §11): what a caller is told is done (the producer's), beat's leadership and claims, and a
# run's start and outcome. The rest is redone by whoever wrote it (renewals, sweeps, resends).
REPLICATED = frozenset(
    {
        "CREATE_JOBS",
        "UPDATE_JOB",
        "CHANGE_STATE",
        "CANCEL_RUN",
        "ADD_RUN",
        "BACKFILL",
        "ACQUIRE_LOCK",
        "CLAIM_DUE",
        "SYNC_IMPORTED",
        "BEGIN_RUN",
        "FINISH_RUN",
        "LOSE_RUN",
    }
)


@dataclass(frozen=True)
class Call:
    """One redis-py command by method name: the name is the same on sync and asyncio clients."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Eval:
    """One run of a Lua script from scripts.py, named as there.

    ``defer``: the reply is not waited for (None stands in for it). The sync store sends it on
    this thread's connection and reads the reply before the thread's next command; only for an
    idempotent write whose reply nobody needs (a completed run's FINISH_RUN)."""

    script: str
    keys: list[str]
    args: list[Any]
    defer: bool = False


@dataclass(frozen=True)
class Batch:
    """Commands for one round trip: sent directly when alone, else as one pipeline."""

    calls: tuple[Call | Eval, ...]
    transaction: bool = False

    @property
    def direct(self) -> bool:
        """Whether one plain command does (no pipeline, so no SCRIPT EXISTS round trip)."""
        return len(self.calls) == 1 and not self.transaction


@dataclass(frozen=True)
class Stream:
    """Calls for one round trip, built while they are sent: the server runs each while the next
    is built (the sync store streams them; the asyncio store sends them as one pipeline)."""

    calls: Iterator[Eval]


Flow = Generator[Batch | Stream, list[Any], T]


@dataclass(frozen=True)
class Replicas:
    """How many replicas must have a REPLICATED write before it counts (Redis ``WAIT``)."""

    count: int
    timeout_ms: int
    # Each WAIT follows a write of ``Keys.replicated`` with this PX: a retried script that found
    # its write already done writes nothing, and a WAIT then would cover nothing.
    MARK_MS: ClassVar[int] = 60_000

    @classmethod
    def of(cls, settings: Settings) -> Replicas | None:
        """From DUCTAPE_WAIT_REPLICAS / DUCTAPE_WAIT_TIMEOUT_MS; None when off (0)."""
        return cls(settings.wait_replicas, settings.wait_timeout_ms) if settings.wait_replicas else None

    def needed(self, calls: Iterable[Call | Eval]) -> bool:
        """Whether these calls hold a write that must be waited on."""
        return any(isinstance(call, Eval) and call.script in REPLICATED for call in calls)

    def check(self, reached: Any, what: Iterable[Call | Eval]) -> None:
        """NotReplicatedError unless ``reached`` (WAIT's reply) is enough."""
        if int(reached) >= self.count:
            return
        names = sorted({call.script for call in what if isinstance(call, Eval) and call.script in REPLICATED})
        raise NotReplicatedError(
            f"{', '.join(names)} reached the primary but only {int(reached)} of {self.count} "
            f"replica(s) within {self.timeout_ms} ms (DUCTAPE_WAIT_REPLICAS, DUCTAPE_WAIT_TIMEOUT_MS): "
            "a failover now could lose it; check the replicas (INFO replication). Retrying is safe"
        )


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to ``size`` items, taken from ``items`` only as each list is asked for."""
    rest = iter(items)
    while chunk := list(islice(rest, size)):
        yield chunk


def send(*calls: Call | Eval, transaction: bool = False) -> Flow[list[Any]]:
    """Send commands in one round trip; their replies, in order (no round trip for none)."""
    if not calls:
        return []
    return (yield Batch(calls, transaction))


def one(call: Call | Eval) -> Flow[Any]:
    """Send one command; its reply."""
    (reply,) = yield from send(call)
    return reply


def register_scripts(client: Any) -> dict[str, Any]:
    """The scripts registered on a sync or asyncio client (no I/O: loaded on first use)."""
    return {name: client.register_script(getattr(scripts, name)) for name in SCRIPT_NAMES}


def issue(target: Any, call: Call | Eval, registered: Mapping[str, Any]) -> Any:
    """Put one call to a client or pipeline; the reply (awaitable on asyncio clients)."""
    if isinstance(call, Eval):
        return registered[call.script](keys=call.keys, args=call.args, client=target)
    return getattr(target, call.method)(*call.args, **call.kwargs)


def unreachable(exc: Exception) -> BackendUnavailableError:
    """The error a caller sees for connection trouble (never the URL: it may hold a password)."""
    return BackendUnavailableError(
        f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL and that the server is up"
    )
