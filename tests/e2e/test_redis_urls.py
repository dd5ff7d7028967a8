"""A Redis URL with the password as a query parameter (``?password=``) runs workers and beat."""

from __future__ import annotations

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, Settings
from ductape_jobs.embedded import EmbeddedRedis
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

PW = "Qu3ry-s3cret-pw"


def test_a_password_in_the_query_runs_a_worker_and_a_beat(prefix: str, tmp_path) -> None:
    server = EmbeddedRedis.start(appendonly=False)
    redis.Redis.from_url(server.url).config_set("requirepass", PW)
    url = f"redis://127.0.0.1:{server.port}/0?password={PW}"
    procs = Processes(url, prefix, tmp_path)
    client = Ductape(settings=Settings(redis_url=url, key_prefix=prefix, require_handler=False))
    try:
        worker, beat = procs.worker(), procs.beat()
        now = client.job.schedule(env="prd", product_tag="tests", event="echo", input={"n": 1})
        # a recurring one goes through beat
        later = client.job.schedule(
            env="prd", product_tag="tests", event="echo", input={"n": 2}, repeat={"every": 1000, "limit": 2}
        )
        for handle in (now, later):
            wait_for(lambda h=handle: client.job.get(h.job_id).status == JobStatus.COMPLETED, 60, "run")
        for proc in (worker, beat):
            assert proc.poll() is None and PW not in procs.log(proc)
    finally:
        client.close()
        procs.stop_all()
        server.stop()
