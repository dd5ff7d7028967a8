"""Test helpers: a private Valkey server, real Celery processes, and polling with a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(0.05)
        last = check()
    return last


@dataclass
class Processes:
    """Real ``celery worker`` / ``celery beat`` processes for one deployment (key prefix)."""

    redis_url: str
    prefix: str
    log_dir: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    count: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        """The environment the processes get."""
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "DUCTAPE_KEY_PREFIX": self.prefix,
            "DUCTAPE_HANDLERS": "tests.handlers",
            "DUCTAPE_CACHES": '{"short": {"ttl_ms": 60000}}',
            "DUCTAPE_SESSIONS": (
                '{"user-session": {"secret": "test-secret-not-for-prod-0123456789abcdef", "expiry_s": 3600}}'
            ),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        return env

    def _spawn(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.count += 1
        log = open(self.log_dir / f"{name}-{self.count}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.running.append(proc)
        return proc

    def worker(
        self, envs: str = "", concurrency: int = 2, pool: str = "prefork", wait: bool = True, **extra: str
    ) -> subprocess.Popen[bytes]:
        """Start a worker (serving ``envs``, comma-separated, or all) and wait until it is ready."""
        hostname = f"w{self.count + 1}-{self.prefix}@%h"
        env = self.env(DUCTAPE_WORKER_ENVS=envs, **extra)
        args = [
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            hostname,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        proc = self._spawn(args, "worker", env)
        if wait:
            client = redis.Redis.from_url(self.redis_url)
            name = hostname.replace("%h", socket.gethostname())
            wait_for(
                lambda: proc.poll() is not None or client.hexists(f"{self.prefix}:workers", name),
                60,
                f"worker {name} to be ready",
            )
            client.close()
            if proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log(proc)}")
        return proc

    def beat(self, **extra: str) -> subprocess.Popen[bytes]:
        """Start a beat with our Redis scheduler."""
        sched = str(self.log_dir / f"beat-{self.count + 1}.schedule")
        args = ["beat", "--loglevel", "INFO", "-s", sched]
        return self._spawn(args, "beat", self.env(**extra))

    def flower(self, port: int, basic_auth: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start Flower on 127.0.0.1:``port`` with basic auth (user:password) and wait until it listens.

        The credentials go through FLOWER_BASIC_AUTH, as `make flower` and compose pass them.
        """
        args = ["flower", f"--port={port}", "--address=127.0.0.1"]
        proc = self._spawn(args, "flower", self.env(FLOWER_BASIC_AUTH=basic_auth, **extra))
        wait_for(lambda: proc.poll() is not None or _listens(port), 60, f"flower on port {port}")
        if proc.poll() is not None:
            raise AssertionError(f"flower exited early:\n{self.log(proc)}")
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        """What the process printed so far."""
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        """Send ``sig`` to the process group (the worker's pool children too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a process and its children."""
        self.signal(proc, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        """Stop everything started, politely then firmly."""
        for proc in self.running:
            if proc.poll() is None:
                self.signal(proc, signal.SIGCONT)
                self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.running:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill(proc)


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
