"""A Sentinel deployment's configuration: kombu's URL form or settings, read once, never shown
with a password, and written back as kombu's sentinel transport reads it."""

from __future__ import annotations

import dataclasses

import pytest
from kombu import Connection

from beat.imported import _same_redis
from ductape_jobs.celery_app import create_app
from ductape_jobs.cli.main import _secrets
from ductape_jobs.errors import JobValidationError, NotReplicatedError
from ductape_jobs.ops import REPLICATED, SCRIPT_NAMES, Eval, Replicas
from ductape_jobs.settings import Settings
from ductape_jobs.urls import SentinelTarget, kombu_sentinel, mask_url, sentinel_target, url_secrets
from workers.factory import create_app as create_worker_app

PW = "Hunter2-s3cret"
SPW = "Sentinel-s3cret"
URL = f"sentinel://:{PW}@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;sentinel://[::1]/2"


def test_kombus_url_form_names_every_sentinel_the_master_and_the_login() -> None:
    target = sentinel_target(URL, master="mymaster", sentinel_password=SPW)
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379)),
        master="mymaster",
        db=2,
        username=None,
        password=PW,
        sentinel_password=SPW,
    )
    assert PW not in repr(target) and SPW not in repr(target)


def test_the_master_and_the_sentinels_password_may_ride_in_the_query() -> None:
    target = sentinel_target(f"sentinel://app:{PW}@h1;sentinel://h2?master_name=m&sentinel_password={SPW}")
    assert target is not None
    assert (target.master, target.username, target.password, target.sentinel_password) == (
        "m",
        "app",
        PW,
        SPW,
    )
    assert target.sentinels == (("h1", 26379), ("h2", 26379))


def test_settings_name_the_sentinels_and_redis_url_gives_the_password_and_database() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": f"redis://:{PW}@ignored:6379/3",
            "DUCTAPE_SENTINELS": "s1:26379, s2:26380",
            "DUCTAPE_SENTINEL_MASTER": "mymaster",
            "DUCTAPE_SENTINEL_PASSWORD": SPW,
        }
    )
    target = settings.sentinel_target()
    assert target is not None
    assert (target.sentinels, target.db, target.password) == ((("s1", 26379), ("s2", 26380)), 3, PW)
    assert target.sentinel_password == SPW
    for text in (
        repr(settings),
        str(settings),
        str(dataclasses.asdict(settings)),
        repr(dataclasses.asdict(settings)),
    ):
        assert PW not in text and SPW not in text
    assert {PW, SPW} <= set(settings.secrets())


def test_a_plain_url_is_no_sentinel_deployment() -> None:
    assert Settings.from_env({"REDIS_URL": f"redis://:{PW}@h/0"}).sentinel_target() is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REDIS_URL": URL}, "DUCTAPE_SENTINEL_MASTER"),
        ({"REDIS_URL": "redis://h/0", "DUCTAPE_SENTINELS": "s1:26379"}, "DUCTAPE_SENTINEL_MASTER"),
        ({"REDIS_URL": f"sentinel://:{PW}@h:port", "DUCTAPE_SENTINEL_MASTER": "m"}, "host:port"),
        (
            {"REDIS_URL": "redis://h/0", "DUCTAPE_SENTINELS": "s1:x", "DUCTAPE_SENTINEL_MASTER": "m"},
            "host:port",
        ),
    ],
)
def test_an_incomplete_sentinel_configuration_fails_at_start_naming_the_fix(
    env: dict[str, str], says: str
) -> None:
    with pytest.raises(JobValidationError) as refused:
        Settings.from_env({**env, "DUCTAPE_SENTINEL_PASSWORD": SPW})
    assert says in str(refused.value)
    assert PW not in str(refused.value) and SPW not in str(refused.value)


def test_a_bad_sentinel_password_setting_is_not_shown() -> None:
    with pytest.raises(JobValidationError) as refused:
        Settings.from_env({"DUCTAPE_SENTINEL_PASSWORD": SPW, "DUCTAPE_WAIT_REPLICAS": "-1"})
    assert SPW not in str(refused.value) and "DUCTAPE_WAIT_REPLICAS" in str(refused.value)


def test_every_password_of_a_sentinel_url_is_masked_and_every_host_still_shown() -> None:
    url = f"sentinel://:{PW}@h1:26379/0;sentinel://u:{PW}@h2:26379/0?sentinel_password={SPW}"
    masked = mask_url(f"cannot reach {url} now")
    assert (
        masked
        == "cannot reach sentinel://:***@h1:26379/0;sentinel://u:***@h2:26379/0?sentinel_password=*** now"
    )
    assert {PW, SPW} <= set(url_secrets(url))


def test_a_semicolon_in_a_password_does_not_split_the_url() -> None:
    assert mask_url("redis://:a;b@h/0") == "redis://:***@h/0"


def test_kombu_reads_back_the_sentinels_the_master_and_the_password() -> None:
    target = sentinel_target(URL, master="mymaster", sentinel_password=SPW)
    assert target is not None
    url, options = kombu_sentinel(target)
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"password": SPW}}
    connection = Connection(url, transport_options=options)
    assert connection.transport_cls == "sentinel"
    assert (connection.hostname, connection.port, connection.password) == ("10.0.0.1", 26379, PW)
    assert [Connection(alt).hostname for alt in connection.alt] == ["10.0.0.1", "10.0.0.2", "::1"]
    assert connection.virtual_host == "2"


def test_the_celery_apps_take_the_sentinel_transport_with_its_options() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": URL, "DUCTAPE_SENTINEL_MASTER": "mymaster", "DUCTAPE_SENTINEL_PASSWORD": SPW},
        require_handler=False,
    )
    app = create_app(settings)
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "password": SPW,
    }
    assert app.conf.broker_url.startswith(f"sentinel://:{PW}@10.0.0.1:26379/2;sentinel://10.0.0.2")
    worker = create_worker_app(settings)
    assert worker.conf.broker_transport == "ductape_jobs.transport:SentinelTransport"
    assert _same_redis(app.conf.broker_url, settings, "mymaster")
    assert not _same_redis(app.conf.broker_url, settings, "other")
    assert not _same_redis("redis://10.0.0.1:26379/2", settings)


def test_the_cli_hides_the_sentinels_password_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", URL)
    monkeypatch.setenv("DUCTAPE_SENTINEL_PASSWORD", SPW)
    assert {PW, SPW} <= set(_secrets([]))


def test_the_writes_waited_on_are_scripts_and_only_they_wait() -> None:
    assert set(SCRIPT_NAMES) >= REPLICATED
    replicas = Replicas(1, 500)
    assert replicas.needed([Eval("CREATE_JOBS", [], [])])
    assert not replicas.needed([Eval("RENEW_LOCK", [], []), Eval("READ_DUE", [], [])])
    replicas.check(1, [Eval("CREATE_JOBS", [], [])])
    with pytest.raises(
        NotReplicatedError, match=r"CREATE_JOBS reached the primary but only 0 of 1"
    ) as refused:
        replicas.check(0, [Eval("CREATE_JOBS", [], [])])
    assert isinstance(refused.value, ConnectionError)  # a BackendUnavailableError: callers retry it
    assert Replicas.of(Settings()) is None
    assert Replicas.of(Settings(wait_replicas=2, wait_timeout_ms=250)) == Replicas(2, 250)
