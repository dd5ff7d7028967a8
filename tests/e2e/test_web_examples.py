"""The README's web examples, as they are in examples/: the FastAPI endpoint (AsyncDuctape, one
client made and closed by the app's lifespan) through FastAPI's TestClient, its job run by a real
worker; the Django view (the sync client made in ``AppConfig.ready``) through Django's test client
with the example's settings. Both talk to the test's real Redis, configured as a deployment would
be: REDIS_URL and DUCTAPE_* in the environment."""

from __future__ import annotations

import json

import pytest

from ductape_jobs import Ductape, JobStatus, Settings
from tests.support import Processes, wait_for

pytestmark = pytest.mark.e2e

WELCOME = {"userId": "user_123", "email": "john@example.com"}


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """The environment the examples read their client's settings from."""
    monkeypatch.setenv("REDIS_URL", settings.url)
    monkeypatch.setenv("DUCTAPE_KEY_PREFIX", settings.key_prefix)
    return settings


def test_the_fastapi_endpoint_schedules_a_job_a_worker_runs(
    deployment: Settings, ductape: Ductape, procs: Processes
) -> None:
    from fastapi.testclient import TestClient

    from examples.fastapi_app import app

    with TestClient(app) as client:  # runs the lifespan: the client is made, then closed
        # No worker has registered the event yet: schedule() refuses it, and the endpoint says so.
        refused = client.post("/signups", json=WELCOME)
        assert refused.status_code == 400
        assert "no worker has registered a handler for my-app/send_welcome_email" in refused.json()["detail"]
        assert client.post("/signups", json={"userId": "u"}).status_code == 422  # FastAPI's own check

        procs.worker(DUCTAPE_HANDLERS="examples.handlers")
        accepted = client.post("/signups", json=WELCOME)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        assert accepted.json()["status"] == "queued"
    job = wait_for(
        lambda: (j := ductape.job.get(job_id)).status == JobStatus.COMPLETED and j, 60, "the job to run"
    )
    assert job.spec.input == WELCOME and job.spec.retries == 3
    assert job.result == {"sent_to": "user_123"}


def test_the_django_view_schedules_a_job(deployment: Settings, ductape: Ductape, monkeypatch) -> None:
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
    monkeypatch.setenv("DUCTAPE_REQUIRE_HANDLER", "false")  # no worker here: scheduled before deploying it
    import django
    from django.apps import apps
    from django.test import Client

    assert not apps.ready, "Django was set up before this test: its client would be another deployment's"
    django.setup()  # JobsConfig.ready() makes the client from the environment above
    client = Client()
    try:
        accepted = client.post("/signups", data=json.dumps(WELCOME), content_type="application/json")
        assert accepted.status_code == 202, accepted.content
        job = ductape.job.get(accepted.json()["job_id"])
        assert (
            job.status == JobStatus.QUEUED
            and job.spec.input == WELCOME
            and job.spec.event == "send_welcome_email"
        )
        assert ductape.job.runs(job.job_id)[0].run_id == job.last_run_id  # handed to Celery at once

        # Refused requests are 400s naming what was wrong, and write nothing.
        before = len(ductape.job.list())
        refused = client.post("/signups", data="[1, 2]", content_type="application/json")
        assert refused.status_code == 400 and "input" in refused.json()["error"]
        assert client.post("/signups", data="not json", content_type="application/json").status_code == 400
        assert len(ductape.job.list()) == before
        assert client.get("/signups").status_code == 405
    finally:
        apps.get_app_config("jobs").ductape.close()
