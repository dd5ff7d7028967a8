"""Moving a deployment's records to another shard count (``ductape-jobs reshard``), offline.

Every beat, worker and producer must be stopped: nothing here is atomic across keys, and a
process still running with the old ``DUCTAPE_SHARDS`` would read and write the old names. Each
step can be run again after an interruption (a key already where it belongs is left alone).

What moves: each job's hash and runs, each run's hash (RENAME, which keeps its TTL), each
identity entry (fingerprint, key, idempotency) to its job's new shard, with the job's ``fp`` and
``idem`` fields renamed to match; the per-shard indexes (``jobs``, ``due``, ``inflight``,
``dead``, ``retired``, ``set_aside``) and ``imported:<app>`` hashes, entry by entry, to the
shard of their job; the ``stats`` counters summed into shard 0; every shard's fencing counter
set to the highest of the old ones (fencing tokens only ever increase).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import redis

from ductape_jobs import jobfields
from ductape_jobs.keys import Keys, route_of
from ductape_jobs.planning import identity_route

INDEXES = ("jobs", "due", "inflight", "dead", "retired", "set_aside")
IDENTITY = ("fp", "key", "idem")
SCAN_COUNT = 1_000


@dataclass
class Moved:
    """What a reshard did."""

    keys: int = 0  # job, run, runs and identity keys renamed
    entries: int = 0  # index and imported entries written to their new shard
    missed: int = 0  # identity entries now in another shard than a new request looks in


def busy(client: redis.Redis, old: Keys, now_ms: int) -> list[str]:
    """Why the records cannot move now: beats alive or shard locks held (empty: they can)."""
    why = [f"beat {_text(b)} is alive" for b in client.zrangebyscore(old.beats, now_ms, "+inf")]
    for shard in old.every_shard():
        holder = client.get(shard.beat_lock)
        if holder is not None:
            why.append(f"{shard.beat_lock} is held by {_text(holder)}")
    return why


def reshard(client: redis.Redis, old: Keys, new: Keys) -> Moved:
    """Move every record of ``old``'s shard count to ``new``'s (same prefix)."""
    if old.prefix != new.prefix:
        raise ValueError(f"a reshard keeps the prefix: {old.prefix!r} is not {new.prefix!r}")
    moved = Moved()
    if old.shards == new.shards:
        return moved
    spaces = sorted((k.space for k in old.every_shard()), key=len, reverse=True)
    for shard in old.every_shard():
        for key in client.scan_iter(match=f"{shard.space}:*", count=SCAN_COUNT):
            _move_record(client, shard, _text(key), new, spaces, moved)
    _move_indexes(client, old, new, moved)
    return moved


def _move_record(
    client: redis.Redis, old: Keys, key: str, new: Keys, spaces: list[str], moved: Moved
) -> None:
    kind, _, ident = key[len(old.space) + 1 :].partition(":")
    if kind == "job":
        target = new.job(ident)
        fields = client.hmget(key, "fp", "idem")
        renamed: dict[Any, Any] = {
            name: _identity_target(_text(value), ident, new, spaces)
            for name, value in zip(("fp", "idem"), fields, strict=True)
            if value
        }
        if renamed:
            client.hset(key, mapping=renamed)
    elif kind == "runs":
        target = new.job_runs(ident)
    elif kind == "run":
        target = new.run(ident)
    elif kind in IDENTITY:
        job_id = client.get(key)
        if job_id is None:
            return
        owner = new.of_job(_text(job_id))
        target = f"{owner.space}:{kind}:{ident}"
        # A job id made before ids were routed (or a schedule whose update moved its
        # fingerprint) is in another shard than the one a new request with it looks in.
        moved.missed += owner.shard != new.shard_of(
            _route(client, kind, ident, [old.job(_text(job_id)), new.job(_text(job_id))])
        )
    else:
        return  # an index, a lock, the broker's or another deployment-wide key: not a record
    if target != key:
        client.rename(key, target)
        moved.keys += 1


def _route(client: redis.Redis, kind: str, ident: str, job_keys: list[str]) -> str:
    """What a new request with this identity routes its job id by (keys.routed): for a
    fingerprint, its job's spec says (a sealed schedule's route leaves the session digest out,
    planning.identity_route); the digest's own digits when the job is gone or unreadable."""
    if kind != "fp":
        return route_of(ident)
    for job_key in job_keys:  # where it was, or where it went already
        raw = client.hgetall(job_key)
        if raw:
            try:
                return identity_route(jobfields.spec_of(jobfields.fields(raw)))
            except ValueError:
                break
    return ident[:8]


def _identity_target(value: str, job_id: str, new: Keys, spaces: list[str]) -> str:
    """A job's ``fp``/``idem`` field (a full key name) renamed to its job's new shard."""
    for space in spaces:
        if value.startswith(space + ":"):
            kind, _, ident = value[len(space) + 1 :].partition(":")
            if kind in IDENTITY:
                return f"{new.of_job(job_id).space}:{kind}:{ident}"
    return value


def _job_of(index: str, member: str) -> str:
    """The job an index member belongs to (a run id is ``<job_id>:<ms>``; job ids hold no ':')."""
    if index == "due":
        member = member[2:]  # j:<job_id> or r:<run_id>
    return member.rsplit(":", 1)[0] if ":" in member else member


def _move_indexes(client: redis.Redis, old: Keys, new: Keys, moved: Moved) -> None:
    """The index and imported entries, counters and fencing counters, to the new shards. Every
    new key is written before an old one is emptied, so a move interrupted here loses no entry
    (a due entry lost would be a schedule that never runs again) and running it again ends it."""
    found: dict[str, list[str]] = {}  # old index or imported key -> its members (fields)
    entries: dict[str, list[tuple[str, float]]] = defaultdict(list)
    imported: dict[str, dict[str, str]] = defaultdict(dict)
    stats: Counter[str] = Counter()
    fence, counters, hashes = 0, list[str](), set[str]()  # hashes: the imported keys in `found`
    for shard in old.every_shard():
        for index in INDEXES:
            rows: list[Any] = client.zrange(getattr(shard, index), 0, -1, withscores=True)
            read = [(_text(member), float(score)) for member, score in rows]
            entries[index] += read
            found[getattr(shard, index)] = [member for member, _ in read]
        for key in client.scan_iter(match=f"{shard.space}:imported:*", count=SCAN_COUNT):
            app = _text(key)[len(shard.space) + len(":imported:") :]
            read_fields = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
            imported[app].update(read_fields)
            found[_text(key)] = list(read_fields)
            hashes.add(_text(key))
        stats.update({_text(k): int(v) for k, v in client.hgetall(shard.stats).items()})
        fence = max(fence, int(client.get(shard.beat_fence) or 0))
        counters += [shard.stats, shard.beat_fence]
    written: dict[str, set[str]] = defaultdict(set)  # new key -> the members written to it
    for index, members in entries.items():
        by_shard: dict[int, dict[str, float]] = defaultdict(dict)
        for member, score in members:
            by_shard[new.shard_of(_job_of(index, member))][member] = score
        for number, mapping in by_shard.items():
            key = getattr(new.for_shard(number), index)
            _zadd(client, key, mapping)
            written[key].update(mapping)
            moved.entries += len(mapping)
    for app, by_job in imported.items():
        for job_id, digest in by_job.items():
            key = new.of_job(job_id).imported(app)
            client.hset(key, job_id, digest)
            written[key].add(job_id)
            moved.entries += 1
    kept = set(written)
    if stats:
        counts: dict[Any, Any] = dict(stats)
        client.hset(new.stats, mapping=counts)
        kept.add(new.stats)
    for shard in new.every_shard():
        if fence:
            client.set(shard.beat_fence, fence)
            kept.add(shard.beat_fence)
    # Only now empty the old keys. With more than one shard before and after, shard k's keys
    # have the same names in both: such a key loses only what moved to another shard.
    for key, held in found.items():
        if key not in kept:
            client.delete(key)
            continue
        gone = [m for m in held if m not in written[key]]
        for at in range(0, len(gone), SCAN_COUNT):
            chunk = gone[at : at + SCAN_COUNT]
            if key in hashes:
                client.hdel(key, *chunk)
            else:
                client.zrem(key, *chunk)
    stale = [key for key in counters if key not in kept] + [k.beat_lock for k in old.every_shard()]
    client.delete(*stale)


def _zadd(client: redis.Redis, key: str, mapping: dict[str, float]) -> None:
    items = list(mapping.items())
    for start in range(0, len(items), SCAN_COUNT):
        client.zadd(key, dict(items[start : start + SCAN_COUNT]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
