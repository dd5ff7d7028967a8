"""Flower's Broker page picks its Redis client by the scheme of the workers app's broker URI: ours
name kombu's scheme in Flower's process, so Flower builds the client it has for it (no I/O: the
clients connect on first use). tests/e2e/test_flower.py reads real queues through it."""

from __future__ import annotations

import pytest
from flower.utils.broker import Broker, Redis, RedisSentinel, RedisSsl
from kombu import Connection

from ductape_jobs.flower_guard import name_broker_scheme
from ductape_jobs.settings import Settings
from workers.factory import create_app

PW, SPW = "Hunter2-s3cret", "Sentinel-s3cret"
SENTINELS = f"sentinel://:{PW}@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2"


@pytest.fixture(autouse=True)
def own_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu's alias table as it was before the test (name_broker_scheme adds to it)."""
    monkeypatch.setattr(Connection, "resolve_aliases", dict(Connection.resolve_aliases))


@pytest.mark.parametrize(
    ("environ", "scheme", "flower_class", "shown"),
    [
        (
            {"REDIS_URL": f"redis://app:{PW}@10.0.0.1:6379/3"},
            "redis",
            Redis,
            "redis://app:**@10.0.0.1:6379/3",
        ),
        (
            {"REDIS_URL": SENTINELS, "DUCTAPE_SENTINEL_MASTER": "mymaster", "DUCTAPE_SENTINEL_PASSWORD": SPW},
            "sentinel",
            RedisSentinel,
            "sentinel://:**@10.0.0.1:26379/2",
        ),
        # kombu's own transport (its TLS defaults): Flower already knows its scheme.
        ({"REDIS_URL": f"rediss://:{PW}@10.0.0.1:6380/0"}, None, RedisSsl, "rediss://:**@10.0.0.1:6380/0"),
    ],
)
def test_flower_builds_its_redis_client_for_the_workers_broker(
    environ: dict[str, str], scheme: str | None, flower_class: type, shown: str
) -> None:
    settings = Settings.from_env({**environ, "DUCTAPE_KEY_PREFIX": "p"}, require_handler=False)
    app = create_app(settings)
    assert name_broker_scheme(app) == scheme
    with app.connection() as conn:
        assert conn.as_uri() == shown  # what the Broker page shows
        broker = Broker(
            conn.as_uri(include_password=True),
            broker_options=app.conf.broker_transport_options,
            broker_use_ssl=app.conf.broker_use_ssl,
        )
    assert type(broker) is flower_class
    assert (broker.broker_prefix, broker.password) == ("p:broker:", PW)  # type: ignore[attr-defined]
    if flower_class is RedisSentinel:
        assert broker.master_name == "mymaster"  # type: ignore[attr-defined]


def test_without_the_names_flower_refuses_our_transport() -> None:
    # What Flower answered 404 "broker is not supported" for: the class path in the scheme.
    app = create_app(Settings.from_env({"REDIS_URL": "redis://10.0.0.1:6379/0"}, require_handler=False))
    with app.connection() as conn, pytest.raises(NotImplementedError):
        Broker(conn.as_uri(include_password=True), broker_options=app.conf.broker_transport_options)
