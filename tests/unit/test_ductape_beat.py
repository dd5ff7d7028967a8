"""``ductape-beat``: beat without Celery's command line (beat/__main__.py). Its runs are every e2e
test's beat (tests/support.py starts it); here, what it says before it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "beat-pw-not-shown-4711"


def run_beat(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beat", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_a_bad_setting_is_one_line_and_status_2_without_the_password():
    done = run_beat(REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:1/0", DUCTAPE_SHARDS="0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: settings.shards: ") and done.stderr.count("\n") == 1, done.stderr
    assert "DUCTAPE_SHARDS" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_help_names_its_options():
    done = run_beat("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--loglevel", "--logfile", "--pidfile", "celery -A beat beat"):
        assert option in done.stdout, done.stdout
