"""Where a bench run happens: one Redis for ours and theirs, key prefixes, real processes.

With ``REDIS_URL`` set the bench uses that server (and deletes only its own prefixes);
otherwise it starts a private Valkey without AOF, so figures measure the code, not fsync (``--aof``:
with ``appendonly yes`` and ``appendfsync everysec``, the production setting we recommend).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from ductape_jobs.embedded import EmbeddedRedis

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def wait_for(check: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.01) -> T:
    """Poll ``check`` until it returns something truthy; raise at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {got!r})")
        time.sleep(poll_s)


@dataclass
class Bench:
    """One bench run: the server, a run id for key prefixes, and the processes started."""

    url: str
    embedded: EmbeddedRedis | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path = RESULTS / "logs"

    @classmethod
    @contextlib.contextmanager
    def open(cls, *, aof: bool = False) -> Iterator[Bench]:
        """The server named by REDIS_URL, or a private one stopped at the end (with ``aof``: its
        append-only file on, fsync every second)."""
        embedded = None
        url = os.environ.get("REDIS_URL")
        if not url:
            embedded = EmbeddedRedis.start(appendonly=False)
            url = embedded.url
        bench = cls(url, embedded)
        if aof:
            bench.aof_everysec()
        bench.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            yield bench
        finally:
            bench.stop_all()
            if embedded is not None:
                embedded.stop()

    def aof_everysec(self) -> None:
        """Turn the private server's AOF on, fsync every second; wait for its first rewrite."""
        client = self.client()
        client.config_set("appendfsync", "everysec")
        client.config_set("appendonly", "yes")
        wait_for(
            lambda: (
                client.info("persistence").get("aof_rewrite_in_progress") == 0
                and client.info("persistence").get("aof_enabled") == 1
            ),
            60,
            "the server's AOF to be on",
            poll_s=0.05,
        )
        client.close()

    @property
    def server_name(self) -> str:
        """``valkey`` or ``redis``."""
        return "valkey" if "valkey_version" in self.client().info("server") else "redis"

    @property
    def server_version(self) -> str:
        """The server's version."""
        info = self.client().info("server")
        return str(info.get("valkey_version") or info.get("redis_version"))

    @property
    def where(self) -> str:
        """The server, for the report (no password)."""
        kind = "embedded valkey" if self.embedded else "REDIS_URL"
        aof = self.client().config_get("appendonly").get("appendonly") == "yes"
        fsync = self.client().config_get("appendfsync").get("appendfsync")
        persistence = f", AOF on, appendfsync {fsync}" if aof else ", AOF off"
        return f"{kind} ({self.server_name} {self.server_version}{persistence})"

    def prefix(self, name: str) -> str:
        """A key prefix private to this run and figure."""
        return f"bench-{self.run_id}-{name}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A fresh client on the bench server."""
        return redis.Redis.from_url(self.url, **kwargs)

    def drop(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (ours, the broker's and RedBeat's)."""
        client = self.client()
        dropped = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 5_000:
                dropped += client.unlink(*batch)
                batch.clear()
        if batch:
            dropped += client.unlink(*batch)
        # UNLINK frees in a background thread: let it finish, or the next measurement shares a
        # core with it (a million dropped schedules keep that thread busy for seconds).
        wait_for(
            lambda: not client.info("memory").get("lazyfree_pending_objects", 0),
            120,
            f"the server to free {prefix}'s keys",
            poll_s=0.05,
        )
        client.close()
        return dropped

    # -- processes --------------------------------------------------------------------------

    def spawn(
        self, app: str, args: list[str], env: dict[str, str], name: str, tree: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        """Start ``celery -A app ...`` in its own process group, logging to results/logs; its code
        from ``tree`` (another commit's work tree: ``checked_out``)."""
        return self.start([sys.executable, "-m", "celery", "-A", app, *args], env, name, tree)

    def beat(self, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        """Start our beat as the README runs it: ``ductape-beat`` (``python -m beat``: the same code)."""
        return self.start([sys.executable, "-m", "beat", "--loglevel", "WARNING"], env, name)

    def start(
        self, command: list[str], env: dict[str, str], name: str, tree: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` in its own process group, logging to results/logs, in ``tree``."""
        full_env = {
            **os.environ,
            "REDIS_URL": self.url,
            "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **env,
        }
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            command,
            cwd=tree,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one process we started (and its pool children): TERM, then KILL."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every process this run started."""
        for proc in list(self.procs):
            self.stop(proc)

    def check_alive(self, proc: subprocess.Popen[bytes]) -> None:
        """Fail with the process log when it has died."""
        if proc.poll() is not None:
            log = Path(proc.log_path).read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log}")


# -- counting what reaches Redis ---------------------------------------------------------------


@dataclass
class Sent:
    """What this process sent to Redis: round trips, and the packets (read after the clock stops)."""

    trips: int = 0
    packets: list[Any] = field(default_factory=list)

    @property
    def commands(self) -> dict[str, int]:
        """Commands sent by name (lower case), read from the RESP packets: ``*N`` then N bulk
        strings, the first the command's name (redis-py's packers and hiredis.pack_command alike)."""
        counts: dict[str, int] = {}
        for packet in self.packets:
            data = packet if isinstance(packet, bytes | bytearray) else b"".join(bytes(p) for p in packet)
            at = 0
            while at < len(data):
                end = data.index(b"\r\n", at)
                args = int(data[at + 1 : end])
                at = end + 2
                for n in range(args):
                    end = data.index(b"\r\n", at)
                    size = int(data[at + 1 : end])
                    if n == 0:
                        name = data[end + 2 : end + 2 + size].decode().lower()
                        counts[name] = counts.get(name, 0) + 1
                    at = end + 2 + size + 2
        return counts


@contextlib.contextmanager
def round_trips() -> Iterator[Sent]:
    """Count client round trips made in this process (one per command, one per pipeline) and keep
    what they sent, to count the commands afterwards."""
    conn_cls = redis.connection.AbstractConnection
    original = conn_cls.send_packed_command
    sent = Sent()

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.trips += 1
        sent.packets.append(command)
        original(self, command, check_health)

    conn_cls.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        conn_cls.send_packed_command = original  # type: ignore[method-assign]


@contextlib.contextmanager
def checked_out(ref: str) -> Iterator[Path]:
    """A work tree of git ``ref`` (a commit, branch or tag of this checkout), removed after: the
    code another commit's worker runs, with this checkout's environment."""
    with tempfile.TemporaryDirectory(prefix="bench-against-") as parent:
        tree = Path(parent) / "tree"
        added = subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, capture_output=True, text=True
        )
        if added.returncode != 0:
            raise RuntimeError(f"--against {ref}: git worktree add failed: {added.stderr.strip()}")
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def status_mb(pid: int, field: str) -> float:
    """One memory line of a process's ``/proc/<pid>/status`` (``VmRSS``: now, ``VmHWM``: its
    peak), MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Server-side calls per command (INFO commandstats; commands run inside Lua count too)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def command_usec(client: redis.Redis) -> dict[str, int]:
    """Server-side microseconds spent per command (INFO commandstats; a script's own count
    includes the commands it ran, which are also counted under their own names)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in stats.items()}


def redis_cpu_us(
    sent: dict[str, int], calls: dict[str, int], usec: dict[str, int], skip: tuple[str, ...] = ("llen",)
) -> float:
    """Server CPU (us) the commands this client sent cost: per command, usec per call x the calls
    the client made (``calls``/``usec`` are deltas over the same span). Calls made inside scripts
    are left out: the script's own usec already holds them."""
    total = 0.0
    for name, n in sent.items():
        if name in skip or not calls.get(name):
            continue
        total += usec.get(name, 0) / calls[name] * n
    return total


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands called between two snapshots, excluding INFO itself."""
    out = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    out.pop("info", None)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
