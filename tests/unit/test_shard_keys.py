"""Shard placement, pure: which shard a job is in, the spaces' names, ids routed by identity."""

from __future__ import annotations

import uuid

import pytest

from ductape_jobs.keys import Keys, route_of, routed, shard_number
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import Sessions
from ductape_jobs.settings import Settings
from ductape_jobs.terms import run_id_for

ECHO = {"env": "dev", "product_tag": "tests", "event": "echo", "input": {}}


def test_one_shard_keeps_the_key_names_of_deployments_older_than_shards():
    keys = Keys("dt")
    job_id = uuid.uuid4().hex
    assert keys.space == "dt" and keys.job(job_id) == f"dt:job:{job_id}" and keys.due == "dt:due"
    assert keys.run(run_id_for(job_id, 5)) == f"dt:run:{job_id}:5" and keys.beat_lock == "dt:beat:lock"
    assert keys.every_shard() == [keys] and keys.of_job(job_id) is keys


@pytest.mark.parametrize("shards", [2, 4, 7, 16])
def test_every_key_of_a_shard_carries_its_hash_tag(shards: int):
    keys = Keys("dt", shards)
    job_id = uuid.uuid4().hex
    home = keys.of_job(job_id)
    tag = f"dt:{{dt.{home.shard}}}"
    assert home.shard == int(job_id[:8], 16) % shards
    per_job = [keys.job(job_id), keys.run(run_id_for(job_id, 9)), keys.job_runs(job_id)]
    indexes = [home.due, home.inflight, home.dead, home.retired, home.jobs, home.stats, home.set_aside]
    others = [
        home.beat_lock,
        home.beat_fence,
        home.imported("app"),
        home.fingerprint("ab"),
        home.key_index("k"),
    ]
    for key in [*per_job, *indexes, *others, home.idempotency("i")]:
        assert key.startswith(tag + ":"), key
    # one per deployment: no script touches them
    assert keys.beats == "dt:beats" and keys.workers == "dt:workers" and keys.broker_prefix == "dt:broker:"


def test_job_ids_spread_over_the_shards_and_odd_ids_still_have_one():
    counts = [0] * 8
    for _ in range(4_000):
        counts[shard_number(uuid.uuid4().hex, 8)] += 1
    assert min(counts) > 350  # 500 expected each
    assert 0 <= shard_number("not-hex-at-all", 8) < 8 and shard_number("not-hex-at-all", 1) == 0
    with pytest.raises(ValueError, match="shard 4"):
        Keys("dt", 4, 4)


def test_ids_are_routed_by_their_key_idempotency_key_or_fingerprint():
    settings = Settings(require_handler=False)

    def planned(**fields: object) -> str:
        request = JobRequest.parse({**ECHO, **fields})
        return plan_job(request, settings, Sessions({}), 1_000, uuid.uuid4().hex).job_id

    assert planned(key="a").startswith(route_of("a"))
    assert planned(idempotency_key="b").startswith(route_of("b"))
    schedule = JobRequest.parse({**ECHO, "repeat": {"every": 60_000}})
    spec = plan_job(schedule, settings, Sessions({}), 1_000, uuid.uuid4().hex).spec
    assert planned(repeat={"every": 60_000}).startswith(spec.fingerprint()[:8])
    one_off = uuid.uuid4().hex
    assert routed(one_off, "") == one_off and routed("validate", route_of("a")) == "validate"
    for shards in (2, 3, 16):  # the entry's shard is its job's whatever the count
        job_id = routed(uuid.uuid4().hex, route_of("a"))
        assert Keys("dt", shards).shard_of(job_id) == Keys("dt", shards).shard_of(route_of("a") + "0" * 24)


def test_the_shards_spaces_are_built_once_per_deployment() -> None:
    # for_shard and every_shard make a Keys per shard: each must not build every space again
    # (1,024 shards: 1,024 x 1,024 strings for one every_shard()).
    keys = Keys("p", 1024)
    assert all(k._spaces is keys._spaces for k in keys.every_shard())
    assert keys.of_job("ffffffff" + "0" * 24)._spaces is keys._spaces
