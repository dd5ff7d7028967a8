"""``doctor``: is this deployment able to run jobs, and if not, what to fix.

Checks, each bounded in time: Redis reachable, an eviction policy that cannot drop schedules,
memory headroom, records that left (by retention, the dead-letter cap, or vanished), AOF on, a
live beat leader (its lock and TTL), a live worker for every env (from the workers hash and how
long ago each was seen), and no job set aside by beat.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import click
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ductape_jobs import health, ops
from ductape_jobs.cli.context import EXIT_PROBLEMS, EXIT_UNAVAILABLE, Context, json_option, pass_context
from ductape_jobs.cli.output import echo_json, note, printable, redact, say, span
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.errors import BackendUnavailableError
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store
from ductape_jobs.urls import mask_url

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
PROBLEMS = (WARN, FAIL)
# Workers refresh seen_ms on their Celery heartbeat (workers/app.py, every ~10 s); an entry much
# older than that is a worker that stopped or hangs.
STALE_AFTER_MS = 60_000
BEAT_CMD = "ductape-beat"
WORKER_CMD = "celery -A workers worker"


@dataclass(frozen=True)
class Finding:
    """One check's verdict, and for a problem, what to do about it."""

    check: str
    status: str
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class WorkerSeen:
    """One entry of the workers hash."""

    name: str
    envs: list[str]
    events: int
    seen_ms: int
    age_ms: int

    @property
    def live(self) -> bool:
        """Seen recently enough to count as serving."""
        return self.age_ms <= STALE_AFTER_MS


def probe(settings: Settings, timeout_s: float) -> tuple[list[Finding], list[WorkerSeen], bool]:
    """Run every check; returns the findings, the workers seen, and whether Redis answered."""
    try:
        client = connect(
            settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        raise click.UsageError(f"--redis-url/REDIS_URL is not a usable Redis URL: {exc}") from None
    keys = Keys(settings.key_prefix, settings.shards)
    try:
        reached = check_redis(client, settings, timeout_s)
        if reached.status != OK:
            return [reached], [], False
        store = Store(client, keys)
        workers = workers_seen(store, now_ms())
        findings = [
            reached,
            check_eviction(store),
            check_memory(store),
            check_records(store),
            check_aof(client),
            *check_beat(client, keys, settings, now_ms()),
            *check_workers(client, keys, settings, workers),
            check_set_aside(client, keys),
        ]
        return findings, workers, True
    except (redis.ConnectionError, redis.TimeoutError, BackendUnavailableError) as exc:
        lost = Finding(
            "redis",
            FAIL,
            f"Redis stopped answering during the checks ({type(exc).__name__})",
            "check the server's health and the network, then run doctor again",
        )
        return [lost], [], False
    finally:
        client.close()


def check_redis(client: redis.Redis, settings: Settings, timeout_s: float) -> Finding:
    """Reachable within ``timeout_s``, and which server it is."""
    started = time.monotonic()
    try:
        client.ping()
        info = client.info("server")
    except redis.RedisError as exc:  # refused, timed out, wrong password, or not a Redis at all
        detail = f"cannot reach {mask_url(settings.url)} within {timeout_s:g} s: {type(exc).__name__}: {exc}"
        fix = "start Redis, or point --redis-url / REDIS_URL at it (host, port, password; rediss:// for TLS)"
        return Finding("redis", FAIL, redact(detail, settings.secrets()), fix)
    elapsed = (time.monotonic() - started) * 1000
    server = info.get("server_name") or "redis"
    version = info.get("valkey_version") or info.get("redis_version") or "?"
    where = mask_url(settings.url)
    target = settings.sentinel_target()
    if target is not None:  # which server the sentinels name the master now
        host, port = client.connection_pool.get_master_address()  # type: ignore[attr-defined]
        where += f" (Sentinel master {target.master!r} at {host}:{port})"
    return Finding("redis", OK, f"{where} answers in {span(elapsed)} ({server} {version})")


def check_eviction(store: Store) -> Finding:
    """An eviction policy that never drops job records or schedules (``health.eviction_safe``)."""
    return _finding("eviction", health.eviction_verdict(store.run(ops.beat.eviction_policy())))


def check_memory(store: Store) -> Finding:
    """Headroom: used_memory well below maxmemory (and a maxmemory set at all)."""
    return _finding("memory", health.memory_verdict(store.run(ops.beat.memory())))


def check_records(store: Store) -> Finding:
    """What left Redis: by retention and the dead-letter cap, and what vanished before its time."""
    return _finding("records", health.records_verdict(store.run(ops.beat.counters(store.keys))))


def _finding(check: str, verdict: health.Verdict) -> Finding:
    return Finding(check, verdict.status, verdict.detail, verdict.fix)


def check_aof(client: redis.Redis) -> Finding:
    """AOF on, so a restart keeps what was accepted."""
    try:
        got: dict[Any, Any] = dict(client.config_get("appendonly"))  # str or bytes keys, by client setup
    except redis.ResponseError:
        return Finding("aof", INFO, "CONFIG GET is not allowed here; make sure persistence (AOF) is on")
    value = _text(got.get("appendonly") or got.get(b"appendonly") or "")
    if value == "yes":
        return Finding("aof", OK, "appendonly is yes")
    return Finding(
        "aof",
        WARN,
        f"appendonly is {value or 'unset'}: a Redis restart loses jobs accepted since the last snapshot",
        "CONFIG SET appendonly yes, and set appendonly yes in redis.conf",
    )


def check_beat(client: redis.Redis, keys: Keys, settings: Settings, now: int) -> list[Finding]:
    """Each shard's leader holds its lock (with a TTL), and due entries do not pile up behind it;
    with several shards, which beats are alive (the registry)."""
    if keys.shards == 1:
        return check_shard(client, keys, settings, now, "beat")
    live = Store(client, keys).run(ops.beat.live_beats(keys, now))
    names = ", ".join(live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
    found = [
        Finding("beats", OK, f"{len(live)} live beat(s) share {keys.shards} shards: {names}")
        if live
        else Finding(
            "beats",
            FAIL,
            f"no live beat in the registry ({keys.beats}): nobody releases the {keys.shards} shards",
            f"start a beat: {BEAT_CMD} (same REDIS_URL, DUCTAPE_KEY_PREFIX and DUCTAPE_SHARDS)",
        )
    ]
    for shard in keys.every_shard():
        found += check_shard(client, shard, settings, now, f"beat shard {shard.shard}")
    return found


def check_shard(client: redis.Redis, keys: Keys, settings: Settings, now: int, name: str) -> list[Finding]:
    """A leader holds the shard's lock (with a TTL), and its due entries do not pile up."""
    ttl_ms = int(client.pttl(keys.beat_lock))
    waiting = int(client.zcard(keys.due))
    if ttl_ms == -2:
        return [
            Finding(
                name,
                FAIL,
                f"no beat leader ({keys.beat_lock} is absent): {waiting} scheduled job(s) or retries wait "
                "with nobody to release them",
                f"start a beat: {BEAT_CMD} (same REDIS_URL and DUCTAPE_KEY_PREFIX); a second is a standby",
            )
        ]
    if ttl_ms == -1:
        return [
            Finding(
                name,
                FAIL,
                f"{keys.beat_lock} has no expiry, so a dead leader would hold it forever",
                f"delete it (redis-cli DEL {keys.beat_lock}); the live beat takes the lock again with a TTL",
            )
        ]
    holder = _text(client.get(keys.beat_lock) or b"?")
    found = [
        Finding(
            name,
            OK,
            f"leader {holder} holds the lock (expires in {span(ttl_ms)} unless renewed); "
            f"{waiting} entries in the due index",
        )
    ]
    oldest = Store(client, keys).run(ops.beat.next_due_ms(keys))
    late_ms = 0 if oldest is None else now - oldest
    if late_ms > max(3 * settings.beat_lock_ttl_ms, 30_000):
        found.append(
            Finding(
                f"{name} backlog",
                WARN,
                f"the oldest due entry is {span(late_ms)} overdue although a leader holds the lock",
                "read the beat leader's log: a tick failing, or the broker unreachable from beat",
            )
        )
    return found


def check_set_aside(client: redis.Redis, keys: Keys) -> Finding:
    """Jobs beat could not read or decide: each failed with its reason, for a person to look at."""
    count = sum(int(client.zcard(k.set_aside)) for k in keys.every_shard())
    if not count:
        return Finding("set aside", OK, "beat could read and decide every due job")
    newest = [s.job_id for s in Store(client, keys).run(ops.set_aside(keys, 3))]
    reasons = [_text(client.hget(keys.job(job_id), "last_error") or b"gone") for job_id in newest]
    shown = "; ".join(f"{job_id}: {why}" for job_id, why in zip(newest, reasons, strict=True))
    return Finding(
        "set aside",
        WARN,
        f"beat set {count} job(s) aside (could not read or decide them), newest: {shown}",
        "see 'ductape-jobs set-aside'; fix the cause (e.g. the beat host's tzdata), then schedule them again",
    )


def workers_seen(store: Store, now: int) -> list[WorkerSeen]:
    """The registered workers, oldest-seen last (an entry that can't be read says nothing about
    who serves what, so it is left out)."""
    entries = store.run(ops.workers(store.keys)).values()
    seen = [WorkerSeen(w.name, w.envs, w.events, w.seen_ms, max(now - w.seen_ms, 0)) for w in entries if w]
    return sorted(seen, key=lambda w: (w.age_ms, w.name))


def check_workers(
    client: redis.Redis, keys: Keys, settings: Settings, workers: list[WorkerSeen]
) -> list[Finding]:
    """Each worker's envs and last sighting; every configured env served by a live worker."""
    found = []
    for w in workers:
        detail = f"serves {','.join(w.envs) or '-'} ({w.events} event(s)), seen {span(w.age_ms)} ago"
        if w.live:
            found.append(Finding(f"worker {w.name}", OK, detail))
        else:
            found.append(
                Finding(
                    f"worker {w.name}",
                    INFO,
                    detail + ": stopped, or hung",
                    f"if it is gone for good: redis-cli HDEL {keys.workers} {w.name}",
                )
            )
    for env in settings.envs:
        queue = settings.queue_for(env)
        depth = int(client.llen(keys.broker_prefix + queue))
        serving = [w.name for w in workers if w.live and env in w.envs]
        if serving:
            found.append(
                Finding(f"env {env}", OK, f"served by {', '.join(serving)}; {depth} message(s) waiting")
            )
            continue
        stale = [w.name for w in workers if env in w.envs]
        why = f" (only stale: {', '.join(stale)})" if stale else ""
        found.append(
            Finding(
                f"env {env}",
                FAIL,
                f"no live worker serves env {env}{why}; {depth} message(s) wait in queue {queue}",
                f"start one: DUCTAPE_WORKER_ENVS={env} {WORKER_CMD} (or leave DUCTAPE_WORKER_ENVS unset for "
                "every env), with the same REDIS_URL and DUCTAPE_KEY_PREFIX",
            )
        )
    return found


@click.command()
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for Redis.",
)
@json_option
@pass_context
def doctor(obj: Context, timeout: float, as_json: bool) -> None:
    """Check Redis, persistence, the beat leader and the workers; say what to fix.

    Exits 0 when healthy, 1 when it found problems, 5 when Redis cannot be reached.
    """
    settings = obj.settings
    findings, workers, reached = probe(settings, timeout)
    problems = [f for f in findings if f.status in PROBLEMS]
    if as_json:
        echo_json(
            {
                "ok": not problems,
                "redis_url": mask_url(settings.url),
                "key_prefix": settings.key_prefix,
                "problems": len(problems),
                "checks": [asdict(f) for f in findings],
                "workers": [{**asdict(w), "live": w.live} for w in workers],
            }
        )
    else:
        say(render(findings, settings))
    if not reached:
        note("error: Redis is unreachable, so doctor could not run the other checks")
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)
    if problems:
        raise click.exceptions.Exit(EXIT_PROBLEMS)


def render(findings: list[Finding], settings: Settings) -> str:
    """The report for people: one line per check, a fix under each problem."""
    width = max(len(printable(f.check)) for f in findings)
    lines = [f"doctor: {printable(mask_url(settings.url))}, key prefix {settings.key_prefix!r}"]
    for f in findings:
        mark = f.status.upper() if f.status in PROBLEMS else f.status
        # Worker names, the leader's token and Redis's errors come from outside: one line each.
        lines.append(f"{mark:<5} {printable(f.check).ljust(width)}  {printable(f.detail)}")
        if f.fix and f.status != OK:
            lines.append(f"{'':<5} {'':<{width}}  fix: {printable(f.fix)}")
    problems = [printable(f.check) for f in findings if f.status in PROBLEMS]
    lines.append(f"{len(problems)} problem(s): {', '.join(problems)}" if problems else "healthy")
    return "\n".join(lines)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def register(group: click.Group) -> None:
    """Add the command to the CLI."""
    group.add_command(doctor)
