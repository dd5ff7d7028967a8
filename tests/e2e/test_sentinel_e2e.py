"""Behind Sentinel, as the README's "Redis with Sentinel" configures it: a real worker, beat,
Flower and the CLI reach the master through three sentinels, carry on after a failover without a
restart, and never show either password."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ductape_jobs.embedded import EmbeddedRedis, free_port
from tests.e2e.test_cli import run_cli
from tests.sentinels import MASTER, PASSWORD, SENTINEL_PASSWORD, SentinelGroup
from tests.support import Processes, http_get, wait_for

pytestmark = pytest.mark.e2e

FLOWER = ("user", "flower-pw")
SCHEDULE = 'schedule --env dev --product-tag tests --event echo --input \'{"via": "cli"}\''


def readme_block() -> tuple[set[str], list[str]]:
    """The README's "Redis with Sentinel" commands: the variables exported and the commands."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("## Redis with Sentinel", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    exported = {line.split()[1].split("=", 1)[0] for line in lines if line.startswith("export ")}
    return exported, [line for line in lines if line and not line.startswith("export ")]


def test_worker_beat_flower_and_cli_follow_a_failover(
    group: SentinelGroup, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's block, with loopback addresses: the same variables, the same commands.
    exported, commands = readme_block()
    settings = {**group.env(), "DUCTAPE_WAIT_REPLICAS": "1"}
    assert exported == set(settings)
    assert commands == [
        "celery -A workers worker --loglevel INFO",
        "ductape-beat --loglevel INFO",
        "ductape-jobs doctor",
    ]
    recorder = EmbeddedRedis.start(appendonly=False)  # where the handlers record (TEST_RECORD_URL)
    env = {**settings, "TEST_RECORD_URL": recorder.url}
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)
    procs = Processes(group.url, prefix, tmp_path, overrides=env)
    try:
        worker = procs.worker(wait=False, DUCTAPE_TASK_EVENTS="true")
        beat = procs.beat(DUCTAPE_BEAT_LOCK_TTL_MS="1500")
        port = free_port()
        flower = procs.flower(port, ":".join(FLOWER))

        def cli(line: str) -> tuple[int, str]:
            done = run_cli(group.url, prefix, line, **{k: v for k, v in env.items() if k != "REDIS_URL"})
            return done.returncode, done.stdout + done.stderr

        def runs_via_cli(deadline_s: float) -> str:
            """Schedule through the CLI (again while a failover is under way); the run id, once run."""
            deadline = time.monotonic() + deadline_s
            while (done := cli(f"{SCHEDULE} --json"))[0] == 5 and time.monotonic() < deadline:
                time.sleep(0.2)  # exit 5: Redis unavailable (the failover under way)
            assert done[0] == 0, done[1]
            job_id = json.loads(done[1])["job_id"]
            shown = wait_for(
                lambda: '"status": "completed"' in (out := cli(f"show {job_id} --json")[1]) and out,
                60,
                "the run",
            )
            return str(json.loads(shown)["last_run_id"])

        def flower_saw(run_id: str) -> bool:
            status, body = http_get(port, "/api/tasks", FLOWER)
            return status == 200 and run_id in body

        # Flower learns of runs from worker events as they happen: wait until it hears this worker
        # (its event receiver connects through the sentinels after Flower listens).
        wait_for(
            lambda: f"w1-{prefix}@" in http_get(port, "/workers?json=1", FLOWER)[1],
            60,
            "Flower to hear the worker",
        )
        first = runs_via_cli(60)
        wait_for(lambda: flower_saw(first), 60, "Flower to show the run")
        _, doctor = cli("doctor")
        assert f"(Sentinel master '{MASTER}' at 127.0.0.1:{group.ports['a']})" in doctor, doctor

        group.kill("a")
        assert group.wait_promoted("a") == "b"
        group.rejoin("a")  # back as b's replica: WAIT 1 is met again

        second = runs_via_cli(60)  # handed over by the CLI's schedule, run by the same worker
        wait_for(lambda: flower_saw(second), 60, "Flower to show a run after the failover")
        _, doctor = cli("doctor")
        assert f"(Sentinel master '{MASTER}' at 127.0.0.1:{group.ports['b']})" in doctor, doctor
        later = cli(
            f"schedule --env dev --product-tag tests --event echo --start-at {time.time() + 3:.3f} --json"
        )
        assert later[0] == 0, later[1]
        job_id = json.loads(later[1])["job_id"]  # beat releases this one: it carried on too
        wait_for(lambda: '"status": "completed"' in cli(f"show {job_id} --json")[1], 60, "beat's release")

        assert all(p.poll() is None for p in (worker, beat, flower))
        shown = doctor + "".join(procs.log(p) for p in (worker, beat, flower))
        assert PASSWORD not in shown and SENTINEL_PASSWORD not in shown
    finally:
        procs.stop_all()
        recorder.stop()
