"""Figure 5: real beat processes releasing a burst of due schedules, ours beside RedBeat: a curve
by burst size.

For each burst size (1,000 and 10,000; 100,000 without ``--quick``), each side stores that many
hourly schedules, all due at one instant a few seconds ahead, on the same server: ours through the
CREATE_JOBS script (what ``schedule()`` writes), RedBeat's as ``entry.save()`` writes them. The
stored count is asserted (ours: the due and jobs indexes, the job hashes and fingerprint keys;
RedBeat: its schedule ZSET and entry hashes), and the bytes per stored schedule are ``MEMORY
USAGE`` (every element sampled) of every key the side wrote, divided by the count: each record key
whole, and each index ZSET whole, so its members (and the ZSET's own overhead, shared by all) are
in it. The keyspace's own table (a few bytes a key, not in any key's ``MEMORY USAGE``) is left out
on both sides; ours has two keys a schedule, RedBeat one. Then a real beat process starts: ours
``ductape-beat`` (as the README runs it; once also ``celery -A beat beat``, an info row), RedBeat
``celery -A bench.plain_app beat -S redbeat.RedBeatScheduler``, and holds its lock before the due instant
(when its start-up outlasts the lead on a loaded machine, the clock starts when it holds the lock,
and ``ready_before_due_ms`` says by how much). A consumer in this process pops the broker list as
messages land (it keeps up with any rate here, so it stands for workers that keep up: what is
timed is the hand-over to the broker, not a handler's start) and the figure reads, from the due
instant, when half the burst and its last run had landed, and the beat's peak resident memory
(VmHWM) then. RedBeat's 100,000 is stopped ``CAP_S`` after the due instant (it sends a few hundred
a second after loading every due entry one round trip each): its release time is then projected
from the rate it sent at, and the row says so. The sides alternate who goes first; every key is
dropped between runs.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.counter import counter_key
from bench.env import Bench, status_mb, wait_for
from bench.figures.beat import EVERY_MS
from bench.figures.lateness import Arrivals
from bench.figures.producer import REQUEST
from bench.load import load_ours, load_redbeat, template
from bench.plain_app import QUEUE, TASK, make_app, queue_key, redbeat_prefix
from bench.report import Point, Row, row
from ductape_jobs import Ductape
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.settings import Settings
from ductape_jobs.store import Store

# RedBeat releases a few hundred runs a second on a loaded 2-core machine: 10,000 due take it
# about a minute a run and 100,000 minutes, so the larger bursts run once (the spread of the
# 1,000 burst's repetitions, and of the earlier runs', is a few percent).
REPS_CAP = {10_000: 1, 100_000: 1}
LEAD_S = 6.0  # the due instant is this long after the load (~1 s per 4,000): the beat starts meanwhile
CELERY_CLI_UP_TO = 10_000  # bursts also run once under `celery -A beat beat` (an info row)
CAP_S = 60.0  # a side still releasing this long after the due instant is stopped and projected


def _bytes_under(bench: Bench, prefix: str, kind: Callable[[str], str]) -> dict[str, list[int]]:
    """Redis's MEMORY USAGE of every key under ``prefix`` (all elements sampled), as [keys, bytes]
    per kind of key: what one side stored, whatever else the server holds or frees meanwhile (a
    used_memory delta went negative on a shared server)."""
    client = bench.client()
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1_000)]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            sizes = pipe.execute()
    finally:
        client.close()
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, size in zip(keys, sizes, strict=True):
        kinds[kind(key)][0] += 1
        kinds[kind(key)][1] += int(size or 0)
    return dict(kinds)


def _used_memory(bench: Bench) -> int | None:
    """Redis used_memory, only on the bench's private server (None on a REDIS_URL one, where
    other tenants move it)."""
    if bench.embedded is None:
        return None
    client = bench.client()
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _used_since(bench: Bench, before: int | None, stored: int) -> dict[str, float]:
    """used_memory per stored schedule since ``before``: it counts the keyspace's own table too
    (private server only; {} otherwise)."""
    after = _used_memory(bench)
    return {} if before is None or after is None else {"bytes_used_memory": (after - before) / stored}


def _per_schedule(kinds: dict[str, list[int]], expected: dict[str, int], stored: int, side: str) -> float:
    """Bytes per stored schedule; fails unless each kind of key holds as many keys as expected."""
    counted = {kind: kinds.get(kind, [0, 0])[0] for kind in expected}
    if counted != expected:
        raise RuntimeError(f"{side}: keys by kind {counted}, expected {expected} ({stored} schedules)")
    return sum(size for _, size in kinds.values()) / stored


def _of_burst(landed_ms: list[int], q: float, burst: int) -> float:
    """Seconds until the fraction ``q`` of the whole burst had landed (NaN if it had not by the cap)."""
    at = math.ceil(q * burst) - 1
    return landed_ms[at] / 1000 if at < len(landed_ms) else math.nan


def _due_ms(burst: int) -> int:
    """The burst's due instant: after the load and a beat's start-up, on a loaded 2-core machine
    (a beat that led only after it would be timed from its start-up: ``ready_before_due_ms``)."""
    return now_ms() + int((LEAD_S + burst / 4_000) * 1000)


def _release(bench: Bench, proc: Any, lock_key: str, queue: str, burst: int, due_ms: int) -> dict[str, Any]:
    """Wait for the beat to lead, then time, from ``due_ms``, the burst landing in the broker."""
    db = bench.client()
    consumer = Arrivals(bench.url, queue)
    consumer.start()

    def leading() -> bool:
        bench.check_alive(proc)
        return bool(db.exists(lock_key))

    wait_for(leading, 60, f"beat to hold {lock_key}", poll_s=0.01)
    ready_ms = due_ms - now_ms()  # > 0: the beat led before the burst fell due
    if ready_ms < 0:
        # its start-up outlasted the lead (a loaded machine): timed from when it held the lock
        print(f" (a beat led {-ready_ms} ms after the due instant: timed from then)", end="", flush=True)
        due_ms -= ready_ms
    counted = 0

    def released() -> bool:
        nonlocal counted
        bench.check_alive(proc)
        counted = sum(len(batch) for _, batch in consumer.landed)
        if counted >= burst:
            return True
        # a slow side is stopped at the cap once it has been sending for a while (to project it)
        first = consumer.landed[0][0] if consumer.landed else None
        return now_ms() - due_ms > CAP_S * 1000 and first is not None and now_ms() - first > 10_000

    wait_for(released, 900, f"{burst} runs in {queue}", poll_s=0.01)
    peak = status_mb(proc.pid, "VmHWM")
    bench.stop(proc)
    consumer.stop.set()
    consumer.join()
    db.close()
    landed = sorted(at - due_ms for at, batch in consumer.landed for _ in batch)
    if len(landed) >= burst:
        release_ms, projected = float(landed[burst - 1]), False
    else:  # from the first landing, at the rate it sent at since
        first, last = landed[0], landed[-1]
        release_ms, projected = first + (last - first) * burst / max(len(landed) - 1, 1), True
    return {
        "release_s": release_ms / 1000,
        "p50_s": _of_burst(landed, 0.50, burst),
        "p99_s": _of_burst(landed, 0.99, burst),
        "first_s": landed[0] / 1000 if landed else math.nan,
        "landed": len(landed),
        "projected": projected,
        "ready_before_due_ms": ready_ms,
        "peak_rss_mb": peak,
    }


def run_ours(bench: Bench, burst: int, tag: str = "f5", via_celery: bool = False) -> dict[str, Any]:
    """Store ``burst`` due hourly schedules, run our real beat until all are in the broker: as the
    README runs it (``ductape-beat``), or ``via_celery`` (``celery -A beat beat``: the same beat
    under Celery's command line, which loads its REPL and plugins, Flower's among them)."""
    prefix = bench.prefix(tag)
    settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
    keys = Keys(prefix)
    store = Store(connect(settings), keys)
    due_ms = _due_ms(burst)
    before = _used_memory(bench)
    load_ours(store, template(settings, EVERY_MS), range(burst), lambda n: due_ms)
    used = _used_since(bench, before, burst)
    stored = int(store.redis.zcard(keys.due))
    listed = int(store.redis.zcard(keys.jobs))
    store.redis.close()
    if stored != burst or listed != burst:
        raise RuntimeError(f"ours: {stored} due and {listed} listed schedules, expected {burst}")
    # job hash and fingerprint key per schedule, and the two index ZSETs its members are in
    kinds = _bytes_under(bench, f"{prefix}:", lambda key: key[len(prefix) + 1 :].split(":")[0])
    expected = {"job": burst, "fp": burst, "due": 1, "jobs": 1}
    per_schedule = _per_schedule(kinds, expected, burst, "ours")
    env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers"}
    if via_celery:
        proc = bench.spawn("beat", ["beat", "--loglevel", "WARNING"], env, f"{tag}-ours-celery-beat")
    else:
        proc = bench.beat(env, f"{tag}-ours-beat")
    got = _release(bench, proc, keys.beat_lock, keys.broker_prefix + settings.queue_for("dev"), burst, due_ms)
    bench.drop(prefix)
    breakdown = {f"bytes_{kind}": size / burst for kind, (_, size) in kinds.items()} | used
    return {**got, "bytes_per_schedule": per_schedule, "stored": stored, **breakdown}


def run_redbeat(bench: Bench, burst: int, tag: str = "f5p") -> dict[str, Any]:
    """Store ``burst`` due hourly RedBeat entries, run a real RedBeat beat until all are sent."""
    prefix = bench.prefix(tag)
    app = make_app(bench.url, prefix)
    every = timedelta(milliseconds=EVERY_MS)
    due_ms = _due_ms(burst)
    last = datetime.fromtimestamp(due_ms / 1000, UTC) - every
    before = _used_memory(bench)
    load_redbeat(app, (f"s{n}" for n in range(burst)), lambda name: last, every)
    used = _used_since(bench, before, burst)
    db = bench.client()
    stored = int(db.zcard(app.redbeat_conf.schedule_key))
    db.close()
    if stored != burst:
        raise RuntimeError(f"RedBeat: {stored} schedules stored, expected {burst}")
    schedule_key = str(app.redbeat_conf.schedule_key)
    kinds = _bytes_under(
        bench, redbeat_prefix(prefix), lambda key: "zset" if key == schedule_key else "entry"
    )
    per_schedule = _per_schedule(kinds, {"entry": burst, "zset": 1}, burst, "RedBeat")
    proc = bench.spawn(
        "bench.plain_app",
        ["beat", "--loglevel", "WARNING", "-S", "redbeat.RedBeatScheduler"],
        {"BENCH_PREFIX": prefix},
        f"{tag}-redbeat",
    )
    got = _release(bench, proc, f"{redbeat_prefix(prefix)}:lock", queue_key(prefix), burst, due_ms)
    app.close()
    bench.drop(prefix)
    breakdown = {f"bytes_{kind}": size / burst for kind, (_, size) in kinds.items()} | used
    return {**got, "bytes_per_schedule": per_schedule, "stored": stored, **breakdown}


def beat_burst(bench: Bench, reps: int, bursts: tuple[int, ...] = (1_000, 10_000, 100_000)) -> list[Row]:
    """Per burst size: peak RSS and release time (from the due instant) of the real beat
    processes, and Redis bytes per stored schedule, ours vs RedBeat."""
    results: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for burst in bursts:
        sides = [("ours", run_ours), ("theirs", run_redbeat)]
        for rep in range(min(reps, REPS_CAP.get(burst, reps))):
            for side, run in sides if rep % 2 == 0 else reversed(sides):
                results[burst][side].append(run(bench, burst))
        if burst <= CELERY_CLI_UP_TO:  # once: an info row (the CLI's cost does not grow with the burst)
            results[burst]["ours_celery"].append(run_ours(bench, burst, via_celery=True))
    command = ".venv/bin/python -m bench --only 5" + (
        " (--quick: 1,000 and 10,000 due)" if 100_000 not in bursts else ""
    )
    rows = []
    for burst in bursts:
        got = results[burst]

        def of(side: str, what: str, got: Any = got) -> list[float]:
            return [r[what] for r in got[side]]

        details = {side: got[side] for side in ("ours", "theirs")}
        projected = any(r["projected"] for side in ("ours", "theirs") for r in got[side])
        # Once, up to CELERY_CLI_UP_TO: the same beat under Celery's command line.
        under_celery = (
            [
                row(
                    f"5 (info) beat peak RSS under `celery -A beat beat` (ours once), {burst:,} due at once",
                    "MB",
                    of("ours_celery", "peak_rss_mb"),
                    of("theirs", "peak_rss_mb"),
                    "-",
                    None,
                    theirs_label="RedBeat",
                    command=command,
                )
            ]
            if got["ours_celery"]
            else []
        )
        chart, x_label = "5 beat release by due burst", "schedules due at once"
        rows += [
            row(
                f"5 beat process peak RSS, {burst:,} due at once",
                "MB",
                of("ours", "peak_rss_mb"),
                of("theirs", "peak_rss_mb"),
                "<= 1x (at or below RedBeat)",
                lambda o, t, r: r <= 1,
                theirs_label="RedBeat",
                details=details,
                command=command,
                point=Point(chart, "beat peak RSS, MB", burst, x_label),
            ),
            *under_celery,
            row(
                f"5 (info) release time, {burst:,} due at once, due instant to the last in the broker"
                + (f" (RedBeat projected from its rate over its first ~{CAP_S:.0f} s)" if projected else ""),
                "s",
                of("ours", "release_s"),
                of("theirs", "release_s"),
                "-",
                None,
                theirs_label="RedBeat",
                details={
                    "projected": [
                        side for side in ("ours", "theirs") if any(r["projected"] for r in got[side])
                    ]
                },
                command=command,
                point=Point(chart, "release time, from due to the last run landed, s", burst, x_label),
            ),
            row(
                f"5 (info) half the burst in the broker, {burst:,} due at once, from the due instant",
                "s",
                of("ours", "p50_s"),
                of("theirs", "p50_s"),
                "-",
                None,
                theirs_label="RedBeat",
                command=command,
                point=Point(chart, "half the burst landed (p50), s", burst, x_label),
            ),
            row(
                f"5 Redis bytes per stored schedule ({burst:,} stored, count checked)",
                "bytes",
                of("ours", "bytes_per_schedule"),
                of("theirs", "bytes_per_schedule"),
                "<= 1x (at or below RedBeat)",
                lambda o, t, r: r <= 1,
                theirs_label="RedBeat",
                details={
                    side: [{k: v for k, v in r.items() if k.startswith("bytes")} for r in got[side]]
                    for side in ("ours", "theirs")
                },
                command=command,
            ),
        ]
    return rows


# -- an idle worker: main process and pool children -------------------------------------------

IDLE_SETTLE_S = 3.0  # after the pool children exist: start-up allocations done, nothing run yet
AFTER_RUNS = 2_000  # then this many no-op runs, and the same worker is read again


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes and theirs (the prefork pool), from /proc."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(stat.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except OSError:  # gone meanwhile
                continue
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def smaps_kb(pid: int) -> dict[str, int]:
    """Resident (RSS), proportional (PSS: each shared page divided among the processes sharing it)
    and unique (USS: private pages only) memory of a process, kB, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                fields[name] = int(value.split()[0])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": uss}


def tree_memory_mb(pid: int, processes: int) -> dict[str, Any]:
    """RSS, PSS and USS summed over ``pid`` and its descendants, MB, once there are ``processes``."""

    def pool() -> list[int]:
        found = descendants(pid)
        return found if len(found) + 1 >= processes else []

    pids = [pid, *wait_for(pool, 60, f"{processes - 1} pool processes")]
    each = [smaps_kb(p) for p in pids]
    got: dict[str, Any] = {f"{k}_mb": sum(e[k] for e in each) / 1024 for k in ("rss", "pss", "uss")}
    got["per_process_pss_mb"] = [round(e["pss"] / 1024, 1) for e in each]
    return got


def _run_noops(bench: Bench, side: str, prefix: str, n: int) -> None:
    """Have the side's worker run ``n`` no-op jobs (one INCR each) and wait until all have."""
    db = bench.client()
    if side == "ours":
        settings = Settings(redis_url=bench.url, key_prefix=prefix, require_handler=False)
        with Ductape(settings=settings) as ductape:
            ductape.job.schedule_many([{**REQUEST, "input": {"n": i}} for i in range(n)])
    else:
        app = make_app(bench.url, prefix, delivery="ours")
        task = app.tasks[TASK]
        with app.producer_or_acquire() as producer, producer.batch():
            for _ in range(n):
                task.apply_async(producer=producer)
        app.close()
    wait_for(lambda: int(db.get(counter_key(prefix)) or 0) >= n, 300, f"{n} no-op runs under {prefix}")
    db.close()


def run_idle_worker(
    bench: Bench, side: str, concurrency: int, tag: str = "f12", then_runs: int = 0
) -> dict[str, Any]:
    """Start a real worker (ours, or plain Celery with our delivery settings), wait until it is
    ready and its pool children are up, let it sit idle, and read its memory; with ``then_runs``,
    have it run that many no-op jobs and read it again (``after``)."""
    pool = ["worker", "-P", "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle"]
    pool += ["--loglevel", "WARNING"]
    prefix = bench.prefix(f"{tag}{side[0]}")
    db = bench.client()
    if side == "ours":
        env = {"DUCTAPE_KEY_PREFIX": prefix, "DUCTAPE_HANDLERS": "bench.handlers"}
        proc = bench.spawn("workers", pool, env, f"{tag}-ours-worker")
        workers_key = Keys(prefix).workers

        def ready() -> bool:
            bench.check_alive(proc)
            return bool(db.hlen(workers_key))
    else:
        env = {"BENCH_PREFIX": prefix, "BENCH_DELIVERY": "ours"}
        proc = bench.spawn("bench.plain_app", [*pool, "-Q", QUEUE], env, f"{tag}-plain-worker")

        def ready() -> bool:
            bench.check_alive(proc)
            return bool(db.exists(f"{prefix}:bench:plain-ready"))

    try:
        wait_for(ready, 120, f"the {side} worker to be ready", poll_s=0.05)
        tree_memory_mb(proc.pid, concurrency + 1)  # the pool is up
        time.sleep(IDLE_SETTLE_S)
        bench.check_alive(proc)
        got = tree_memory_mb(proc.pid, concurrency + 1)
        if then_runs:
            _run_noops(bench, side, prefix, then_runs)
            time.sleep(IDLE_SETTLE_S)
            bench.check_alive(proc)
            got["after"] = tree_memory_mb(proc.pid, concurrency + 1)
        return got
    finally:
        bench.stop(proc)
        db.close()
        bench.drop(prefix)


def idle_worker(bench: Bench, reps: int, concurrency: int = 2, then_runs: int = AFTER_RUNS) -> list[Row]:
    """An idle worker's memory, main process and pool children summed, ours vs plain Celery with
    the same delivery settings and pool: PSS (the headline), RSS and USS."""
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sides = ["ours", "theirs"]
    for rep in range(reps):
        for side in sides if rep % 2 == 0 else reversed(sides):
            results[side].append(run_idle_worker(bench, side, concurrency, then_runs=then_runs))

    def of(side: str, what: str) -> list[float]:
        return [r[what] for r in results[side]]

    label = "Celery, same delivery settings"
    pool = f"prefork -c {concurrency}"
    details = {
        "pool": pool,
        "measured": "/proc/<pid>/smaps_rollup of the main process and its pool children, summed, "
        f"{IDLE_SETTLE_S:g} s after the worker is ready and its pool is up, nothing run; then "
        f"again {IDLE_SETTLE_S:g} s after it has run {then_runs:,} no-op jobs (after)",
        **{side: results[side] for side in sides},
    }
    command = ".venv/bin/python -m bench --only 12"
    return [
        row(
            f"12 idle worker memory, PSS of main + pool ({pool})",
            "MB",
            of("ours", "pss_mb"),
            of("theirs", "pss_mb"),
            "<= 1x (at or below plain Celery)",
            lambda o, t, r: r <= 1,
            theirs_label=label,
            details=details,
            command=command,
        ),
        row(
            f"12 (info) idle worker memory, RSS of main + pool ({pool}; shared pages counted in each)",
            "MB",
            of("ours", "rss_mb"),
            of("theirs", "rss_mb"),
            "-",
            None,
            theirs_label=label,
            command=command,
        ),
        row(
            f"12 (info) the same worker after {then_runs:,} no-op runs, PSS of main + pool ({pool})",
            "MB",
            [r["after"]["pss_mb"] for r in results["ours"] if "after" in r],
            [r["after"]["pss_mb"] for r in results["theirs"] if "after" in r],
            "-",
            None,
            theirs_label=label,
            command=command,
        ),
        row(
            f"12 (info) idle worker memory, USS of main + pool ({pool}; private pages only)",
            "MB",
            of("ours", "uss_mb"),
            of("theirs", "uss_mb"),
            "-",
            None,
            theirs_label=label,
            command=command,
        ),
    ]
