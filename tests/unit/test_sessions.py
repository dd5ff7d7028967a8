"""Unit tests for session tokens, $Session{...} placeholders, redaction and sealing."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from typing import Any

import jwt
import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from ductape_jobs.errors import SessionError
from ductape_jobs.runner import cache_digest
from ductape_jobs.sealed import Vault, seal_input
from ductape_jobs.sessions import (
    Resolution,
    Sessions,
    SessionType,
    has_placeholders,
    redact,
    resolve_placeholders,
    seal,
    session_types_from_config,
    unseal,
)
from ductape_jobs.terms import JobSpec

USER_SECRET = "user-secret-0123456789abcdefghijklmnop"
ADMIN_SECRET = "admin-secret-0123456789abcdefghijklmno"
NOW = 1_700_000_000.0
DATA: dict[str, Any] = {
    "user": {
        "id": 42,
        "email": "alice@example.com",
        "emails": ["alice@example.com", "a@work.example"],
        "admin": False,
        "manager": None,
        "score": 9.5,
        "prefs": {"lang": "en", "tags": ["a", "b"]},
    },
    "orgs": [{"name": "acme", "seats": [1, 2, 3]}],
    "plain": "hello",
    "0": "zero key",
}


@pytest.fixture
def sessions() -> Sessions:
    return Sessions(
        session_types_from_config(
            {
                "user-session": {"secret": USER_SECRET, "expiry_s": 600},
                "admin-session": {"secret": ADMIN_SECRET},
            }
        )
    )


@pytest.fixture
def token(sessions: Sessions) -> str:
    return sessions.start("user-session", DATA, now_s=NOW)


def _error(excinfo: pytest.ExceptionInfo[SessionError], *hidden: str) -> str:
    text = str(excinfo.value)
    for secret in hidden:
        assert secret not in text
    return text


def _b64(obj: object) -> str:
    raw = json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- tokens -------------------------------------------------------------------------


def test_start_verify_round_trip(sessions: Sessions, token: str) -> None:
    assert token.startswith("user-session:")
    assert sessions.verify("user-session", token, now_s=NOW + 1) == DATA


def test_token_carries_data_exp_and_iat(token: str) -> None:
    claims = jwt.decode(
        token.split(":", 1)[1],
        USER_SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False},
    )
    assert claims["data"] == DATA
    assert claims["iat"] == int(NOW)
    assert claims["exp"] == int(NOW) + 600
    assert jwt.get_unverified_header(token.split(":", 1)[1])["alg"] == "HS256"


def test_bare_jwt_is_accepted(sessions: Sessions, token: str) -> None:
    bare = token.split(":", 1)[1]
    assert sessions.verify("user-session", bare, now_s=NOW) == DATA


def test_default_expiry_is_the_types(sessions: Sessions) -> None:
    admin = sessions.start("admin-session", {"a": 1}, now_s=NOW)
    assert sessions.verify("admin-session", admin, now_s=NOW + 3599) == {"a": 1}
    with pytest.raises(SessionError):
        sessions.verify("admin-session", admin, now_s=NOW + 3600)


def test_explicit_expiry_overrides_the_default(sessions: Sessions) -> None:
    short = sessions.start("user-session", {"a": 1}, expiry_s=5, now_s=NOW)
    assert sessions.verify("user-session", short, now_s=NOW + 4) == {"a": 1}
    with pytest.raises(SessionError):
        sessions.verify("user-session", short, now_s=NOW + 5)


def test_expiry_is_the_public_name_and_expiry_s_still_works(sessions: Sessions) -> None:
    for token in (
        sessions.start("user-session", {"a": 1}, expiry=5, now_s=NOW),
        sessions.start("user-session", {"a": 1}, 5, now_s=NOW),
        sessions.start("user-session", {"a": 1}, expiry_s=5, now_s=NOW),
    ):
        assert jwt.decode(token.split(":", 1)[1], options={"verify_signature": False})["exp"] == NOW + 5
    with pytest.raises(SessionError) as excinfo:
        sessions.start("user-session", {"a": 1}, expiry=5, expiry_s=6)
    assert excinfo.value.field == "session.expiry" and "not both" in str(excinfo.value)


def test_expired_token(sessions: Sessions, token: str) -> None:
    with pytest.raises(SessionError) as excinfo:
        sessions.verify("user-session", token, now_s=NOW + 601)
    assert "expired" in _error(excinfo, token, token.split(":", 1)[1], USER_SECRET)
    assert excinfo.value.field == "session.token"


def test_tampered_payload(sessions: Sessions, token: str) -> None:
    header, _payload, signature = token.split(":", 1)[1].split(".")
    forged_data = {**DATA, "user": {**DATA["user"], "admin": True}}
    forged_claims = {"data": forged_data, "iat": int(NOW), "exp": int(NOW) + 600}
    forged = f"user-session:{header}.{_b64(forged_claims)}.{signature}"
    with pytest.raises(SessionError) as excinfo:
        sessions.verify("user-session", forged, now_s=NOW)
    assert "signature" in _error(excinfo, forged, token, USER_SECRET)
    assert excinfo.value.field == "session.token"


def test_tampered_signature(sessions: Sessions, token: str) -> None:
    header, payload, _signature = token.split(":", 1)[1].split(".")
    other = sessions.start("user-session", {"x": 1}, now_s=NOW).rsplit(".", 1)[1]
    forged = f"user-session:{header}.{payload}.{other}"
    with pytest.raises(SessionError) as excinfo:
        sessions.verify("user-session", forged, now_s=NOW)
    assert "signature" in _error(excinfo, forged, USER_SECRET)


def test_wrong_secret(token: str) -> None:
    other = Sessions({"user-session": SessionType("user-session", "another-secret-" + "x" * 32)})
    with pytest.raises(SessionError) as excinfo:
        other.verify("user-session", token, now_s=NOW)
    assert "signature" in _error(excinfo, token, USER_SECRET)


def test_tag_mismatch(sessions: Sessions) -> None:
    admin = sessions.start("admin-session", {"role": "root"}, now_s=NOW)
    with pytest.raises(SessionError) as excinfo:
        sessions.verify("user-session", admin, now_s=NOW)
    text = _error(excinfo, admin, ADMIN_SECRET)
    assert excinfo.value.field == "session.tag"
    assert "admin-session" in text


def test_bare_token_of_another_type_sharing_a_secret_is_refused() -> None:
    # The prefix can be stripped; the signed tag claim still ties the token to its type.
    shared = Sessions(session_types_from_config({"a": {"secret": USER_SECRET}, "b": {"secret": USER_SECRET}}))
    bare = shared.start("a", {"x": 1}, now_s=NOW).split(":", 1)[1]
    assert shared.verify("a", bare, now_s=NOW) == {"x": 1}
    with pytest.raises(SessionError) as excinfo:
        shared.verify("b", bare, now_s=NOW)
    assert excinfo.value.field == "session.tag"
    _error(excinfo, bare)


def test_unknown_tag(sessions: Sessions, token: str) -> None:
    with pytest.raises(SessionError) as excinfo:
        sessions.verify("nope-session", token, now_s=NOW)
    assert "nope-session" in _error(excinfo, token)
    assert excinfo.value.field == "session.tag"
    with pytest.raises(SessionError):
        sessions.start("nope-session", {"a": 1})


def test_secret_for(sessions: Sessions) -> None:
    assert sessions.secret_for("user-session") == USER_SECRET
    assert sessions.secret_for("admin-session") == ADMIN_SECRET
    assert USER_SECRET not in repr(sessions)
    with pytest.raises(SessionError):
        sessions.secret_for("nope-session")


def test_token_passed_as_tag_is_not_echoed(sessions: Sessions, token: str) -> None:
    with pytest.raises(SessionError) as excinfo:
        sessions.verify(token, "user-session", now_s=NOW)
    _error(excinfo, token, token.split(":", 1)[1])


def _signed(claims: dict[str, Any], secret: str = USER_SECRET) -> str:
    return jwt.encode({"tag": "user-session", **claims}, secret, algorithm="HS256")


_SOON = int(NOW) + 60


@pytest.mark.parametrize(
    "bad",
    [
        "user-session:not-a-jwt-at-all-xyz",
        "not-a-jwt-at-all-without-a-prefix",
        "user-session:aaaaaaaa.bbbbbbbb.cccccccc",
        "user-session:",
        "user-session:eyJhbGciOiJIUzI1NiJ9.%%%%%%%%%%%%.sig-sig-sig",
        "user-session:" + jwt.encode({"data": {}, "exp": _SOON}, "", algorithm="none"),
        "user-session:" + _signed({"data": {}, "exp": _SOON})[:-5],
        "user-session:" + _signed({"data": {"a": 1}}),
        "user-session:" + _signed({"data": ["not", "a", "dict"], "exp": _SOON}),
        "user-session:" + _signed({"exp": _SOON}),
        "user-session:" + _signed({"data": {}, "exp": "tomorrow"}),
        "user-session:" + jwt.encode({"data": {}, "exp": _SOON}, USER_SECRET * 2, algorithm="HS512"),
    ],
)
def test_malformed_tokens(sessions: Sessions, bad: str) -> None:
    with pytest.raises(SessionError) as excinfo:
        sessions.verify("user-session", bad, now_s=NOW)
    _error(excinfo, bad, USER_SECRET)
    assert excinfo.value.field == "session.token"


@pytest.mark.parametrize("bad", ["", None, 123, b"bytes-token"])
def test_non_string_or_empty_token(sessions: Sessions, bad: Any) -> None:
    with pytest.raises(SessionError):
        sessions.verify("user-session", bad, now_s=NOW)


@pytest.mark.parametrize(
    ("data", "expiry"),
    [
        ({"when": object()}, None),
        (["not", "a", "mapping"], None),
        ({"a": 1}, 0),
        ({"a": 1}, True),
    ],
)
def test_start_refuses_bad_data_or_expiry(sessions: Sessions, data: Any, expiry: Any) -> None:
    with pytest.raises(SessionError):
        sessions.start("user-session", data, expiry, now_s=NOW)


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@given(body=st.text(alphabet=_B64URL, min_size=16) | st.text(min_size=16))
def test_arbitrary_tokens_only_raise_session_error(body: str) -> None:
    checker = Sessions({"user-session": SessionType("user-session", USER_SECRET)})
    for candidate in (body, "user-session:" + body):
        with pytest.raises(SessionError) as excinfo:
            checker.verify("user-session", candidate, now_s=NOW)
        assert body not in str(excinfo.value)


# --- configuration ------------------------------------------------------------------


def test_config_builds_types_and_hides_secrets() -> None:
    types = session_types_from_config({"user-session": {"secret": USER_SECRET, "expiry_s": 60}})
    assert types == {"user-session": SessionType("user-session", USER_SECRET, 60)}
    assert USER_SECRET not in repr(types)
    assert session_types_from_config({"s": {"secret": USER_SECRET}})["s"].expiry_s == 3600


@pytest.mark.parametrize(
    "raw",
    [
        USER_SECRET,
        {"user-session": USER_SECRET},
        {"user-session": {}},
        {"user-session": {"secret": 12345}},
        {"user-session": {"secret": "short-" + USER_SECRET[:10]}},
        {"user-session": {"secret": USER_SECRET, "expiry_s": 0}},
        {"user-session": {"secret": USER_SECRET, "expiry_s": "60"}},
        {"user-session": {"secret": USER_SECRET, "expiry_s": True}},
        {"user-session": {"secret": USER_SECRET, "expires": 60}},
        {"": {"secret": USER_SECRET}},
    ],
)
def test_config_bad_shapes(raw: Any) -> None:
    with pytest.raises(SessionError) as excinfo:
        session_types_from_config(raw)
    text = _error(excinfo, USER_SECRET, USER_SECRET[:10])
    if isinstance(raw, dict) and "user-session" in raw:
        assert "user-session" in text


def test_sessions_refuse_mismatched_keys() -> None:
    with pytest.raises(SessionError):
        Sessions({"a": SessionType("b", USER_SECRET)})


# --- placeholders -------------------------------------------------------------------


def test_seed_example() -> None:
    value = {"userId": "$Session{user}{id}", "email": "$Session{user}{email}"}
    result = resolve_placeholders(value, DATA)
    assert result == Resolution(
        value={"userId": 42, "email": "alice@example.com"},
        session_paths=(("userId",), ("email",)),
    )


def test_seed_example_through_a_verified_token(sessions: Sessions, token: str) -> None:
    data = sessions.verify("user-session", token, now_s=NOW)
    assert resolve_placeholders({"to": "$Session{user}{emails}{1}"}, data).value == {"to": "a@work.example"}


@pytest.mark.parametrize(
    ("placeholder", "expected"),
    [
        ("$Session{user}{id}", 42),
        ("$Session{user}{score}", 9.5),
        ("$Session{user}{prefs}", {"lang": "en", "tags": ["a", "b"]}),
        ("$Session{user}{emails}", ["alice@example.com", "a@work.example"]),
        ("$Session{user}{manager}", None),
        ("$Session{user}{admin}", False),
        ("$Session{plain}", "hello"),
    ],
)
def test_whole_string_keeps_json_type(placeholder: str, expected: object) -> None:
    value = resolve_placeholders({"v": placeholder}, DATA).value["v"]
    assert value == expected
    assert type(value) is type(expected)


def test_whole_string_value_is_a_copy() -> None:
    data = copy.deepcopy(DATA)
    resolved = resolve_placeholders({"prefs": "$Session{user}{prefs}"}, data).value
    resolved["prefs"]["tags"].append("c")
    assert data == DATA


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id=$Session{user}{id}", "id=42"),
        ("$Session{plain}, world", "hello, world"),
        ("prefs: $Session{user}{prefs}", 'prefs: {"lang":"en","tags":["a","b"]}'),
        ("[$Session{user}{emails}]", '[["alice@example.com","a@work.example"]]'),
        ("m=$Session{user}{manager} a=$Session{user}{admin}", "m=null a=false"),
        ("$Session{user}{score}%", "9.5%"),
        ("$Session{user}{id}$Session{user}{id}", "4242"),
        (
            "$Session{user}{email} <$Session{user}{emails}{1}>",
            "alice@example.com <a@work.example>",
        ),
    ],
)
def test_embedded_placeholders_are_stringified(text: str, expected: str) -> None:
    result = resolve_placeholders({"msg": text}, DATA)
    assert result.value == {"msg": expected}
    assert result.session_paths == (("msg",),)


@pytest.mark.parametrize(
    ("placeholder", "expected"),
    [
        ("$Session{user}{emails}{0}", "alice@example.com"),
        ("$Session{orgs}{0}{name}", "acme"),
        ("$Session{orgs}{0}{seats}{2}", 3),
        ("$Session{user}{prefs}{tags}{1}", "b"),
        ("$Session{0}", "zero key"),
    ],
)
def test_path_steps_index_lists_and_key_dicts(placeholder: str, expected: object) -> None:
    assert resolve_placeholders({"v": placeholder}, DATA).value == {"v": expected}


def test_nested_input_and_session_paths() -> None:
    value = {
        "a": [{"b": "$Session{user}{id}"}, "plain", ["x", "n=$Session{orgs}{0}{name}"]],
        "c": {"d": {"e": "$Session{user}{emails}"}},
        "f": 7,
    }
    result = resolve_placeholders(value, DATA)
    assert result.value == {
        "a": [{"b": 42}, "plain", ["x", "n=acme"]],
        "c": {"d": {"e": ["alice@example.com", "a@work.example"]}},
        "f": 7,
    }
    assert result.session_paths == (("a", 0, "b"), ("a", 2, 1), ("c", "d", "e"))


@pytest.mark.parametrize(
    "text",
    [
        "$Secret{x}",
        "$Env{y}",
        "$Session",
        "cost: $Session dollars",
        "$Sessions{user}",
        "$session{user}",
        "$SESSION{user}",
        "Session{user}",
        "$Secret{x}{y} and $Env{HOME}",
    ],
)
def test_other_tokens_are_left_untouched(text: str) -> None:
    assert not has_placeholders({"v": text})
    assert resolve_placeholders({"v": text}, DATA) == Resolution({"v": text}, ())


def test_other_tokens_beside_a_session_placeholder() -> None:
    value = {"v": "$Secret{k}:$Session{user}{id}:$Env{e}"}
    assert resolve_placeholders(value, DATA).value == {"v": "$Secret{k}:42:$Env{e}"}


def test_keys_are_not_resolved() -> None:
    value = {"$Session{user}{id}": "v", "n": {"$Session{plain}": 1}}
    assert not has_placeholders(value)
    assert resolve_placeholders(value, DATA) == Resolution(value, ())


def test_session_values_are_not_resolved_again() -> None:
    data = {"a": "$Session{b}", "b": "secret-b"}
    assert resolve_placeholders({"v": "$Session{a}", "w": "x $Session{a}"}, data).value == {
        "v": "$Session{b}",
        "w": "x $Session{b}",
    }


@pytest.mark.parametrize(
    ("value", "field", "fragment"),
    [
        (
            {"userId": "$Session{user}{idd}"},
            "input.userId",
            "no key 'idd' under 'user'",
        ),
        (
            {"userId": "$Session{usr}{id}"},
            "input.userId",
            "no key 'usr' at the top level",
        ),
        (
            {"x": "$Session{user}{prefs}{font}"},
            "input.x",
            "no key 'font' under 'user.prefs'",
        ),
        ({"x": "$Session{user}{emails}{2}"}, "input.x", "no index 2"),
        ({"x": "$Session{user}{emails}{first}"}, "input.x", "'first' is not an index"),
        ({"x": "$Session{user}{emails}{-1}"}, "input.x", "'-1' is not an index"),
        (
            {"x": "$Session{user}{email}{0}"},
            "input.x",
            "under 'user.email' is a string",
        ),
        ({"x": "$Session{user}{id}{0}"}, "input.x", "is a number"),
        ({"x": "$Session{user}{manager}{name}"}, "input.x", "is null"),
        ({"x": "$Session{user}{admin}{a}"}, "input.x", "is a boolean"),
        (
            {"items": [1, {"id": "to $Session{nope}"}]},
            "input.items[1].id",
            "no key 'nope'",
        ),
    ],
)
def test_missing_paths(value: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(SessionError) as excinfo:
        resolve_placeholders(value, DATA)
    text = _error(excinfo, "alice@example.com", "42", "acme")
    assert excinfo.value.field == field
    assert fragment in text
    assert "placeholder $Session{" in text


def test_missing_path_message_matches_the_documented_form() -> None:
    with pytest.raises(SessionError) as excinfo:
        resolve_placeholders({"userId": "$Session{user}{idd}"}, DATA)
    assert str(excinfo.value) == (
        "input.userId: placeholder $Session{user}{idd} has no value: "
        "session data has no key 'idd' under 'user'"
    )


@pytest.mark.parametrize("text", ["$Session{user", "$Session{user}{id", "$Session{a{b}}", "x $Session{"])
def test_malformed_placeholders(text: str) -> None:
    assert has_placeholders({"v": text})
    with pytest.raises(SessionError) as excinfo:
        resolve_placeholders({"v": text}, DATA)
    assert excinfo.value.field == "input.v"


def test_non_json_session_value_cannot_be_embedded() -> None:
    with pytest.raises(SessionError):
        resolve_placeholders({"v": "x $Session{o}"}, {"o": object()})


def test_input_without_placeholders_is_returned_equal_as_a_copy() -> None:
    value = {"a": [1, {"b": "text"}], "c": None, "d": 1.5, "e": True}
    before = copy.deepcopy(value)
    result = resolve_placeholders(value, DATA)
    assert result == Resolution(before, ())
    assert result.value is not value
    result.value["a"].append(2)
    assert value == before


def test_callers_objects_are_not_mutated() -> None:
    value = {"a": ["$Session{user}{id}"], "b": {"c": "$Session{user}{prefs}"}}
    data = copy.deepcopy(DATA)
    value_before = copy.deepcopy(value)
    resolve_placeholders(value, data)
    assert value == value_before
    assert data == DATA


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$Session{a}", True),
        ({"a": {"b": ["x", "$Session{a}"]}}, True),
        ({"a": ["x", ("y", "pre $Session{z} post")]}, True),
        ({"a": 1, "b": None, "c": ["x"]}, False),
        ({"$Session{a}": "v"}, False),
        ("$Secret{a}", False),
        (42, False),
    ],
)
def test_has_placeholders(value: object, expected: bool) -> None:
    assert has_placeholders(value) is expected


# --- redact -------------------------------------------------------------------------


def test_redact_masks_session_paths_only() -> None:
    value = {
        "userId": "$Session{user}{id}",
        "greeting": "hi $Session{user}{email}",
        "list": ["keep", {"p": "$Session{user}{prefs}"}],
        "other": "visible",
    }
    result = resolve_placeholders(value, DATA)
    masked = redact(result.value, result.session_paths)
    assert masked == {
        "userId": "***",
        "greeting": "***",
        "list": ["keep", {"p": "***"}],
        "other": "visible",
    }
    dumped = json.dumps(masked)
    assert "alice@example.com" not in dumped and "42" not in dumped and "lang" not in dumped
    assert result.value["userId"] == 42  # the resolved value itself is untouched


def test_redact_custom_mask_missing_paths_and_copying() -> None:
    value = {"a": {"b": [1, 2]}, "c": "x"}
    masked = redact(
        value,
        [("a", "b", 1), ("nope",), ("a", "b", 9), ("c", "deeper"), ()],
        mask="<hidden>",
    )
    assert masked == {"a": {"b": [1, "<hidden>"]}, "c": "x"}
    assert value == {"a": {"b": [1, 2]}, "c": "x"}
    assert redact(value, []) == value
    assert redact(value, [("a",)]) == {"a": "***", "c": "x"}


# --- seal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        {"userId": 42, "email": "alice@example.com"},
        [1, "two", None, True, 2.5],
        "text",
        0,
        None,
    ],
)
def test_seal_round_trip(obj: object) -> None:
    sealed = seal(obj, USER_SECRET)
    assert isinstance(sealed, str)
    assert "alice" not in sealed
    assert unseal(sealed, USER_SECRET) == obj


def test_seal_key_is_hkdf_sha256_of_the_secret() -> None:
    # Pins the documented format so another reader of sealed values can derive the key.
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=b"ductape-jobs/seal/v1")
    fernet = Fernet(base64.urlsafe_b64encode(key.derive(USER_SECRET.encode())))
    sealed = seal({"a": [1, "é"]}, USER_SECRET)
    assert json.loads(fernet.decrypt(sealed)) == {"a": [1, "é"]}
    naive = Fernet(base64.urlsafe_b64encode(USER_SECRET.encode()[:32]))
    with pytest.raises(InvalidToken):
        naive.decrypt(sealed)


def test_unseal_with_wrong_secret() -> None:
    sealed = seal({"email": "alice@example.com"}, USER_SECRET)
    with pytest.raises(SessionError) as excinfo:
        unseal(sealed, ADMIN_SECRET)
    _error(excinfo, sealed, USER_SECRET, ADMIN_SECRET, "alice@example.com")


def test_unseal_tampered() -> None:
    sealed = seal({"email": "alice@example.com"}, USER_SECRET)
    raw = bytearray(base64.urlsafe_b64decode(sealed))
    raw[40] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(SessionError) as excinfo:
        unseal(tampered, USER_SECRET)
    _error(excinfo, tampered, USER_SECRET)


@pytest.mark.parametrize("bad", ["", "garbage", "ünïcode", 12])
def test_unseal_garbage(bad: Any) -> None:
    with pytest.raises(SessionError):
        unseal(bad, USER_SECRET)


@pytest.mark.parametrize(
    ("obj", "secret"),
    [(object(), USER_SECRET), (float("nan"), USER_SECRET), ({"a": 1}, "")],
)
def test_seal_refuses_non_json_and_empty_secret(obj: object, secret: str) -> None:
    with pytest.raises(SessionError):
        seal(obj, secret)


# --- sealed jobs: the vault and cache keys -----------------------------------------


def _sealed_spec(sessions: Sessions, data: dict[str, Any], **extra: Any) -> JobSpec:
    value = resolve_placeholders({"to": "$Session{user}{email}", "n": 1}, data)
    return JobSpec(
        env="dev", product_tag="p", event="e", retries=0, created_ms=0,
        input=redact(value.value, value.session_paths),
        redact_paths=[list(p) for p in value.session_paths],
        session_tag="user-session",
        sealed=seal_input(sessions.ring("user-session"), value.value, value.session_values),
        input_digest=json.dumps(value.value, sort_keys=True),  # any per-value digest will do here
        **extra,
    )  # fmt: skip


def test_vault_opens_input_seals_results_and_scrubs(sessions: Sessions) -> None:
    vault = Vault(sessions)
    spec = _sealed_spec(sessions, DATA)
    opened = vault.open_input(spec)
    assert opened == {"to": "alice@example.com", "n": 1} and spec.input == {"to": "***", "n": 1}
    stored = vault.seal_result(spec, json.dumps({"sent": "alice@example.com"}))
    assert "alice" not in stored and vault.shown_result(spec, stored) == "***"
    assert vault.open_result(spec, json.loads(stored)) == {"sent": "alice@example.com"}
    # A client without the secret gets the sealed form back, not an error.
    assert Vault(Sessions({})).open_result(spec, json.loads(stored)) == json.loads(stored)
    hidden = vault.open(spec).hidden
    assert hidden.scrub("RuntimeError: no mailbox 'alice@example.com'") == "RuntimeError: no mailbox '***'"


def test_vault_opens_seals_made_before_key_rings(sessions: Sessions) -> None:
    # Then the seal was the bare Fernet token of the input, without a key id or session values.
    spec = _sealed_spec(sessions, DATA)
    legacy = dataclasses.replace(spec, sealed=seal({"to": "alice@example.com", "n": 1}, USER_SECRET))
    opened = Vault(sessions).open(legacy)
    assert opened.input == {"to": "alice@example.com", "n": 1}
    assert opened.hidden.scrub("to ALICE@example.com") == "to ***"


def test_vault_leaves_plain_jobs_alone(sessions: Sessions) -> None:
    vault = Vault(sessions)
    spec = JobSpec(env="dev", product_tag="p", event="e", retries=0, created_ms=0, input={"a": 1})
    assert vault.open_input(spec) == {"a": 1}
    assert vault.seal_result(spec, '{"r": 1}') == '{"r": 1}'
    assert vault.shown_result(spec, '{"r": 1}') == {"r": 1}
    assert vault.open_result(spec, {"$sealed": "x"}) == {"$sealed": "x"}
    assert not vault.open(spec).hidden


def test_short_session_values_are_masked_only_as_whole_tokens(sessions: Sessions) -> None:
    spec = _sealed_spec(sessions, {"user": {"email": {"id": 7, "name": "Bob Smith", "ok": True}}})
    hidden = Vault(sessions).open(spec).hidden
    assert hidden.scrub('File "h.py", line 7, in run: no user Bob Smith (id 7) of 1776') == (
        'File "h.py", line ***, in run: no user *** (id ***) of 1776'
    )
    assert hidden.scrub("ok: True") == "ok: True"  # booleans carry one bit and are left alone


def test_cache_digest_tells_sealed_jobs_of_different_users_apart(sessions: Sessions) -> None:
    alice = _sealed_spec(sessions, DATA)
    bob = _sealed_spec(sessions, {"user": {"email": "bob@example.com"}})
    assert alice.input == bob.input  # alike as stored (masked)...
    assert cache_digest(alice) != cache_digest(bob)  # ...never sharing a cache entry
    assert cache_digest(alice) == cache_digest(_sealed_spec(sessions, DATA))
    plain = dataclasses.replace(alice, sealed=None, input_digest=None, session_tag=None, redact_paths=[])
    assert cache_digest(plain) != cache_digest(alice)


# --- properties ---------------------------------------------------------------------

_KEYS = st.text(min_size=0, max_size=6)
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
_STEPS = st.lists(st.text(max_size=5) | st.integers(0, 5).map(str), min_size=1, max_size=4)
_PLACEHOLDERISH = st.one_of(
    st.text(),
    _STEPS.map(lambda steps: "$Session" + "".join("{" + s + "}" for s in steps)),
    st.tuples(st.text(max_size=4), _STEPS, st.text(max_size=4)).map(
        lambda t: t[0] + "$Session" + "".join("{" + s + "}" for s in t[1]) + t[2]
    ),
    st.sampled_from(["$Session", "$Session{", "$Secret{x}", "$Env{y}", "$Session{a{b}}", "}{"]),
)
_INPUT_JSON = st.recursive(
    _SCALARS | _PLACEHOLDERISH,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
_DATA = st.dictionaries(st.sampled_from(["a", "b", "0", "1", ""]) | _KEYS, _JSON, max_size=5)


def _string_paths(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, str):
        return [path] if "$Session{" in value and path else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_paths(v, (*path, i))]
    return []


def _data_paths(value: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every addressable (steps, value) pair in session data, the root excluded."""
    found: list[tuple[tuple[str, ...], object]] = [(path, value)] if path else []
    if isinstance(value, dict):
        for key, sub in value.items():
            if "{" not in key and "}" not in key:
                found += _data_paths(sub, (*path, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _data_paths(sub, (*path, str(index)))
    return found


@given(value=st.dictionaries(_KEYS, _INPUT_JSON, max_size=5), data=_DATA)
@settings(max_examples=300)
def test_resolve_only_ever_raises_session_error(value: dict[str, Any], data: dict[str, Any]) -> None:
    before = copy.deepcopy(value)
    try:
        result = resolve_placeholders(value, data)
    except SessionError:
        return
    finally:
        assert value == before
    assert set(result.session_paths) == set(_string_paths(value))
    assert has_placeholders(value) is bool(result.session_paths)


@given(value=st.dictionaries(_KEYS, _JSON, max_size=5), data=_DATA)
def test_inputs_without_placeholders_come_back_equal(value: dict[str, Any], data: dict[str, Any]) -> None:
    if has_placeholders(value) or _string_paths(value):
        return
    assert resolve_placeholders(value, data) == Resolution(value, ())


@given(data=_DATA, choices=st.data())
def test_placeholders_to_existing_paths_resolve_to_the_data(
    data: dict[str, Any], choices: st.DataObject
) -> None:
    paths = _data_paths(data)
    if not paths:
        return
    picked = choices.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=6))
    whole = {
        f"w{i}": "$Session" + "".join("{" + s + "}" for s in steps) for i, (steps, _) in enumerate(picked)
    }
    embedded = {f"e{i}": f"<{text}>" for i, text in enumerate(whole.values())}
    result = resolve_placeholders({**whole, "nested": [whole, embedded]}, data)
    for i, (_, expected) in enumerate(picked):
        assert result.value[f"w{i}"] == expected
        assert result.value["nested"][0][f"w{i}"] == expected
        shown = (
            expected
            if isinstance(expected, str)
            else json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
        )
        assert result.value["nested"][1][f"e{i}"] == f"<{shown}>"
    assert len(result.session_paths) == 3 * len(picked)
