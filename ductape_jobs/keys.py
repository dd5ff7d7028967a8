"""The whole Redis key space of one deployment, in one screen.

Every key is built here, under the deployment's prefix, so several deployments can share one
server and the data model can be read at a glance. The Lua scripts build theirs with the functions
of ``lua_prelude()``, generated from these builders.

A deployment's jobs are split into ``shards`` (``DUCTAPE_SHARDS``, docs/design.md section 11):
a job's shard is the first 8 hex digits of its id, mod ``shards``. With more than one shard,
every key of shard ``k`` lives under ``<prefix>:{<prefix>.<k>}`` (its *space*), so a script
working on one shard touches keys of one Redis Cluster hash slot; with one shard the space is
the prefix itself, and the keys are those of deployments older than shards.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from dataclasses import dataclass, field, replace

ROUTE_HEX = 8  # a job id's first 8 hex digits place it in its shard
_HEX = re.compile(f"[0-9a-f]{{{ROUTE_HEX}}}")


def route_of(text: str) -> str:
    """The route (8 hex digits) of a ``key`` or ``idempotency_key``: a job keyed by it gets an id
    that starts with it, so the index entry and the job fall in one shard whatever ``shards``."""
    return hashlib.sha256(text.encode()).hexdigest()[:ROUTE_HEX]


def routed(job_id: str, route: str) -> str:
    """``job_id`` (32 hex digits) with its first digits replaced by ``route``."""
    if len(job_id) != 32 or not _HEX.fullmatch(route[:ROUTE_HEX]):
        return job_id
    return route[:ROUTE_HEX] + job_id[ROUTE_HEX:]


def shard_number(job_id: str, shards: int) -> int:
    """The shard of a job: its id's first 8 hex digits (random, or its route) mod ``shards``;
    an id that does not start with hex digits (none this library makes) by its CRC-32."""
    if shards == 1:
        return 0
    head = job_id[:ROUTE_HEX]
    number = int(head, 16) if _HEX.fullmatch(head) else zlib.crc32(job_id.encode())
    return number % shards


@functools.lru_cache(maxsize=16)
def _spaces(prefix: str, shards: int) -> tuple[str, ...]:
    """Every shard's space, built once per deployment: ``for_shard`` makes a ``Keys`` per call
    about a job of another shard, and ``every_shard`` one per shard (1,024 of 1,024 each)."""
    if shards == 1:
        return (prefix,)
    return tuple(f"{prefix}:{{{prefix}.{k}}}" for k in range(shards))


@dataclass(frozen=True)
class Keys:
    """Key builders for one key prefix, split into ``shards``; the shard-scoped keys (the due
    index, the beat lock, ...) are those of shard ``shard``; job, run and runs keys are in the
    shard of their job, whatever ``shard`` is."""

    prefix: str = "ductape"
    shards: int = 1
    shard: int = 0
    # every shard's space: a job's key is built on every call about it
    _spaces: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.shards:
            raise ValueError(f"shard {self.shard} is not one of the {self.shards} shards")
        object.__setattr__(self, "_spaces", _spaces(self.prefix, self.shards))

    # -- shards -------------------------------------------------------------------------------

    @property
    def space(self) -> str:
        """What this shard's keys start with: the prefix with one shard (today's key names),
        ``<prefix>:{<prefix>.<shard>}`` with more (one Redis Cluster hash tag per shard). The
        scripts get it as their ``prefix``."""
        return self._spaces[self.shard]

    def shard_of(self, job_id: str) -> int:
        """The shard ``job_id`` lives in."""
        return shard_number(job_id, self.shards)

    def for_shard(self, shard: int) -> Keys:
        """The keys of shard ``shard``."""
        return self if shard == self.shard else replace(self, shard=shard)

    def of_job(self, job_id: str) -> Keys:
        """The keys of the shard ``job_id`` lives in."""
        return self.for_shard(self.shard_of(job_id))

    def of_run(self, run_id: str) -> Keys:
        """The keys of the shard a run lives in: its job's (a run id is ``<job_id>:<ms>``,
        terms.run_id_for)."""
        return self.of_job(run_id.rsplit(":", 1)[0])

    def every_shard(self) -> list[Keys]:
        """The keys of each shard, shard 0 first."""
        return [self.for_shard(shard) for shard in range(self.shards)]

    # -- one job's keys (in its shard) ---------------------------------------------------------

    def job(self, job_id: str) -> str:
        """HASH: a job's spec (JSON, changed only by UPDATE_JOB) and its state fields."""
        return f"{self._spaces[shard_number(job_id, self.shards)]}:job:{job_id}"

    def run(self, run_id: str) -> str:
        """HASH: one run's status, attempts, timings, result or error."""
        return f"{self._spaces[shard_number(run_id.rsplit(':', 1)[0], self.shards)]}:run:{run_id}"

    def job_runs(self, job_id: str) -> str:
        """ZSET: a job's recent run ids by nominal time (trimmed)."""
        return f"{self._spaces[shard_number(job_id, self.shards)]}:runs:{job_id}"

    # -- this shard's keys ---------------------------------------------------------------------

    def fingerprint(self, digest: str) -> str:
        """STRING: job id of the live recurring job with this fingerprint (in the shard of its
        job, whose id starts with the first 8 hex digits of the digest made without the session
        digest, planning.identity_route)."""
        return f"{self.space}:fp:{digest}"

    def key_index(self, key: str) -> str:
        """STRING: job id of the live job scheduled with this ``key`` (removed when it retires;
        in the shard of its job, routed by ``route_of(key)``)."""
        return f"{self.space}:key:{key}"

    def idempotency(self, key: str) -> str:
        """STRING: job id of the one-off scheduled with this ``idempotency_key``; expires with the
        idempotency window (or goes with its job). In the shard of its job."""
        return f"{self.space}:idem:{key}"

    @property
    def jobs(self) -> str:
        """ZSET: every job id by creation time (for listing)."""
        return f"{self.space}:jobs"

    @property
    def due(self) -> str:
        """ZSET: what beat must release, by due time; members are ``j:<job_id>`` or ``r:<run_id>``."""
        return f"{self.space}:due"

    @property
    def inflight(self) -> str:
        """ZSET: runs handed to Celery and not finished, by when each last moved (ms); beat sends
        a run again when its message is in no queue and held by no worker (lost in a crash)."""
        return f"{self.space}:inflight"

    @property
    def dead(self) -> str:
        """ZSET: dead-lettered run ids by failure time."""
        return f"{self.space}:dead"

    @property
    def retired(self) -> str:
        """ZSET: finished job ids by when their retention ends; beat's sweep removes them then."""
        return f"{self.space}:retired"

    def imported(self, app: str) -> str:
        """HASH: job id -> digest of each beat_schedule entry imported from Celery app ``app``
        (SYNC_IMPORTED; an entry leaves when it leaves the config)."""
        return f"{self.space}:imported:{app}"

    @property
    def stats(self) -> str:
        """HASH: counters of records that left (by retention, cap, or vanished), for doctor/metrics."""
        return f"{self.space}:stats"

    @property
    def set_aside(self) -> str:
        """ZSET: jobs beat could not read or decide, by when they were set aside (the newest 1,000;
        each job's ``last_error`` says why)."""
        return f"{self.space}:set_aside"

    @property
    def events(self) -> str:
        """SET: ``product_tag/event`` pairs some worker has registered."""
        return f"{self.prefix}:events"

    @property
    def workers(self) -> str:
        """HASH: worker hostname -> JSON of the envs and events it serves, and when it was seen."""
        return f"{self.prefix}:workers"

    @property
    def beats(self) -> str:
        """ZSET (one per deployment): beat instance -> until when it is alive (ms), renewed with
        its locks; beats share the shards among the live ones (beat/leader.py)."""
        return f"{self.prefix}:beats"

    @property
    def replicated(self) -> str:
        """STRING (one per deployment, ``PX`` 60 s): written just before each WAIT of
        DUCTAPE_WAIT_REPLICAS, so the WAIT covers every write the server made before it, also
        one an earlier connection made (a retried script that finds its write done writes nothing)."""
        return f"{self.prefix}:replicated"

    @property
    def beat_lock(self) -> str:
        """STRING: the fencing token of this shard's beat leader, with a TTL."""
        return f"{self.space}:beat:lock"

    @property
    def beat_fence(self) -> str:
        """STRING: counter that hands out fencing tokens."""
        return f"{self.space}:beat:fence"

    # -- one per deployment ----------------------------------------------------------------------

    def cache(self, tag: str, digest: str) -> str:
        """STRING: a cached result (JSON) with the cache's TTL."""
        return f"{self.prefix}:cache:{tag}:{digest}"

    @property
    def broker_prefix(self) -> str:
        """Prefix kombu puts before every broker key (queues, unacked), to isolate deployments."""
        return f"{self.prefix}:broker:"

    @property
    def broker_unacked(self) -> str:
        """HASH (kombu's): messages workers hold unacknowledged, by delivery tag."""
        return f"{self.broker_prefix}unacked"

    @property
    def broker_unacked_index(self) -> str:
        """ZSET (kombu's): delivery tag -> when a worker took the message (epoch seconds)."""
        return f"{self.broker_prefix}unacked_index"


# The keys the Lua scripts build themselves, as Lua functions of the prefix (and an id): the
# prelude is derived from the builders above, so the scripts and Python cannot disagree.
LUA_KEYS = {
    "job_key": "job",
    "run_key": "run",
    "runs_key": "job_runs",
    "jobs_key": "jobs",
    "due_key": "due",
    "inflight_key": "inflight",
    "dead_key": "dead",
    "retired_key": "retired",
    "stats_key": "stats",
    "set_aside_key": "set_aside",
}
_PREFIX, _ID = "\x00prefix\x00", "\x00id\x00"


def lua_prelude() -> str:
    """Lua functions ``job_key(prefix, id)``, ``due_key(prefix)``, ... building keys as ``Keys`` does."""
    keys = Keys(_PREFIX)
    lines = []
    for name, builder in LUA_KEYS.items():
        made = getattr(keys, builder)
        built = made(_ID) if callable(made) else made
        params = "prefix, id" if callable(made) else "prefix"
        parts = [part for part in re.split(f"({_PREFIX}|{_ID})", built) if part]
        expr = " .. ".join({_PREFIX: "prefix", _ID: "id"}.get(p) or _lua_string(p) for p in parts)
        lines.append(f"local function {name}({params}) return {expr} end")
    return "\n".join(lines) + "\n"


def _lua_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
