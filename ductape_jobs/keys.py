"""The whole Redis key space of one deployment, in one screen.

Every key is built here, under the deployment's prefix, so several deployments can share one
server and the data model can be read at a glance. The Lua scripts build theirs with the functions
of ``lua_prelude()``, generated from these builders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builders for one key prefix."""

    prefix: str = "ductape"

    def job(self, job_id: str) -> str:
        """HASH: a job's spec (JSON, changed only by UPDATE_JOB) and its state fields."""
        return f"{self.prefix}:job:{job_id}"

    def run(self, run_id: str) -> str:
        """HASH: one run's status, attempts, timings, result or error."""
        return f"{self.prefix}:run:{run_id}"

    def job_runs(self, job_id: str) -> str:
        """ZSET: a job's recent run ids by nominal time (trimmed)."""
        return f"{self.prefix}:runs:{job_id}"

    def fingerprint(self, digest: str) -> str:
        """STRING: job id of the live recurring job with this fingerprint."""
        return f"{self.prefix}:fp:{digest}"

    def key_index(self, key: str) -> str:
        """STRING: job id of the live job scheduled with this ``key`` (removed when it retires)."""
        return f"{self.prefix}:key:{key}"

    def idempotency(self, key: str) -> str:
        """STRING: job id of the one-off scheduled with this ``idempotency_key``; expires with the
        idempotency window (or goes with its job)."""
        return f"{self.prefix}:idem:{key}"

    @property
    def jobs(self) -> str:
        """ZSET: every job id by creation time (for listing)."""
        return f"{self.prefix}:jobs"

    @property
    def due(self) -> str:
        """ZSET: what beat must release, by due time; members are ``j:<job_id>`` or ``r:<run_id>``."""
        return f"{self.prefix}:due"

    @property
    def inflight(self) -> str:
        """ZSET: runs handed to Celery and not finished, by when each last moved (ms); beat sends
        a run again when its message is in no queue and held by no worker (lost in a crash)."""
        return f"{self.prefix}:inflight"

    @property
    def dead(self) -> str:
        """ZSET: dead-lettered run ids by failure time."""
        return f"{self.prefix}:dead"

    @property
    def retired(self) -> str:
        """ZSET: finished job ids by when their retention ends; beat's sweep removes them then."""
        return f"{self.prefix}:retired"

    def imported(self, app: str) -> str:
        """HASH: job id -> digest of each beat_schedule entry imported from Celery app ``app``
        (SYNC_IMPORTED; an entry leaves when it leaves the config)."""
        return f"{self.prefix}:imported:{app}"

    @property
    def stats(self) -> str:
        """HASH: counters of records that left (by retention, cap, or vanished), for doctor/metrics."""
        return f"{self.prefix}:stats"

    @property
    def set_aside(self) -> str:
        """ZSET: jobs beat could not read or decide, by when they were set aside (the newest 1,000;
        each job's ``last_error`` says why)."""
        return f"{self.prefix}:set_aside"

    @property
    def events(self) -> str:
        """SET: ``product_tag/event`` pairs some worker has registered."""
        return f"{self.prefix}:events"

    @property
    def workers(self) -> str:
        """HASH: worker hostname -> JSON of the envs and events it serves, and when it was seen."""
        return f"{self.prefix}:workers"

    @property
    def beat_lock(self) -> str:
        """STRING: the beat leader's fencing token, with a TTL."""
        return f"{self.prefix}:beat:lock"

    @property
    def beat_fence(self) -> str:
        """STRING: counter that hands out fencing tokens."""
        return f"{self.prefix}:beat:fence"

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
