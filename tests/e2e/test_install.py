"""A clean install, as a user and the Dockerfile make it, runs the seed's Quick Example.

The wheel is built from the sources alone and installed without dev extras into a fresh virtual
environment (tests/install.py, the Dockerfile's recipe). Worker, beat and Flower run from that
environment's ``celery``, in a directory outside this checkout that holds only the app files
(the example handlers), so every import comes from the installed wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, RunStatus
from tests.install import APP_FILES, BUILD, INSTALL, SOURCES, command
from tests.support import (
    ROOT,
    Processes,
    Reaper,
    flower_refusal,
    free_port,
    http_get,
    listening_addresses,
    wait_for,
)

# The first test of a session builds and installs the wheel (pip's cache keeps it to a minute or
# so); the rest reuse that environment, so a parallel run keeps them on one process
# (tests/conftest.py, TOGETHER).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AUTH = ("admin", "change-me")
QUICK_EXAMPLE = """
from ductape_jobs import Ductape

handle = Ductape().job.schedule(
    env="prd",
    product_tag="my-app",
    event="send_welcome_email",
    start_at=0,  # 0 means run immediately
    retries=3,
    input={"userId": "user_123", "email": "john@example.com"},
)
print(handle.job_id)
"""
WHERE_FROM = "import beat, ductape_jobs, examples.handlers, workers; print(beat.__file__, ductape_jobs.__file__, examples.handlers.__file__, workers.__file__)"  # noqa: E501


@dataclass(frozen=True)
class Install:
    """A fresh virtual environment holding the wheel, and the app directory beside it."""

    venv: Path
    app: Path

    def processes(self, redis_url: str, prefix: str, log_dir: Path) -> Processes:
        """Processes that run this install's ``celery`` from the app directory, as the image does."""
        return Processes(
            redis_url,
            prefix,
            log_dir,
            celery=[str(self.venv / "bin" / "celery")],
            ductape_beat=[str(self.venv / "bin" / "ductape-beat")],
            cwd=self.app,
            overrides={"PYTHONPATH": str(self.app), "DUCTAPE_HANDLERS": "examples.handlers"},
        )


def run(args: list[str], **kwargs: object) -> str:
    """Run a command; fail with its output when it fails."""
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return str(done.stdout)


@pytest.fixture(scope="session")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """Build the wheel from a copy of the sources and install it into a fresh venv, once a session."""
    root = tmp_path_factory.mktemp("install")
    src, wheels, venv, app = (root / name for name in ("src", "wheels", "venv", "app"))
    for tree, names in ((src, SOURCES), (app, APP_FILES)):
        tree.mkdir()
        for name in names:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, tree / name)
    run(command(BUILD, [sys.executable, "-m", "pip"], wheels=str(wheels), src=str(src)))
    run([sys.executable, "-m", "venv", str(venv)])
    args = command(INSTALL, [str(venv / "bin" / "pip")], wheels=str(wheels))
    run([*args[:-1], *(str(p) for p in wheels.glob(Path(args[-1]).name))])
    return Install(venv, app)


@pytest.fixture
def installed(
    install: Install, redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory, reaper: Reaper
) -> Iterator[Processes]:
    """Processes from the installed wheel; stopped after the test."""
    group = install.processes(redis_url, prefix, tmp_path_factory.mktemp("procs"))
    yield group
    group.stop_all(reaper)


def test_the_installed_package_is_what_runs(install: Install, installed: Processes) -> None:
    python = str(install.venv / "bin" / "python")
    paths = run([python, "-c", WHERE_FROM], cwd=install.app, env=installed.env())
    beat, ductape_jobs, handlers, workers = (Path(p) for p in paths.split())
    site = next((install.venv / "lib").glob("python*/site-packages"))
    assert all(p.is_relative_to(site) for p in (beat, ductape_jobs, workers)), paths
    assert handlers.is_relative_to(install.app), paths


def test_a_clean_install_runs_the_quick_example(
    install: Install, installed: Processes, ductape: Ductape, r: redis.Redis
) -> None:
    worker = installed.worker(concurrency=1, DUCTAPE_TASK_EVENTS="true")
    beat = installed.beat()
    wait_for(
        lambda: beat.poll() is not None or r.exists(f"{installed.prefix}:beat:lock"),
        60,
        "the beat to take the leader lock",
    )
    assert beat.poll() is None, installed.log(beat)
    port = free_port()
    installed.flower(port, ":".join(AUTH), address=None)
    assert listening_addresses(port) == {"127.0.0.1"}
    assert http_get(port, "/workers", auth=None)[0] == 401
    hostname = f"w1-{installed.prefix}@"
    wait_for(lambda: hostname in http_get(port, "/workers?json=1", AUTH)[1], 60, "Flower to hear the worker")

    python = str(install.venv / "bin" / "python")
    job_id = run([python, "-c", QUICK_EXAMPLE], cwd=install.app, env=installed.env()).strip()
    job = wait_for(
        lambda: (j := ductape.job.get(job_id)).status in (JobStatus.COMPLETED, JobStatus.FAILED) and j,
        90,
        "the Quick Example's job to finish",
    )
    assert job.status == JobStatus.COMPLETED, (job, installed.log(worker))
    assert job.result == {"sent_to": "user_123"} and job.spec.retries == 3
    [record] = ductape.job.runs(job_id)
    assert record.status == RunStatus.COMPLETED and record.attempts == 1
    # The installed CLI reads the same record.
    cli = [str(install.venv / "bin" / "ductape-jobs"), "show", job_id, "--json"]
    shown = run(cli, cwd=install.app, env=installed.env())
    assert json.loads(shown)["status"] == "completed", shown
    wait_for(
        lambda: f'"{record.run_id}"' in (body := http_get(port, "/api/tasks", AUTH)[1]) and "SUCCESS" in body,
        60,
        "Flower to show the run as succeeded",
    )


def test_an_installed_flower_refuses_to_start_open(installed: Processes, tmp_path: Path) -> None:
    installed.cwd = tmp_path  # no flowerconfig.py anywhere near: the installed app enforces it
    assert "no credentials" in flower_refusal(installed)
