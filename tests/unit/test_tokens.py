"""Unit tests for strict session tokens and key rings: what verify() refuses, and rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import traceback
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from ductape_jobs.errors import RetiredKeyError, SessionError
from ductape_jobs.keyring import KeyRing, key_id
from ductape_jobs.models import JobRequest
from ductape_jobs.planning import plan_job
from ductape_jobs.sessions import (
    LEEWAY_S,
    MAX_TOKEN_CHARS,
    Sessions,
    SessionType,
    seal,
    session_types_from_config,
)
from ductape_jobs.settings import Settings

OLD = "old-secret-0123456789abcdefghijklmnopqrs"
NEW = "new-secret-0123456789abcdefghijklmnopqrs"
OTHER = "other-secret-0123456789abcdefghijklmnopq"
NOW = 1_700_000_000.0
EXPIRY = 600
TAG = "user-session"


def ring_of(*secrets: str, expiry_s: int = EXPIRY) -> Sessions:
    """Sessions with one type, TAG, whose key ring is ``secrets`` (newest first)."""
    return Sessions(session_types_from_config({TAG: {"secrets": list(secrets), "expiry_s": expiry_s}}))


def signed(claims: dict[str, Any], secret: str = OLD, **header: Any) -> str:
    """A "<tag>:<jwt>" token with exactly these claims."""
    return f"{TAG}:" + jwt.encode(claims, secret, algorithm="HS256", headers=header or None)


def hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: str = OLD) -> str:
    """A token with a header PyJWT would not write."""

    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    signing_input = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{TAG}:{signing_input}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def valid(**changes: Any) -> dict[str, Any]:
    """The claims start() would write at NOW, with ``changes`` (None removes a claim)."""
    claims = {"tag": TAG, "data": {"email": "ada@example.com"}, "iat": int(NOW), "exp": int(NOW) + EXPIRY}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def everything_shown(exc: BaseException) -> str:
    """str, repr and the formatted traceback with its chain: all an error can show."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


# Each case: a token maker, then the field and a fragment the refusal must carry.
REFUSED: dict[str, tuple[Callable[[], str], str, str]] = {
    "no tag claim": (lambda: signed(valid(tag=None)), "session.tag", "tag claim is missing"),
    "tag claim of another type": (lambda: signed(valid(tag="admin-session")), "session.tag", "not issued"),
    "tag claim not a string": (lambda: signed(valid(tag=1)), "session.tag", "not issued"),
    "bare jwt without tag": (lambda: signed(valid(tag=None)).split(":", 1)[1], "session.tag", "missing"),
    "no exp": (lambda: signed(valid(exp=None)), "session.token", "no expiry"),
    "exp NaN": (lambda: signed(valid(exp=float("nan"))), "session.token", "not a finite number"),
    "exp Infinity": (lambda: signed(valid(exp=float("inf"))), "session.token", "not a finite number"),
    "exp -Infinity": (lambda: signed(valid(exp=float("-inf"))), "session.token", "not a finite number"),
    "exp 1e308": (lambda: signed(valid(exp=1e308)), "session.token", "further ahead"),
    "exp past the type's expiry": (
        lambda: signed(valid(exp=int(NOW) + EXPIRY + LEEWAY_S + 1)),
        "session.token",
        "further ahead",
    ),
    "exp a string": (lambda: signed(valid(exp="tomorrow")), "session.token", "not a finite number"),
    "exp a boolean": (lambda: signed(valid(exp=True)), "session.token", "not a finite number"),
    "exp passed": (lambda: signed(valid(exp=int(NOW))), "session.token", "expired"),
    "nbf ahead": (lambda: signed(valid(nbf=NOW + LEEWAY_S + 1)), "session.token", "not valid for another"),
    "nbf NaN": (lambda: signed(valid(nbf=float("nan"))), "session.token", "not a finite number"),
    "nbf null": (lambda: signed(valid(nbf=None) | {"nbf": None}), "session.token", "not a finite number"),
    "iat in the future": (lambda: signed(valid(iat=NOW + LEEWAY_S + 1)), "session.token", "in the future"),
    "iat a string": (lambda: signed(valid(iat="now")), "session.token", "not a finite number"),
    "oversize": (lambda: signed(valid(data={"x": "y" * MAX_TOKEN_CHARS})), "session.token", "longer than"),
    "not ASCII": (lambda: signed(valid()) + "é", "session.token", "malformed"),
    "kid of a removed key": (lambda: signed(valid(), OTHER, kid=key_id(OTHER)), "session.token", "key ring"),
    "kid not a string": (
        lambda: hand_signed({"alg": "HS256", "kid": 12}, valid()),
        "session.token",
        "malformed",
    ),
    "no kid, unknown key": (lambda: signed(valid(), OTHER), "session.token", "signature does not match"),
    "alg none": (
        lambda: f"{TAG}:" + jwt.encode(valid(), None, algorithm="none"),
        "session.token",
        "malformed",
    ),
    "HS512": (
        lambda: f"{TAG}:" + jwt.encode(valid(), OLD * 2, algorithm="HS512"),
        "session.token",
        "malformed",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_are_session_errors_without_the_token(case: str) -> None:
    make, field, fragment = REFUSED[case]
    token = make()
    with pytest.raises(SessionError) as excinfo:
        ring_of(OLD).verify(TAG, token, now_s=NOW)
    err = excinfo.value
    assert type(err) is SessionError and err.field == field and fragment in str(err), str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    shown = everything_shown(err)
    body = token.rpartition(":")[2]
    for part in (token, body, *body.split(".")[1:], OLD):
        assert not part or part not in shown


ACCEPTED = {
    "as start() issues it": valid(),
    "exp at the type's expiry plus leeway": valid(exp=int(NOW) + EXPIRY + LEEWAY_S),
    "exp a float": valid(exp=NOW + 1.5),
    "nbf within the leeway": valid(nbf=NOW + LEEWAY_S),
    "iat within the leeway": valid(iat=NOW + LEEWAY_S),
    "no iat": valid(iat=None),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_claims(case: str) -> None:
    assert ring_of(OLD).verify(TAG, signed(ACCEPTED[case]), now_s=NOW) == {"email": "ada@example.com"}


def test_an_oversize_token_is_refused_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("the token was decoded")

    for name in ("decode", "get_unverified_header"):
        monkeypatch.setattr(jwt, name, never)
    huge = "x." * (25 * 1024 * 1024)  # 50 MB
    with pytest.raises(SessionError, match="longer than 8192 characters"):
        ring_of(OLD).verify(TAG, huge, now_s=NOW)
    with pytest.raises(AssertionError, match="decoded"):  # one character less does reach decoding
        ring_of(OLD).verify(TAG, "x" * MAX_TOKEN_CHARS, now_s=NOW)


def test_start_refuses_an_expiry_longer_than_the_types() -> None:
    sessions = ring_of(OLD)
    with pytest.raises(SessionError) as excinfo:
        sessions.start(TAG, {"a": 1}, expiry=EXPIRY + 1, now_s=NOW)
    assert excinfo.value.field == "session.expiry" and f"allows ({EXPIRY}s)" in str(excinfo.value)
    token = sessions.start(TAG, {"a": 1}, expiry=EXPIRY, now_s=NOW)
    assert sessions.verify(TAG, token, now_s=NOW + EXPIRY - 1) == {"a": 1}


@pytest.mark.parametrize(
    "secret",
    [
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx\n-----END RSA PRIVATE KEY-----",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host",
    ],
)
def test_a_pem_or_ssh_looking_secret_is_our_error(secret: str) -> None:
    for config in ({"secret": secret}, {"secrets": [NEW, secret]}):
        with pytest.raises(SessionError) as excinfo:
            session_types_from_config({TAG: config})
        assert "PEM or SSH key" in str(excinfo.value) and secret not in everything_shown(excinfo.value)


def test_a_pyjwt_error_while_signing_is_our_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> str:
        raise jwt.InvalidKeyError(f"bad key {OLD}")

    monkeypatch.setattr(jwt, "encode", refuse)
    with pytest.raises(SessionError) as excinfo:
        ring_of(OLD).start(TAG, {"a": 1}, now_s=NOW)
    assert OLD not in everything_shown(excinfo.value)


# --- key rings --------------------------------------------------------------------------


def test_config_takes_a_ring_or_one_secret() -> None:
    one = session_types_from_config({TAG: {"secret": OLD}})[TAG]
    assert one.secrets == (OLD,) and one.secret == OLD
    assert one == SessionType(TAG, OLD) == SessionType(TAG, secrets=(OLD,))
    ring = session_types_from_config({TAG: {"secrets": [NEW, OLD], "expiry_s": 60}})[TAG]
    assert ring.secrets == (NEW, OLD) and ring.secret == NEW and ring.expiry_s == 60
    assert OLD not in repr(ring) and NEW not in repr(ring)


@pytest.mark.parametrize(
    ("config", "field", "fragment"),
    [
        ({"secret": OLD, "secrets": [NEW, OLD]}, f"sessions.{TAG}", "not both"),
        ({"secrets": []}, f"sessions.{TAG}.secret", "no secret"),
        ({"secrets": NEW}, f"sessions.{TAG}.secrets", "a list"),
        ({"secrets": [NEW, 12345]}, f"sessions.{TAG}.secrets[1]", "must be a string"),
        ({"secrets": [NEW, OLD[:20]]}, f"sessions.{TAG}.secrets[1]", "20 bytes"),
        ({"secrets": [NEW, NEW]}, f"sessions.{TAG}.secrets", "same secret twice"),
        ({"secret": 12345}, f"sessions.{TAG}.secret", "must be a string"),
    ],
)
def test_bad_rings_are_refused_without_echoing_secrets(
    config: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(SessionError) as excinfo:
        session_types_from_config({TAG: config})
    assert excinfo.value.field == field and fragment in str(excinfo.value), str(excinfo.value)
    assert NEW not in str(excinfo.value) and OLD[:20] not in str(excinfo.value)


def test_new_tokens_use_the_newest_key_and_any_key_verifies() -> None:
    before = ring_of(OLD).start(TAG, {"a": 1}, now_s=NOW)
    during, after = ring_of(NEW, OLD), ring_of(NEW)
    rotated = during.start(TAG, {"a": 2}, now_s=NOW)
    assert jwt.get_unverified_header(rotated.split(":", 1)[1])["kid"] == key_id(NEW)
    assert during.verify(TAG, before, now_s=NOW) == {"a": 1}  # old tokens keep working
    assert during.verify(TAG, rotated, now_s=NOW) == after.verify(TAG, rotated, now_s=NOW) == {"a": 2}
    with pytest.raises(SessionError, match="not in the key ring"):
        after.verify(TAG, before, now_s=NOW)  # once the old key is gone, so are its tokens
    with pytest.raises(SessionError, match="not in the key ring"):
        ring_of(OLD).verify(TAG, rotated, now_s=NOW)  # a process without the new key yet


def test_tokens_without_a_key_id_verify_under_any_key_of_the_ring() -> None:
    legacy = signed(valid())  # as issued before key rings: no kid header
    assert ring_of(NEW, OLD).verify(TAG, legacy, now_s=NOW) == {"email": "ada@example.com"}
    with pytest.raises(SessionError, match="signature does not match"):
        ring_of(NEW).verify(TAG, legacy, now_s=NOW)


def test_seals_name_their_key_and_open_under_any_key_of_the_ring() -> None:
    old_seal = KeyRing(TAG, (OLD,)).seal({"email": "ada@example.com"})
    new_seal = KeyRing(TAG, (NEW, OLD)).seal({"email": "bob@example.com"})
    assert old_seal.startswith(key_id(OLD) + ":") and new_seal.startswith(key_id(NEW) + ":")
    assert KeyRing(TAG, (NEW, OLD)).open(old_seal) == {"email": "ada@example.com"}
    assert KeyRing(TAG, (NEW,)).open(new_seal) == {"email": "bob@example.com"}
    assert KeyRing(TAG, (NEW, OLD)).open(seal([1], OLD)) == [1]  # a seal from before key rings
    with pytest.raises(RetiredKeyError) as excinfo:
        KeyRing(TAG, (NEW,)).open(old_seal)
    text = everything_shown(excinfo.value)
    assert key_id(OLD) in text and TAG in text and "put that secret back" in text
    assert OLD not in text and NEW not in text and "ada" not in text
    with pytest.raises(SessionError, match="wrong secret, or it was altered"):
        KeyRing(TAG, (NEW, OLD)).open(old_seal[:-6] + "AAAAAA")


def test_key_ids_are_short_stable_and_not_the_secret() -> None:
    assert key_id(OLD) == key_id(OLD) != key_id(NEW)
    assert len(key_id(OLD)) == 12 and key_id(OLD) not in OLD


def test_the_input_digest_survives_rotation_as_a_twin() -> None:
    settings = Settings(require_handler=False)

    def plan(sessions: Sessions) -> Any:
        token = sessions.start(TAG, {"email": "ada@example.com"}, now_s=NOW)
        request = JobRequest.model_validate(
            {"env": "dev", "product_tag": "p", "event": "e", "input": {"to": "$Session{email}"},
             "repeat": {"every": 60_000}, "session": {"tag": TAG, "token": token}}
        )  # fmt: skip
        return plan_job(request, settings, sessions, int(NOW * 1000), "job1")

    before, during = plan(ring_of(OLD)), plan(ring_of(NEW, OLD))
    # Unchanged for a deployment that never rotates: the HMAC of the input under its one secret.
    canonical = json.dumps({"to": "ada@example.com"}, sort_keys=True, separators=(",", ":"))
    assert before.spec.input_digest == hmac.new(OLD.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert before.older_digests == ()
    # After the rotation the digest is under the new key, and the old one is offered as a twin.
    assert during.spec.input_digest != before.spec.input_digest
    assert during.older_digests == (before.spec.input_digest,)
