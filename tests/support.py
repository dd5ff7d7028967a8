"""Test helpers: a private Valkey server, real Celery processes, and polling with a deadline."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def fresh_python(code: str, handlers: str = "examples.handlers") -> str:
    """Run ``code`` in a fresh interpreter from the checkout, as ``celery -A ...`` would start one
    (Redis at a closed port: nothing may connect; ``handlers`` as DUCTAPE_HANDLERS); its stdout."""
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", "DUCTAPE_HANDLERS": handlers}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


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
    # How to run ``celery`` and from where: this checkout's by default; an installed one's
    # (tests/e2e/test_install.py) with ``overrides`` of the environment (None removes a variable).
    celery: list[str] = field(default_factory=lambda: [sys.executable, "-m", "celery"])
    ductape_beat: list[str] = field(
        default_factory=lambda: [sys.executable, "-m", "beat"]
    )  # its script's code
    cwd: Path = ROOT
    overrides: dict[str, str | None] = field(default_factory=dict)

    def env(self, **extra: str | None) -> dict[str, str]:
        """The environment the processes get (a None value removes the variable)."""
        env: dict[str, str | None] = {
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
        env.update(self.overrides)
        env.update(extra)
        return {name: value for name, value in env.items() if value is not None}

    def start(
        self, args: list[str], name: str, app: str = "workers", **extra: str | None
    ) -> subprocess.Popen[bytes]:
        """Start ``celery -A <app> <args>`` (output in its log) without waiting for anything."""
        return self._spawn(args, name, self.env(**extra), app)

    def _spawn(
        self, args: list[str], name: str, env: dict[str, str], app: str = "workers"
    ) -> subprocess.Popen[bytes]:
        return self._run([*self.celery, "-A", app, *args], name, env)

    def _run(self, command: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.count += 1
        log = open(self.log_dir / f"{name}-{self.count}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            command,
            cwd=self.cwd,
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

    def beat(self, *more: str, app: str | None = None, **extra: str) -> subprocess.Popen[bytes]:
        """Start a beat with our Redis scheduler: ``ductape-beat``, as the README runs it; with
        ``more`` (further arguments, e.g. ``-S``) or an ``app``, ``celery -A <app> beat`` (app
        ``beat`` by default: beat's own; ``workers`` loads the handler modules too)."""
        if app is None and not more:
            return self._run([*self.ductape_beat, "--loglevel", "INFO"], "beat", self.env(**extra))
        sched = str(self.log_dir / f"beat-{self.count + 1}.schedule")
        args = ["beat", "--loglevel", "INFO", "-s", sched, *more]
        return self._spawn(args, "beat", self.env(**extra), app=app or "beat")

    def flower(
        self, port: int, basic_auth: str, address: str | None = "127.0.0.1", **extra: str
    ) -> subprocess.Popen[bytes]:
        """Start Flower on ``port`` with basic auth (user:password) and wait until it listens.

        The credentials go through FLOWER_BASIC_AUTH, as `make flower` and compose pass them;
        ``address=None`` leaves the address to Flower's (our) default.
        """
        args = ["flower", f"--port={port}"] + ([f"--address={address}"] if address else [])
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

    def stop_all(self, reaper: Reaper | None = None) -> None:
        """Stop everything started, politely then firmly (SIGKILL after 10 s).

        With a ``reaper`` the waiting happens off the caller's clock: a warm shutdown takes a
        prefork worker about 2 s, which a test's teardown need not sit through.
        """
        for proc in self.running:
            if proc.poll() is None:
                self.signal(proc, signal.SIGCONT)
                self.signal(proc, signal.SIGTERM)
        if reaper is not None:
            reaper.reap(self, list(self.running))
        else:
            self.await_exit(self.running)

    def await_exit(self, procs: list[subprocess.Popen[bytes]], timeout_s: float = 10) -> None:
        """Wait for ``procs`` to exit; SIGKILL those still running after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill(proc)


class Reaper:
    """Waits out stopped processes in the background, so teardowns don't (one per session)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def reap(self, group: Processes, procs: list[subprocess.Popen[bytes]]) -> None:
        """Wait for ``procs`` (already signalled) in a thread; SIGKILL them at the deadline."""
        thread = threading.Thread(target=group.await_exit, args=(procs,), name="reaper", daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        """Wait until every process handed over has exited (or been killed)."""
        for thread in self.threads:
            thread.join()
        self.threads.clear()


def http_get(port: int, path: str, auth: tuple[str, str] | None) -> tuple[int, str]:
    """Status and body of a GET to 127.0.0.1:``port``, with basic auth unless ``auth`` is None."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def flower_refusal(procs: Processes, **env: str | None) -> str:
    """Start Flower with ``env`` and no working credentials; check it exits 2 naming the fix; its log."""
    port = free_port()
    proc = procs.start(["flower", f"--port={port}"], "flower", **{"FLOWER_BASIC_AUTH": None, **env})
    wait_for(lambda: proc.poll() is not None, 60, "Flower to refuse to start")
    log = procs.log(proc)
    assert proc.returncode == 2, log
    assert "Flower refuses to start" in log and "FLOWER_BASIC_AUTH=user:password" in log, log
    assert "Visit me" not in log and not listening_addresses(port), "Flower listened before refusing"
    return log


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on ``port`` (IPv4 and IPv6), from /proc."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(str(ipaddress.ip_address(_kernel_order(address, width))))
    return found


def _kernel_order(address: str, width: int) -> bytes:
    """/proc/net's hex address as network-order bytes (the kernel prints each 32-bit word host-order)."""
    raw = bytes.fromhex(address)
    assert len(raw) == width, address
    return b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
