"""How healthy Redis is for us: eviction policy, memory headroom, records that left. Pure.

Shared by beat (which re-checks while it runs, logs and serves metrics) and ``doctor``; both read
the figures through ``Store`` and judge them here, so they always say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MEMORY_WARN_RATIO = 0.8  # used_memory / maxmemory above this: warn before writes are refused
# Counters in the stats hash (keys.stats) of records that left before their time.
VANISHED = {"due_vanished": "due", "runs_vanished": "run", "jobs_vanished": "job"}
SIZING_FIX = (
    "raise maxmemory, or shorten DUCTAPE_JOB_RETENTION_S, DUCTAPE_RUN_RETENTION_S, "
    "DUCTAPE_DEAD_RETENTION_S or DUCTAPE_DEAD_MAX (README: Sizing Redis)"
)
EVICTION_FIX = "CONFIG SET maxmemory-policy noeviction, and set maxmemory-policy noeviction in redis.conf"


@dataclass(frozen=True)
class Verdict:
    """One judgement: ``ok``, ``info`` or ``warn``, what was seen, and for a problem the fix."""

    status: str
    detail: str
    fix: str | None = None


def eviction_safe(policy: str) -> bool:
    """Whether the policy never drops a key without a TTL (schedules and live jobs have none)."""
    return policy == "noeviction" or policy.startswith("volatile-")


def eviction_verdict(policy: str | None) -> Verdict:
    """The eviction policy, judged."""
    if policy is None:
        return Verdict(
            "info",
            "CONFIG GET is not allowed here (a managed Redis?); make sure "
            "maxmemory-policy is noeviction in the provider's settings",
        )
    if policy == "noeviction":
        return Verdict("ok", "maxmemory-policy is noeviction")
    if eviction_safe(policy):
        # Finished records carry TTLs (their retention), so volatile-* may drop them early.
        return Verdict("ok", f"maxmemory-policy is {policy} (finished records may leave before retention)")
    return Verdict(
        "warn",
        f"maxmemory-policy is {policy!r}: when memory runs out Redis may evict job records and schedules",
        EVICTION_FIX,
    )


def memory_verdict(reading: tuple[int, int] | None) -> Verdict:
    """Memory headroom: used_memory against maxmemory (None: INFO is not allowed here)."""
    if reading is None:
        return Verdict("info", "INFO memory is not allowed here; watch the provider's memory metrics")
    used, maxmemory = reading
    if maxmemory <= 0:
        return Verdict(
            "info",
            f"used_memory {_mb(used)}; no maxmemory set, so Redis grows until the host runs out",
            "set maxmemory from README: Sizing Redis, with maxmemory-policy noeviction",
        )
    share = used / maxmemory
    detail = f"used_memory {_mb(used)} is {share:.0%} of maxmemory {_mb(maxmemory)}"
    if share >= MEMORY_WARN_RATIO:
        return Verdict("warn", detail + ": at 100% writes are refused (or records evicted)", SIZING_FIX)
    return Verdict("ok", detail)


def records_verdict(counters: Mapping[str, int]) -> Verdict:
    """What left Redis: by retention and the dead-letter cap (fine), or vanished (not fine)."""
    vanished = {VANISHED[name]: counters.get(name, 0) for name in VANISHED}
    detail = (
        f"{counters.get('jobs_expired', 0)} finished job(s) left after their retention, "
        f"{counters.get('dead_dropped', 0)} dead letter(s) dropped (retention or DUCTAPE_DEAD_MAX); "
        "vanished before their time: " + ", ".join(f"{n} {kind}" for kind, n in vanished.items())
    )
    if not any(vanished.values()):
        return Verdict("ok", detail)
    return Verdict(
        "warn",
        detail,
        "records were evicted or deleted by hand: check maxmemory-policy (noeviction) and memory "
        "headroom; beat and worker logs name them ('vanished'), and `ductape-jobs failed` lists the runs. "
        f"After fixing, reset the counts: redis-cli HDEL <prefix>:stats {' '.join(VANISHED)}",
    )


def _mb(value: int) -> str:
    return f"{value / 1_048_576:.1f} MiB"
