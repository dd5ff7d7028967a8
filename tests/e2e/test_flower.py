"""Flower end to end: a real worker and Flower, the tasks page rendered by headless Chromium.

Checks that runs show up under their event names, and as soon as they are sent (task-sent, from
the producer and from beat) before any worker takes them, that session-derived arguments are masked,
that no secret reaches any page or API reply, and that Flower refuses requests without
credentials. Its Broker page and ``/api/queues/length`` list each env queue with the messages
waiting in it, on one Redis (``redis://``, our kombu transport) and behind Sentinel, with the
passwords masked. The screenshot and DOM are kept under tests/output/flower/. Flower started as the
README says (``celery -A workers flower``, what `make flower` and compose run) refuses to start
without credentials and listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from ductape_jobs import Ductape, JobStatus, Settings
from ductape_jobs.celery_app import create_app
from ductape_jobs.clock import now_ms
from tests.sentinels import MASTER, SentinelGroup
from tests.sentinels import PASSWORD as SENTINEL_PRIMARY_PW
from tests.sentinels import SENTINEL_PASSWORD as SENTINEL_OWN_PW
from tests.support import (
    ROOT,
    Processes,
    flower_refusal,
    free_port,
    http_get,
    listening_addresses,
    wait_for,
)

pytestmark = pytest.mark.e2e

USER, PASSWORD = "user", "pw"
OUTPUT = ROOT / "tests" / "output" / "flower"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1920,700",
    # Lets the page's scripts fetch and draw the task rows before the DOM is dumped.
    "--virtual-time-budget=10000",
]


def get(port: int, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, str]:
    """Status and body of a GET to Flower, with basic auth unless ``auth`` is None."""
    return http_get(port, path, auth)


def api_tasks(port: int) -> dict[str, Any]:
    status, body = get(port, "/api/tasks")
    assert status == 200, body
    tasks: dict[str, Any] = json.loads(body)
    return tasks


def chromium(port: int, path: str, profile: Path, *args: str) -> str:
    """Load a Flower page in headless Chromium (credentials in the URL); return its stdout."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is missing: `make test` installs it (tests/setup_chromium.sh)"
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}{path}"
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode(errors="replace")


@pytest.fixture
def env_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", prefix)  # tests.handlers.calls_key reads it
    return prefix


def test_flower_shows_runs_by_event_with_secrets_masked(
    procs: Processes, ductape: Ductape, env_prefix: str, tmp_path: Path
) -> None:
    worker = procs.worker(DUCTAPE_TASK_EVENTS="true")  # not waiting for Flower's enable_events timer
    port = free_port()
    procs.flower(port, f"{USER}:{PASSWORD}")
    # Flower learns of tasks from worker events as they happen: wait until it hears this worker.
    hostname = f"w1-{env_prefix}@"
    wait_for(
        lambda: hostname in get(port, "/workers?json=1")[1],
        60,
        "Flower to receive the worker's events",
    )

    token = ductape.sessions.start(
        "user-session", {"user": {"id": "user_123", "email": "secret@example.com"}}
    )
    sealed = ductape.job.schedule(
        env="dev",
        product_tag="tests",
        event="echo",
        input={"userId": "$Session{user}{id}", "email": "$Session{user}{email}"},
        session={"tag": "user-session", "token": token},
    )
    plain = ductape.job.schedule(
        env="dev", product_tag="tests", event="echo", input={"note": "plain-visible"}
    )
    runs = {}
    for handle in (sealed, plain):
        job = wait_for(
            lambda h=handle: (j := ductape.job.get(h.job_id)).status == JobStatus.COMPLETED and j,
            60,
            "the jobs to complete",
        )
        runs[handle.job_id] = job.last_run_id
    sealed_run, plain_run = runs[sealed.job_id], runs[plain.job_id]

    tasks = wait_for(
        lambda: (
            (t := api_tasks(port))
            and all(t.get(r, {}).get("state") == "SUCCESS" for r in runs.values())
            and t
        ),
        60,
        "Flower to show both runs as succeeded",
    )
    assert tasks[sealed_run]["name"] == tasks[plain_run]["name"] == "tests.echo"
    assert tasks[sealed_run]["args"] == "{'userId': '***', 'email': '***'}"
    assert tasks[sealed_run]["result"] == "'***'"
    assert "plain-visible" in tasks[plain_run]["args"]  # only session values are masked

    # The tasks page, as a browser renders it (rows are drawn by script from /tasks/datatable).
    OUTPUT.mkdir(parents=True, exist_ok=True)
    dom = wait_for(
        lambda: (
            (d := chromium(port, "/tasks", tmp_path / "profile", "--dump-dom"))
            and sealed_run in d
            and plain_run in d
            and d
        ),
        90,
        "the tasks page to list both runs",
    )
    (OUTPUT / "tasks.html").write_text(dom)
    chromium(port, "/tasks", tmp_path / "profile", f"--screenshot={OUTPUT / 'tasks.png'}")
    assert (OUTPUT / "tasks.png").stat().st_size > 10_000
    assert 'href="/tasks?name=tests.echo">tests.echo</a>' in dom
    assert "{'userId': '***', 'email': '***'}" in dom.replace("&#x27;", "'").replace("&#39;", "'")
    assert "plain-visible" in dom

    detail = chromium(port, f"/task/{sealed_run}", tmp_path / "profile", "--dump-dom")
    (OUTPUT / "task.html").write_text(detail)
    assert "tests.echo" in detail and "***" in detail

    # No secret anywhere: not the token (nor its JWT or payload part), not the session values.
    jwt = token.split(":", 1)[1]
    secrets = ["secret@example.com", "user_123", token, jwt, jwt.split(".")[1]]
    seen = {
        "tasks page": dom,
        "task page": detail,
        "api/tasks": json.dumps(tasks),
        "api/task/info": get(port, f"/api/task/info/{sealed_run}")[1],
        "tasks/datatable": get(port, "/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D=")[1],
        "worker log": procs.log(worker),
    }
    # Flower serves /metrics without auth (for Prometheus): counts by task name and worker only.
    status, metrics = get(port, "/metrics", auth=None)
    assert status == 200 and 'task="tests.echo"' in metrics
    seen["metrics"] = metrics
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:6]}...) shows in the {where}"

    # Closed without credentials, or with wrong ones.
    for path in ("/", "/tasks", "/api/tasks", "/tasks/datatable", f"/task/{sealed_run}", "/workers"):
        assert get(port, path, auth=None)[0] == 401, path
    assert get(port, "/api/tasks", auth=(USER, "wrong"))[0] == 401


def test_flower_shows_runs_when_sent_before_any_worker_takes_them(
    procs: Processes, settings: Settings, env_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    procs.flower(port, f"{USER}:{PASSWORD}")
    # Flower's event receiver subscribes after it listens: send a probe event until Flower shows
    # it, so no event below goes out before it hears them.
    app = create_app(settings)
    with app.connection_for_write() as conn:
        probe = app.events.Dispatcher(conn)

        def heard() -> bool:
            probe.send("task-sent", uuid=f"probe-{env_prefix}", name="probe")
            return f"probe-{env_prefix}" in api_tasks(port)

        wait_for(heard, 60, "Flower to hear events")
        probe.close()
    app.close()
    procs.beat("-S", "beat.RedisScheduler", DUCTAPE_TASK_EVENTS="true")

    # The producer sends what falls due within its horizon (5 s here) with an ETA; beat sends a
    # run due later at its time. No worker runs yet.
    events_on = settings.replace(**{"task_events": True, "horizon_ms": 5_000})
    with Ductape(settings=events_on) as ductape:
        by_beat = ductape.job.schedule(
            env="dev", product_tag="tests", event="echo", start_at=now_ms() + 12_000, input={"via": "beat"}
        )
        eta_at = now_ms() + 4_000
        by_producer = ductape.job.schedule(
            env="dev", product_tag="tests", event="echo", start_at=eta_at, input={"via": "producer"}
        )
        assert ductape.job.get(by_beat.job_id).status == JobStatus.SCHEDULED  # in the due index
        runs = {
            by_producer.job_id: ductape.job.get(by_producer.job_id).last_run_id or "",
            by_beat.job_id: wait_for(
                lambda: ductape.job.get(by_beat.job_id).last_run_id, 60, "beat to release its run"
            ),
        }

        def states() -> dict[str, str]:
            tasks = api_tasks(port)
            return {job_id: tasks.get(run, {}).get("state", "") for job_id, run in runs.items()}

        wait_for(lambda: set(states().values()) == {"PENDING"}, 60, "Flower to show both runs as sent")
        tasks = api_tasks(port)
        for job_id, run in runs.items():
            assert tasks[run]["name"] == "tests.echo" and tasks[run]["sent"] and not tasks[run]["received"]
            assert tasks[run]["kwargs"] == repr({"job_id": job_id})
        assert tasks[runs[by_producer.job_id]]["eta"].startswith(ms_iso_second(eta_at))
        assert tasks[runs[by_beat.job_id]]["eta"] is None  # released at its time
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page = chromium(port, f"/task/{runs[by_producer.job_id]}", tmp_path / "profile", "--dump-dom")
        (OUTPUT / "task-sent.html").write_text(page)
        assert "PENDING" in page and by_producer.job_id in page and ">ETA<" in page and ">Sent<" in page
        listed = chromium(port, "/tasks", tmp_path / "profile", "--dump-dom")
        assert all(run in listed and job_id in listed for job_id, run in runs.items())  # kwargs column
        chromium(port, "/tasks", tmp_path / "profile", f"--screenshot={OUTPUT / 'tasks-sent.png'}")

        # Then a worker takes them: the same tasks turn SUCCESS, still naming their jobs.
        procs.worker(DUCTAPE_TASK_EVENTS="true")
        for job_id in runs:
            wait_for(lambda j=job_id: ductape.job.get(j).status == JobStatus.COMPLETED, 60, "the runs")
    wait_for(lambda: set(states().values()) == {"SUCCESS"}, 60, "Flower to show both runs succeeded")
    page = chromium(port, f"/task/{runs[by_beat.job_id]}", tmp_path / "profile", "--dump-dom")
    (OUTPUT / "task-succeeded.html").write_text(page)
    assert "SUCCESS" in page and by_beat.job_id in page and ">Sent<" in page and ">Received<" in page


def ms_iso_second(value_ms: int) -> str:
    """An instant as Celery writes an ETA, to the second (``2026-12-01T12:00:04``)."""
    return datetime.fromtimestamp(value_ms // 1000, tz=UTC).isoformat()[:19]


def test_flower_refuses_to_start_without_credentials(procs: Processes) -> None:
    assert "no credentials" in flower_refusal(procs)
    # Half a credential is none: an empty password is refused too, without echoing the entry.
    log = flower_refusal(procs, FLOWER_BASIC_AUTH="admin:")
    assert "entry 1 is not user:password" in log and "admin" not in log


def test_make_flower_refuses_to_start_without_credentials() -> None:
    # `make flower` runs the README's command (compose too: tests/unit/test_deploy.py); no check
    # of its own stands in front of the app's.
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    done = subprocess.run(["make", "-s", "flower"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode != 0
    assert b"Flower refuses to start: no credentials; set FLOWER_BASIC_AUTH=user:password" in done.stderr


def test_flower_listens_on_loopback_unless_told(procs: Processes) -> None:
    port = free_port()
    procs.flower(port, f"{USER}:{PASSWORD}", address=None)  # no --address, no FLOWER_ADDRESS
    assert listening_addresses(port) == {"127.0.0.1"}
    assert get(port, "/", auth=None)[0] == 401
    assert get(port, "/")[0] == 200
    # Told otherwise, it listens where it is told (compose tells it 0.0.0.0 inside the container).
    port = free_port()
    procs.flower(port, f"{USER}:{PASSWORD}", address=None, FLOWER_ADDRESS="0.0.0.0")
    assert listening_addresses(port) == {"0.0.0.0"}


# A row of Flower's Broker page (templates/broker.html): the queue's name, then its message count.
QUEUE_ROW = re.compile(
    r'<tr id="[^"]*">\s*<td>([^<]*)</td>\s*<td class="broker-secondary-column">([^<]*)</td>'
)


def read_lengths(port: int) -> tuple[int, dict[str, int] | str]:
    """Flower's ``/api/queues/length``: its status and (queue name -> messages waiting) or its body."""
    status, body = http_get(port, "/api/queues/length", (USER, PASSWORD))
    if status != 200:
        return status, body
    return status, {queue["name"]: queue["messages"] for queue in json.loads(body)["active_queues"]}


def queue_lengths(port: int) -> dict[str, int]:
    """Queue name -> messages waiting, as ``/api/queues/length`` answers them."""
    status, lengths = read_lengths(port)
    # 404 "'redis' broker is not supported" before Flower knew our transport.
    assert status == 200 and isinstance(lengths, dict), (status, lengths)
    return lengths


def broker_page(port: int) -> tuple[dict[str, str], str]:
    """The Broker page's rows (queue name -> messages, as shown) and the page itself."""
    status, page = http_get(port, "/broker", (USER, PASSWORD))
    assert status == 200, (status, page)
    return dict(QUEUE_ROW.findall(page)), page


def schedule_now(ductape: Ductape, counts: dict[str, int]) -> None:
    """``counts[env]`` one-offs due now in each env: pushed on the env's queue at once."""
    for env, count in counts.items():
        for n in range(count):
            ductape.job.schedule(env=env, product_tag="tests", event="echo", input={"n": n})


@pytest.fixture
def flower_user(r: redis.Redis, redis_url: str, prefix: str) -> Iterator[str]:
    """The test server's URL with a user of this test's own and its password (an ACL user,
    deleted afterwards): what Flower must never show."""
    user, password = f"flower-{prefix}", f"broker-pw-{prefix}"
    r.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"], categories=["+@all"]
    )
    parts = urlsplit(redis_url)
    try:
        yield parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}").geturl()
    finally:
        r.acl_deluser(user)


def test_flower_broker_page_lists_env_queues_with_their_lengths(
    procs: Processes, ductape: Ductape, settings: Settings, env_prefix: str, flower_user: str
) -> None:
    port = free_port()
    flower = procs.flower(port, f"{USER}:{PASSWORD}", REDIS_URL=flower_user)
    # No worker runs: what is scheduled now stays on its env's queue.
    counts = {"dev": 3, "staging": 2, "prd": 0}
    schedule_now(ductape, counts)
    waiting = {settings.queue_for(env): count for env, count in counts.items()}
    assert queue_lengths(port) == waiting
    rows, page = broker_page(port)
    assert rows == {name: str(count) for name, count in waiting.items()}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "broker.html").write_text(page)
    # The URL shown is the broker's, the user named and the password masked, nowhere in clear.
    at = urlsplit(flower_user)
    assert at.password and f"redis://{at.username}:**@{at.hostname}:{at.port}/" in page
    shown = {"page": page, "api": json.dumps(queue_lengths(port)), "log": procs.log(flower)}
    for where, text in shown.items():
        assert at.password not in text, f"the Redis password shows in Flower's {where}"

    # The counts are the queues' own: a worker drains them, and the page follows.
    procs.worker()
    drained = {name: 0 for name in waiting}
    wait_for(lambda: queue_lengths(port) == drained, 60, "the worker to drain the queues")
    assert broker_page(port)[0] == {name: "0" for name in waiting}


def test_flower_broker_page_behind_sentinel(group: SentinelGroup, prefix: str, tmp_path: Path) -> None:
    procs = Processes(group.url, prefix, tmp_path, overrides=dict(group.env()))
    behind = Settings(
        redis_url=group.url,
        sentinel_master=MASTER,
        sentinel_password=SENTINEL_OWN_PW,
        key_prefix=prefix,
        require_handler=False,
    )
    try:
        port = free_port()
        flower = procs.flower(port, f"{USER}:{PASSWORD}")
        counts = {"dev": 2, "staging": 1, "prd": 0}
        with Ductape(settings=behind) as ductape:
            schedule_now(ductape, counts)
        waiting = {behind.queue_for(env): count for env, count in counts.items()}
        assert queue_lengths(port) == waiting
        rows, page = broker_page(port)
        assert rows == {name: str(count) for name, count in waiting.items()}
        assert f"sentinel://:**@127.0.0.1:{group.ports['s1']}/0" in page

        # Each request asks the sentinels for the master: the page follows a failover.
        group.wait_replicated("b")
        group.kill("a")
        assert group.wait_promoted("a") == "b"
        # (500 while there is no master: Flower's client does not retry.)
        wait_for(lambda: read_lengths(port) == (200, waiting), 60, "Flower to read the new master")
        assert broker_page(port)[0] == {name: str(count) for name, count in waiting.items()}

        api = json.dumps(queue_lengths(port))
        # Flower asks only the first sentinel (README): with it gone, the error path is logged,
        # and that log too holds neither password.
        group.kill("s1")
        status, failed = http_get(port, "/broker", (USER, PASSWORD))
        assert status == 200 and "No queue data is available" in failed
        log = procs.log(flower)  # written before Flower answered
        assert "Unable to get queues" in log
        shown = {"page": page, "page without sentinel 1": failed, "api": api, "log": log}
        for where, text in shown.items():
            for secret in (SENTINEL_PRIMARY_PW, SENTINEL_OWN_PW):
                assert secret not in text, f"a Redis password shows in Flower's {where}"
    finally:
        procs.stop_all()
