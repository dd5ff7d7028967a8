"""The CLI through its real entry point: no Redis password in any URL form, nothing from Redis that
drives the terminal, and numbers too large to read refused with exit code 2."""

from __future__ import annotations

import json
import re

import pytest
import redis

from ductape_jobs import Ductape
from ductape_jobs.embedded import EmbeddedRedis, free_port
from ductape_jobs.keys import Keys
from tests.e2e.test_cli import failed_with, keys_of, out, run_cli, side_by_side
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

PW = "Sup3r-s3cret-pw"
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b1m\rover\u202egnp.exe\u2066x\u2069\u2028end"


def url_forms(port: int, password: str = PW) -> dict[str, str]:
    """Every way a Redis URL can carry the password, and how doctor must show it."""
    host = f"127.0.0.1:{port}"
    return {
        f"redis://:{password}@{host}/0": f"redis://:***@{host}/0",
        f"redis://default:{password}@{host}/0": f"redis://default:***@{host}/0",
        f"redis://{host}/0?password={password}": f"redis://{host}/0?password=***",
        f"redis://default:{password}@{host}/0?password={password}&db=0": f"redis://default:***@{host}/0?password=***&db=0",
    }


def test_doctor_masks_the_password_in_every_url_form_on_a_server_that_requires_it(prefix: str):
    server = EmbeddedRedis.start(appendonly=False)
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", PW)
        forms = url_forms(server.port)
        for url, masked in forms.items():
            people, as_json, listed = (
                run_cli(url, prefix, line) for line in ("doctor", "doctor --json", "list")
            )
            for done in (people, as_json, listed):
                assert PW not in done.stdout + done.stderr, (url, done.stdout, done.stderr)
            assert people.returncode == 1 and f"doctor: {masked}," in people.stdout  # no beat, no worker
            assert re.search(rf"ok +redis +{re.escape(masked)} answers", people.stdout), people.stdout
            assert json.loads(as_json.stdout)["redis_url"] == masked
            assert listed.returncode == 0
    finally:
        server.stop()


def test_doctor_masks_the_password_when_redis_refuses_or_is_gone(redis_url: str, prefix: str):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    answers = url_forms(port)  # the test server has no password, and takes any (or refuses AUTH)
    gone = {
        **url_forms(free_port()),
        f"rediss://default:{PW}@127.0.0.1:{port}/0": f"rediss://default:***@127.0.0.1:{port}/0",
        f"redis://u:p%40{PW}@127.0.0.1:{free_port()}/0": "redis://u:***@127.0.0.1",
    }
    forms = {**answers, **gone}
    lines = [(url, f"doctor --timeout 2{' --json' * i}") for url in forms for i in (0, 1)]
    results = side_by_side(lambda job: run_cli(job[0], prefix, job[1]), *lines)
    for (url, _), done in zip(lines, results, strict=True):
        assert PW not in done.stdout + done.stderr, (url, done.stdout, done.stderr)
        assert done.returncode == (1 if url in answers else 5) and forms[url] in done.stdout, (
            url,
            done.stdout,
        )
    # redis-py takes sentinel_password only for Sentinel: a plain client fails on it, still silently
    for line in ("doctor", "doctor --json", "list"):
        done = run_cli(f"redis://127.0.0.1:{port}/0?sentinel_password={PW}", prefix, line)
        assert done.returncode != 0 and PW not in done.stdout + done.stderr


def test_nothing_the_cli_prints_from_redis_drives_the_terminal(
    procs: Processes, ductape: Ductape, r: redis.Redis, redis_url: str, prefix: str
):
    procs.worker()
    handle = ductape.job.schedule(
        env="dev", product_tag="notifications", event="bounce", input={"email": HOSTILE, "userId": HOSTILE}
    )
    [dead] = wait_for(lambda: ductape.job.failed(), 60, "the bounce run to be dead-lettered")
    assert "\x1b]0;pwned" in (dead.error or "")  # the raw text really is in Redis
    r.hset(Keys(prefix).workers, f"w{HOSTILE}", json.dumps({"envs": ["dev"], "events": [], "seen_ms": 1}))

    def cli(line: str):
        return run_cli(redis_url, prefix, line, DUCTAPE_REQUIRE_HANDLER="false")

    job = handle.job_id
    people = ["failed", f"runs {job}", f"show {job}", "list", "doctor"]
    scripts = ["failed --json", f"runs {job} --json", f"show {job} --json", "list --json", "doctor --json"]
    done = side_by_side(cli, *people, *scripts)
    for line, result in zip(people + scripts, done, strict=True):
        assert not UNSAFE.search(result.stdout + result.stderr), (line, result.stdout)
    shown = {line: result.stdout for line, result in zip(people, done[: len(people)], strict=True)}
    assert "\\x1b]0;pwned\\x07" in shown["failed"] and "\\x1b]0;pwned\\x07" in shown[f"runs {job}"]
    assert "last_error" in shown[f"show {job}"] and "\\x1b" in shown[f"show {job}"]
    assert "worker w\\x1b]0;pwned" in shown["doctor"]
    # --json keeps the exact text for scripts, escaped by JSON itself
    failed, runs, detail = (json.loads(result.stdout) for result in done[5:8])
    assert failed[0]["error"] == runs[0]["error"] == dead.error
    assert detail["spec"]["input"]["email"] == HOSTILE
    # errors on stderr too
    bad = cli(f"show 'j{HOSTILE}'")
    failed_with(bad, 3, "j\\x1b]0;pwned")
    assert not UNSAFE.search(bad.stderr.rstrip("\n"))


def test_numbers_too_large_to_read_exit_2_and_write_nothing(
    redis_url: str, prefix: str, r: redis.Redis, tmp_path
):
    def cli(line: str, **kw):
        return run_cli(redis_url, prefix, line, DUCTAPE_REQUIRE_HANDLER="false", **kw)

    out(cli("schedule --env dev --product-tag p --event e --json"))
    before = keys_of(r, prefix)
    huge = "1" + "0" * 5000
    request = {"env": "dev", "product_tag": "p", "event": "e"}
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({**request, "repeat": {"every": 60000}})[:-2] + f', "limit": {huge}}}}}')
    flags = "schedule --env dev --product-tag p --event e"
    too_often = "repeat.cron: '* * * * * *' runs as often as every 1000 ms"
    cases = {
        f"""{flags} --repeat '{{"every": 60000, "limit": {huge}}}'""": "repeat: --repeat holds a number too",
        f"""{flags} --repeat '{{"every": 60000, "misfire": "run_all", "catchup_ms": {"9" * 4000}}}'""": (
            "repeat.catchup_ms:"
        ),
        f"""{flags} --repeat '{{"every": {"9" * 4000}}}'""": "repeat.every: must be at most 92233720368547",
        f"""{flags} --repeat '{{"every": 60000, "endDate": {"9" * 4000}}}'""": "repeat.endDate:",
        f"{flags} --retries {huge}": "retries:",
        f"{flags} --start-at {huge}": "start_at:",
        f"{flags} --start-at {'9' * 30}": f"start_at: {'9' * 30} is after the year 9999",
        f"schedule {path}": "request: ",
        f"""{flags} --repeat '{{"cron": "* * * * * *"}}'""": too_often,
    }
    results = side_by_side(lambda line: cli(line, DUCTAPE_MIN_EVERY_MS="60000"), *cases)
    for (line, words), done in zip(cases.items(), results, strict=True):
        failed_with(done, 2, words)
        assert len(done.stderr) < 800, line
    assert keys_of(r, prefix) == before
