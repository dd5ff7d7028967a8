"""The ``ductape-jobs`` CLI through its real entry point (a subprocess), against real Redis.

Commands are written as a shell would take them; independent ones run side by side so the file
stays quick on a small machine.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus, health
from ductape_jobs.embedded import EmbeddedRedis, free_port
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

ENTRY = Path(sys.executable).with_name("ductape-jobs")
COMMANDS = ("schedule", "update", "list", "show", "cancel", "cancel-run", "pause", "resume", "trigger",
            "upcoming", "runs", "failed", "redrive", "set-aside", "doctor")  # fmt: skip
Done = subprocess.CompletedProcess[str]


def run_cli(
    redis_url: str, prefix: str, line: str, stdin: str | None = None, module: bool = False, **env: str
) -> Done:
    """Run the installed console script (or ``python -m ductape_jobs.cli``) with a shell-style line."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DUCTAPE_") and k != "REDIS_URL"}
    base.update(REDIS_URL=redis_url, DUCTAPE_KEY_PREFIX=prefix, **env)
    argv = [sys.executable, "-m", "ductape_jobs.cli"] if module else [str(ENTRY)]
    return subprocess.run(
        [*argv, *shlex.split(line)], input=stdin, env=base, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def cli(redis_url: str, prefix: str):
    """The CLI on this test's deployment; by default events need no registered handler."""

    def call(line: str, **kw) -> Done:
        kw.setdefault("DUCTAPE_REQUIRE_HANDLER", "false")
        return run_cli(redis_url, prefix, line, **kw)

    return call


def side_by_side(cli, *lines: str) -> list[Done]:
    """Independent commands at once (reads, or ones that must be refused)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(cli, lines))


def out(done: Done):
    """stdout parsed as JSON, once the command is known to have succeeded."""
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def failed_with(done: Done, code: int, *words: str) -> str:
    """The exit code, and one ``error:`` line on stderr holding ``words``."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line
    return line


def keys_of(r: redis.Redis, prefix: str) -> set[bytes]:
    """Every key of this deployment, broker queues included."""
    return set(r.scan_iter(match=f"{prefix}:*", count=1000))


def test_help_lists_every_command_and_the_exit_codes(cli):
    assert ENTRY.exists(), "pip install -e . installs the ductape-jobs console script"
    done = cli("--help")
    assert done.returncode == 0
    assert all(f"  {command} " in done.stdout for command in COMMANDS)
    codes = ["0  ok", "1  doctor found problems", "2  usage or validation error", "3  not found",
             "4  the job's state", "5  Redis unavailable"]  # fmt: skip
    assert all(code in done.stdout for code in codes)
    module, unknown, bad_option, bare = side_by_side(
        lambda line: cli(line, module=True) if line == "--help" else cli(line),
        "--help", "no-such-command", "list --status bogus", "",
    )  # fmt: skip
    assert module.stdout == done.stdout  # python -m ductape_jobs.cli is the same program
    failed_with(unknown, 2, "No such command")
    failed_with(bad_option, 2, "--status")
    assert bare.returncode == 2 and "Usage:" in bare.stderr


def test_schedule_and_manage_a_recurring_job(cli, ductape: Ductape):
    repeat = '{"cron": "0 9 * * *", "tz": "America/New_York", "limit": 4}'
    handle = out(cli(f"""schedule --env prd --product-tag reports --event daily --retries 2 --app web
                         --timeout 90 --input '{{"team": "ops"}}' --repeat '{repeat}' --json"""))  # fmt: skip
    job_id = handle["job_id"]
    assert handle["recurring"] and handle["status"] == "scheduled" and handle["created"]
    job = ductape.job.get(job_id)
    spec = job.spec
    assert (spec.env, spec.event, spec.retries, spec.timeout_s, spec.input, spec.app) == (
        "prd",
        "daily",
        2,
        90,
        {"team": "ops"},
        "web",
    )
    other = out(
        cli("schedule --env dev --product reports --event once --start-at 2099-01-01T00:00:00Z --json")
    )

    everything, prd, once, nothing, table, shown, show_text, times, two = side_by_side(
        cli, "list --json", "list --env prd --json", "list --event once --status scheduled --json",
        "list --product-tag nope --json", "list --limit 1", f"show {job_id} --json", f"show {job_id}",
        f"upcoming {job_id} -n 3 --json", f"upcoming {job_id} -n 2",
    )  # fmt: skip
    assert [j["job_id"] for j in out(everything)] == [other["job_id"], job_id]  # newest first
    assert [j["job_id"] for j in out(prd)] == [job_id]
    assert [j["job_id"] for j in out(once)] == [other["job_id"]]
    assert out(nothing) == []
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["JOB_ID", "STATUS", "ENV", "PRODUCT", "EVENT"] and len(lines) == 2
    assert out(shown)["spec"]["rule"]["cron"] == "0 9 * * *"
    assert out(shown)["next_run_at"] == job.next_run_at.isoformat()
    assert "cron 0 9 * * * (America/New_York), limit 4" in show_text.stdout
    assert out(times) == [t.isoformat() for t in ductape.job.upcoming(job_id, 3)] and len(out(times)) == 3
    assert len(two.stdout.splitlines()) == 2

    assert out(cli(f"pause {job_id} --json"))["status"] == "paused"
    failed_with(cli(f"pause {job_id}"), 4, "paused")
    assert cli(f"resume {job_id}").stdout.strip() == f"job {job_id}: scheduled"
    run_id = out(cli(f"trigger {job_id} --json"))["run_id"]
    assert run_id.startswith(job_id + ":")
    assert [r["run_id"] for r in out(cli(f"runs {job_id} --json"))] == [run_id]
    assert out(cli(f"cancel-run {run_id} --json"))["status"] == "cancelled"  # queued: never starts
    failed_with(cli(f"cancel-run {run_id}"), 4, "already finished (cancelled)")
    assert out(cli(f"cancel {job_id} --terminate --json"))["status"] == "cancelled"
    assert ductape.job.get(job_id).status == JobStatus.CANCELLED

    refused = side_by_side(cli, f"resume {job_id}", f"trigger {job_id}")
    for done in refused:
        failed_with(done, 4, "cancelled")
    missing = [
        "show nope",
        "runs nope",
        "upcoming nope",
        "cancel nope",
        "cancel-run nope:1",
        "redrive nope:1",
        f"redrive {job_id}:1",
    ]
    for line, done in zip(missing, side_by_side(cli, *missing), strict=True):
        failed_with(done, 3, line.split()[1].split(":")[0])


def test_keys_idempotency_keys_and_update_from_the_cli(cli, ductape: Ductape):
    base = "schedule --env dev --product-tag reports --event digest --start-at 2099-01-01T00:00:00Z"
    first = out(cli(f"""{base} --key tenant:7/digest --repeat '{{"every": 3600000}}' --json"""))
    again = cli(f"""{base} --key tenant:7/digest --repeat '{{"every": 7200000}}' --retries 2""")
    assert again.returncode == 0 and again.stdout.startswith(f"updated {first['job_id']} in place")
    job = ductape.job.get(first["job_id"])
    assert (job.spec.retries, job.spec.rule["every_ms"], job.spec.key) == (2, 7_200_000, "tenant:7/digest")

    done = cli(f"update {first['job_id']} --cron '0 9 * * MON-FRI' --tz Europe/Paris --input '{{\"v\": 2}}'")
    assert done.returncode == 0 and done.stdout.startswith(f"updated {first['job_id']}: scheduled, next run")
    shown = out(cli(f"update {first['job_id']} --retries 3 --json"))
    assert shown["spec"]["rule"]["cron"] == "0 9 * * MON-FRI" and shown["spec"]["input"] == {"v": 2}
    assert (shown["spec"]["retries"], shown["version"]) == (3, 3)

    one = out(cli("schedule --env dev --product-tag pay --event charge --idempotency-key order-9 --json"))
    two = out(cli("schedule --env dev --product-tag pay --event charge --idempotency-key order-9 --json"))
    assert two["job_id"] == one["job_id"] and (one["created"], two["created"]) == (True, False)

    refused = side_by_side(
        cli, f"update {first['job_id']}", f"update {first['job_id']} --every 1000 --cron '* * * * *'",
        f"update {first['job_id']} --every 10", "update nope --retries 1",
        f"update {one['job_id']} --retries 1",
        "schedule --env dev --product-tag p --event e --key 'no spaces'",
    )  # fmt: skip
    assert refused[0].returncode == 2 and "nothing to change" in refused[0].stderr
    assert refused[1].returncode == 2 and "one of --every" in refused[1].stderr
    failed_with(refused[2], 2, "repeat.every")
    failed_with(refused[3], 3, "nope")
    failed_with(refused[4], 4, "already handed to a worker")
    failed_with(refused[5], 2, "key:", "not a valid key")


def test_invalid_schedules_exit_2_and_write_nothing(cli, r, prefix: str, tmp_path: Path):
    out(cli("schedule --env dev --product-tag p --event e --json"))
    before = keys_of(r, prefix)
    good = {"env": "dev", "product_tag": "p", "event": "e", "start_at": "2099-01-01T00:00:00Z"}
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([good, good, {**good, "retries": 99}, good]))
    flags = "schedule --env dev --product-tag p --event e"
    cases = {
        "schedule --env nope --product-tag p --event e": "env:",
        f"{flags} --retries lots": "retries:",
        f"{flags} --timeout 0": "timeout: must be a whole number of seconds 1..86400, got 0",
        f"{flags} --input '{{oops'": "input:",
        f"""{flags} --repeat '{{"cron": "nope"}}'""": "repeat.cron",
        f"""{flags} --repeat '{{"every": 60000, "endDate": "2001-01-01T00:00:00Z"}}'""": "repeat.endDate",
        f"schedule {batch} --chunk-size 1": "requests[2].retries",  # checked whole, before any chunk
        f"schedule {batch} --env dev": "not both",
        "schedule": "JSON file",
    }
    for words, done in zip(cases.values(), side_by_side(cli, *cases), strict=True):
        failed_with(done, 2, words)
    # an event no worker has registered is refused while DUCTAPE_REQUIRE_HANDLER is on (the default)
    unknown = cli("schedule -", stdin=json.dumps(good), DUCTAPE_REQUIRE_HANDLER="true")
    failed_with(unknown, 2, "event:", "no worker has registered a handler for p/e")
    failed_with(cli("schedule -", stdin="[{"), 2, "stdin is not valid JSON")
    assert keys_of(r, prefix) == before


def test_schedule_a_list_in_chunks_with_progress_on_stderr(cli, ductape: Ductape, tmp_path: Path):
    later = 4102444800  # 2100-01-01, seconds
    tick = {"env": "staging", "product": "bulk", "event": "tick"}
    requests = [{**tick, "start_at": later + i, "input": {"i": i}} for i in range(7)]
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(requests))
    done = cli(f"schedule {path} --chunk-size 3 --json")
    handles = out(done)  # stdout holds the JSON alone; the progress went to stderr
    assert "scheduling 7 jobs" in done.stderr
    assert len(handles) == 7 and all(h["created"] and h["status"] == "scheduled" for h in handles)
    assert [ductape.job.get(h["job_id"]).spec.input for h in handles] == [{"i": i} for i in range(7)]
    again = cli("schedule -", stdin=json.dumps(requests[:2]))  # a table for people
    assert again.returncode == 0 and again.stdout.splitlines()[0].startswith("JOB_ID")
    assert "scheduled 2 job(s)" in again.stderr


def test_with_worker_and_beat_runs_failed_redrive_and_a_healthy_doctor(
    cli, procs: Processes, ductape: Ductape, r, prefix: str
):
    procs.worker()
    procs.beat()
    request = {"env": "prd", "product_tag": "tests", "event": "echo", "input": {"hello": "cli"}}
    echo = out(cli("schedule - --json", stdin=json.dumps(request), DUCTAPE_REQUIRE_HANDLER="true"))
    flaky = out(cli("schedule --env dev --product-tag tests --event flaky --json"))
    wait_for(lambda: ductape.job.get(echo["job_id"]).status == JobStatus.COMPLETED, 30, "echo to complete")
    [run] = out(cli(f"runs {echo['job_id']} --json"))
    assert run["status"] == "completed" and run["result"] == {"echo": {"hello": "cli"}}
    assert "completed" in cli(f"runs {echo['job_id']}").stdout

    [dead] = wait_for(lambda: ductape.job.failed(), 30, "the flaky run to be dead-lettered")
    listed, table = side_by_side(cli, "failed --json", "failed")
    assert [(x["run_id"], x["status"]) for x in out(listed)] == [(dead.run_id, "failed")]
    assert "boom" in out(listed)[0]["error"] and dead.run_id in table.stdout
    calls = f"{prefix}:test:calls:flaky"
    assert r.llen(calls) == 1
    assert out(cli(f"redrive {dead.run_id} --json")) == {"run_id": dead.run_id}
    wait_for(lambda: r.llen(calls) == 2, 30, "the redriven run to run again")
    wait_for(lambda: ductape.job.runs(flaky["job_id"])[0].status == RunStatus.FAILED, 30, "it to fail again")
    failed_with(cli(f"redrive {run['run_id']}"), 4, "completed")  # only a dead run can be redriven

    wait_for(lambda: r.exists(f"{prefix}:beat:lock"), 30, "beat to take the leader lock")
    done, people = side_by_side(cli, "doctor --json", "doctor")
    report = json.loads(done.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    for name in ("redis", "beat", "env dev", "env staging", "env prd"):
        assert checks[name]["status"] == "ok", checks[name]
    [worker] = report["workers"]
    assert worker["live"] and sorted(worker["envs"]) == ["dev", "prd", "staging"]
    # In CI the server is our own (AOF on, noeviction); on someone else's, doctor must say so.
    policy = r.config_get("maxmemory-policy")["maxmemory-policy"]
    server_ok = r.config_get("appendonly")["appendonly"] == "yes" and health.eviction_safe(policy)
    assert done.returncode == people.returncode == (0 if server_ok else 1) and report["ok"] is server_ok
    assert ("healthy" in people.stdout) is server_ok and "leader" in people.stdout


def test_doctor_names_the_fix_without_aof_beat_or_workers(prefix: str):
    server = EmbeddedRedis.start(appendonly=False)
    try:
        done, as_json = (run_cli(server.url, prefix, line) for line in ("doctor", "doctor --json"))
        assert done.returncode == 1, done.stderr
        for line in ("WARN  aof", "fix: CONFIG SET appendonly yes", "FAIL  beat",
                     "fix: start a beat: ductape-beat", "FAIL  env prd",
                     "fix: start one: DUCTAPE_WORKER_ENVS=prd celery -A workers worker"):  # fmt: skip
            assert line in done.stdout, done.stdout
        report = json.loads(as_json.stdout)
        assert as_json.returncode == 1 and report["ok"] is False and report["workers"] == []
        problems = {c["check"] for c in report["checks"] if c["status"] in ("warn", "fail")}
        assert problems == {"aof", "beat", "env dev", "env staging", "env prd"}
    finally:
        server.stop()


def test_redis_unavailable_exits_5_and_never_shows_the_password(prefix: str):
    secret = "s3cret-Pa55word"
    url = f"redis://:{secret}@127.0.0.1:{free_port()}/0"  # nothing listens there
    attempts = [
        (url, "list"),
        ("redis://127.0.0.1:1/0", f"--redis-url {url} show x"),
        (url, "schedule --env dev --product-tag p --event e --json"),
    ]
    for env_url, line in attempts:
        done = run_cli(env_url, prefix, line)  # the subprocess timeout bounds how long it may take
        failed_with(done, 5, "Redis is unreachable")
        assert secret not in done.stderr + done.stdout and done.stdout == ""
    doctor = run_cli(url, prefix, "doctor --timeout 1")
    assert doctor.returncode == 5 and secret not in doctor.stdout + doctor.stderr
    assert doctor.stderr.strip() == "error: Redis is unreachable, so doctor could not run the other checks"
    assert "redis://:***@127.0.0.1" in doctor.stdout and "fix: start Redis" in doctor.stdout
