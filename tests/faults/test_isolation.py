"""Two deployments (key prefixes) on one Redis, serving the same event names, never cross."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from ductape_jobs import Ductape, JobNotFoundError, Settings
from ductape_jobs.embedded import EmbeddedRedis
from tests.faults.conftest import Report, calls
from tests.support import Processes, wait_for

pytestmark = pytest.mark.faults

PER_KIND = 40  # jobs per (deployment, product)


def test_two_prefixes_on_one_redis_never_see_each_others_jobs(
    private_redis: EmbeddedRedis, tmp_path: Path, report: Report
):
    r = redis.Redis.from_url(private_redis.url)
    names = {"A": f"a{uuid.uuid4().hex[:8]}", "B": f"b{uuid.uuid4().hex[:8]}"}
    groups = {d: Processes(private_redis.url, p, tmp_path / d) for d, p in names.items()}
    clients = {
        d: Ductape(settings=Settings(redis_url=private_redis.url, key_prefix=p, require_handler=False))
        for d, p in names.items()
    }
    try:
        for group in groups.values():
            group.log_dir.mkdir()
            group.worker(concurrency=2)  # both serve tests/echo and other/echo
        mine: dict[tuple[str, str], set[str]] = {}
        for d, client in clients.items():
            for product in ("tests", "other"):
                handles = client.job.schedule_many(
                    [
                        {
                            "env": "dev",
                            "product_tag": product,
                            "event": "echo",
                            "input": {"d": d, "p": product, "i": i},
                        }
                        for i in range(PER_KIND)
                    ]
                )
                mine[(d, product)] = {h.job_id for h in handles}

        def recorded(d: str, handler: str) -> list[dict]:
            return calls(r, handler, prefix=names[d])

        expected = 4 * PER_KIND
        wait_for(
            lambda: sum(len(recorded(d, h)) for d in names for h in ("echo", "other_echo")) >= expected,
            60,
            "every job to run",
        )
        crossed = duplicated = 0
        for d in names:
            for handler, product in (("echo", "tests"), ("other_echo", "other")):
                seen = recorded(d, handler)
                # Each deployment's worker ran exactly its own jobs of that product, each once.
                crossed += sum(
                    1
                    for c in seen
                    if c["job_id"] not in mine[(d, product)]
                    or c["product_tag"] != product
                    or c["input"]["d"] != d
                )
                duplicated += len(seen) - len({c["run_id"] for c in seen})
                assert {c["job_id"] for c in seen} == mine[(d, product)]
        lost = expected - sum(
            len({c["run_id"] for c in recorded(d, h)}) for d in names for h in ("echo", "other_echo")
        )

        # Neither client sees the other's jobs, runs or keys.
        a, b = clients["A"], clients["B"]
        b_job = next(iter(mine[("B", "tests")]))
        with pytest.raises(JobNotFoundError):
            a.job.get(b_job)
        with pytest.raises(JobNotFoundError):
            a.job.cancel(b_job)
        assert b.job.get(b_job).status.value == "completed"  # the attempt to cancel it did nothing
        assert {j.job_id for j in a.job.list(limit=1_000)} == mine[("A", "tests")] | mine[("A", "other")]
        stray = [
            k.decode()
            for k in r.scan_iter()
            if not k.decode().startswith((f"{names['A']}:", f"{names['B']}:"))
        ]
        report(
            "9 two key prefixes on one Redis",
            expected,
            2,  # reaching into the other deployment: get and cancel of its job
            lost,
            duplicated,
            crossed=crossed,
            keys_outside_prefixes=len(stray),
        )
        assert crossed == 0 and duplicated == 0 and lost == 0
        assert stray == []
    finally:
        for group in groups.values():
            group.stop_all()
        for client in clients.values():
            client.close()
        r.close()
