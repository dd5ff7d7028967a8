"""Redis URLs are shown with every password masked: user info, query parameters, raw and decoded."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductape_jobs.cli.doctor import FAIL, Finding, render
from ductape_jobs.cli.output import redact
from ductape_jobs.errors import JobValidationError
from ductape_jobs.settings import Settings
from ductape_jobs.urls import broker_url, mask_url, url_secrets

PW = "Hunter2-s3cret"

# Every way redis-py takes a password (and kombu, for the user info), with what must be shown.
FORMS = [
    (f"redis://:{PW}@h:6379/0", "redis://:***@h:6379/0"),
    (f"redis://default:{PW}@h:6379/0", "redis://default:***@h:6379/0"),
    (
        f"rediss://default:{PW}@h:6380/0?ssl_cert_reqs=none",
        "rediss://default:***@h:6380/0?ssl_cert_reqs=none",
    ),
    (f"redis://h:6379/0?password={PW}", "redis://h:6379/0?password=***"),
    (f"redis://h:6379/0?db=2&password={PW}&x=1", "redis://h:6379/0?db=2&password=***&x=1"),
    (f"redis://h/0?sentinel_password={PW}", "redis://h/0?sentinel_password=***"),
    (f"rediss://h/0?ssl_password={PW};Password={PW}", "rediss://h/0?ssl_password=***;Password=***"),
    (f"unix:///run/redis.sock?db=1&password={PW}", "unix:///run/redis.sock?db=1&password=***"),
    (f"redis://u:{PW}@h/0?password={PW}", "redis://u:***@h/0?password=***"),
    # unencoded '@', '/', '?' in a password: redis-py misreads the URL, but it is still masked
    (f"redis://:{PW}@x/y?z@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://user@h:6379/0?db=1", "redis://user@h:6379/0?db=1"),
]


@pytest.mark.parametrize(("url", "masked"), FORMS)
def test_every_password_form_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(f"cannot reach {url} within 3 s") == f"cannot reach {masked} within 3 s"


def test_percent_encoded_passwords_are_found_in_both_forms() -> None:
    url = "redis://:p%40ss%2Fw0rd@h/0?sentinel_password=s%26x"
    assert {"p%40ss%2Fw0rd", "p@ss/w0rd", "s%26x", "s&x"} <= set(url_secrets(url))
    text = f"auth failed for p@ss/w0rd and s&x at {url}"
    assert (
        redact(text, url_secrets(url))
        == "auth failed for *** and *** at redis://:***@h/0?sentinel_password=***"
    )


# Characters a URL carries unencoded in a password; the "Zq" prefix occurs nowhere else in a URL.
password = (
    st.text(st.characters(blacklist_categories=("Cs", "Z", "Cc")), max_size=20)
    .filter(lambda p: not any(c in p for c in "@&;#'\"<>"))
    .map(lambda p: "Zq" + p)
)


@given(
    password, st.sampled_from(["redis", "rediss", "unix"]), st.sampled_from(["password", "sentinel_password"])
)
def test_no_password_survives_masking(pw: str, scheme: str, param: str) -> None:
    for url in (f"{scheme}://:{pw}@h/0", f"{scheme}://user:{pw}@h/0", f"{scheme}://h/0?db=1&{param}={pw}"):
        assert "Zq" not in mask_url(url), url
        assert pw in url_secrets(url)


@pytest.mark.parametrize("url", [url for url, _ in FORMS])
def test_settings_never_show_the_url_password(url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": url})
    assert settings.url == url
    for text in (
        repr(settings),
        str(settings),
        str(dataclasses.asdict(settings)),
        repr(dataclasses.asdict(settings)),
    ):
        assert PW not in text
    with pytest.raises(JobValidationError) as refused:
        Settings.from_env({"REDIS_URL": url, "DUCTAPE_KEY_PREFIX": "bad prefix"})
    assert PW not in str(refused.value)


@pytest.mark.parametrize(("url", "masked"), FORMS)
def test_the_doctor_report_shows_the_url_masked(url: str, masked: str) -> None:
    settings = Settings.from_env({"REDIS_URL": url})
    report = render([Finding("redis", FAIL, f"cannot reach {mask_url(url)}", "start Redis")], settings)
    assert PW not in report and f"doctor: {masked}," in report


@pytest.mark.parametrize(
    ("url", "for_kombu"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        (f"redis://h:6379/0?password={PW}", f"redis://:{PW}@h:6379/0"),
        (f"redis://h/2?db=2&password={PW}&x=1", f"redis://:{PW}@h/2?db=2&x=1"),
        (f"rediss://h/0?username=app&password={PW}", f"rediss://app:{PW}@h/0"),
        # redis-py prefers the user info's password; so does the URL kombu gets
        (f"redis://u:{PW}@h/0?password=other", f"redis://u:{PW}@h/0"),
        ("redis://h/0?password=p%40ss%2Fw", "redis://:p%40ss%2Fw@h/0"),
        ("unix:///run/redis.sock?password=x", "unix:///run/redis.sock?password=x"),
    ],
)
def test_a_query_password_moves_into_the_user_info_for_kombu(url: str, for_kombu: str) -> None:
    assert broker_url(url) == for_kombu


def test_kombu_reads_the_password_it_would_refuse_in_the_query() -> None:
    from kombu.utils.url import parse_url

    with pytest.raises(TypeError, match="password"):
        parse_url(f"redis://h:6379/0?password={PW}")  # what broke every worker and beat
    parsed = parse_url(broker_url(f"redis://h:6379/0?password={PW}&db=0"))
    assert (parsed["password"], parsed["hostname"], parsed["port"]) == (PW, "h", 6379)
