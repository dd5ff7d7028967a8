"""Session tokens and $Session{...} placeholders: issue, verify, resolve, redact, seal.

Pure logic: no I/O, no Redis, no settings; time is an argument (`now_s`).
Nothing here puts a token, a secret or a session value into an error message or a repr.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import jwt
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ductape_jobs.errors import SessionError

Path = tuple[str | int, ...]

_ALGORITHM = "HS256"
# HS256 wants a 256-bit key; PyJWT only warns below that, we refuse up front instead.
_MIN_SECRET_BYTES = 32
_CONFIG_KEYS = frozenset({"secret", "expiry_s"})
_SEAL_INFO = b"ductape-jobs/seal/v1"

_PLACEHOLDER = re.compile(r"\$Session((?:\{[^{}]*\})+)")
_STEP = re.compile(r"\{([^{}]*)\}")
OPENER = "$Session{"
_DESCEND = object()


def _is_whole_number(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_secret(secret: object, tag: str) -> str:
    if not isinstance(secret, str):
        raise SessionError(f"sessions.{tag}.secret", "the secret must be a string")
    size = len(secret.encode("utf-8"))
    if size < _MIN_SECRET_BYTES:
        raise SessionError(
            f"sessions.{tag}.secret",
            f"the secret is {size} bytes; HS256 needs at least {_MIN_SECRET_BYTES} "
            "(try `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
        )
    return secret


def _check_expiry(expiry_s: object, field_name: str) -> int:
    if not _is_whole_number(expiry_s) or expiry_s <= 0:
        raise SessionError(
            field_name,
            f"must be a positive whole number of seconds, got {expiry_s!r}",
        )
    return expiry_s


def _show_tag(tag: object) -> str:
    # A tag this long is most likely a token passed in the wrong argument.
    if isinstance(tag, str) and len(tag) <= 64:
        return repr(tag)
    return "(not a session tag)"


@dataclass(frozen=True)
class SessionType:
    """A configured session type: signing secret and default expiry."""

    tag: str
    secret: str = field(repr=False)
    expiry_s: int = 3600

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not self.tag:
            raise SessionError("sessions", "a session tag must be a non-empty string")
        _check_secret(self.secret, self.tag)
        _check_expiry(self.expiry_s, f"sessions.{self.tag}.expiry_s")


def session_types_from_config(
    raw: Mapping[str, Mapping[str, object]],
) -> dict[str, SessionType]:
    """Build session types from {"<tag>": {"secret": ..., "expiry_s": ...}}."""
    if not isinstance(raw, Mapping):
        raise SessionError(
            "sessions",
            'must map each session tag to {"secret": ..., "expiry_s": ...}; '
            "parse the DUCTAPE_SESSIONS JSON before passing it",
        )
    types: dict[str, SessionType] = {}
    for tag, entry in raw.items():
        if not isinstance(tag, str) or not tag:
            raise SessionError("sessions", "a session tag must be a non-empty string")
        # The entry is not echoed: a common slip is {"tag": "<the secret>"}.
        if not isinstance(entry, Mapping):
            raise SessionError(
                f"sessions.{tag}",
                f'{tag!r} must look like {{"secret": ..., "expiry_s": 60}}',
            )
        unknown = sorted(str(key) for key in entry if key not in _CONFIG_KEYS)
        if unknown:
            raise SessionError(
                f"sessions.{tag}",
                f"session type {tag!r} has unknown settings {unknown}; allowed: {sorted(_CONFIG_KEYS)}",
            )
        if "secret" not in entry:
            raise SessionError(f"sessions.{tag}.secret", "the session type has no secret")
        types[tag] = SessionType(
            tag=tag,
            secret=_check_secret(entry["secret"], tag),
            expiry_s=_check_expiry(entry.get("expiry_s", 3600), f"sessions.{tag}.expiry_s"),
        )
    return types


class Sessions:
    """Issues and verifies session tokens for the configured session types."""

    def __init__(self, types: Mapping[str, SessionType]) -> None:
        """Keep the given session types, keyed by tag."""
        for key, session_type in types.items():
            if not isinstance(session_type, SessionType):
                raise SessionError(
                    f"sessions.{key}",
                    "expected a SessionType; see session_types_from_config()",
                )
            if key != session_type.tag:
                raise SessionError(
                    f"sessions.{key}",
                    f"keyed as {key!r} but its tag is {session_type.tag!r}",
                )
        self._types = dict(types)

    def __repr__(self) -> str:
        return f"Sessions(tags={sorted(self._types)!r})"

    def _type(self, tag: str) -> SessionType:
        session_type = self._types.get(tag) if isinstance(tag, str) else None
        if session_type is None:
            raise SessionError(
                "session.tag",
                f"unknown session type {_show_tag(tag)}; configured: {sorted(self._types)}",
            )
        return session_type

    def secret_for(self, tag: str) -> str:
        """The signing secret of a configured session type, e.g. to seal() resolved input."""
        return self._type(tag).secret

    def start(
        self,
        tag: str,
        data: Mapping[str, Any],
        expiry: int | None = None,
        *,
        expiry_s: int | None = None,
        now_s: float | None = None,
    ) -> str:
        """Issue a "<tag>:<jwt>" token carrying data, valid for expiry seconds (the type's default)."""
        session_type = self._type(tag)
        if not isinstance(data, Mapping):
            raise SessionError("session.data", "session data must be an object (a mapping)")
        if expiry is not None and expiry_s is not None:
            raise SessionError("session.expiry", "give expiry or its older name expiry_s, not both")
        chosen = expiry if expiry is not None else expiry_s
        lifetime = _check_expiry(session_type.expiry_s if chosen is None else chosen, "session.expiry")
        issued = int(time.time() if now_s is None else now_s)
        claims = {"tag": tag, "data": dict(data), "iat": issued, "exp": issued + lifetime}
        try:
            body = jwt.encode(claims, session_type.secret, algorithm=_ALGORITHM)
        except (TypeError, ValueError):
            raise SessionError(
                "session.data",
                "session data must be JSON: string keys; string, number, boolean, "
                "null, list or object values",
            ) from None
        return f"{tag}:{body}"

    def verify(self, tag: str, token: str, *, now_s: float | None = None) -> dict[str, Any]:
        """Check a "<tag>:<jwt>" or bare JWT (signature, expiry, tag); return data."""
        session_type = self._type(tag)
        if not isinstance(token, str) or not token:
            raise SessionError("session.token", "the session token must be a non-empty string")
        # A JWT never contains ':', so anything before the last one is the tag prefix.
        prefix, colon, body = token.rpartition(":")
        if not body:
            raise SessionError("session.token", "the token has no JWT after its tag")
        if colon and prefix != tag:
            known = f"session type {prefix!r}" if prefix in self._types else "another session type"
            raise SessionError(
                "session.tag",
                f"the token was issued for {known}, not {tag!r}; check session.tag",
            )
        # `from None`: PyJWT's own exceptions are not promised to stay token-free.
        try:
            claims = jwt.decode(
                body,
                session_type.secret,
                algorithms=[_ALGORITHM],
                options={
                    "require": ["exp"],
                    "verify_exp": False,  # checked below against now_s
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise SessionError(
                "session.token",
                "signature does not match: the token was tampered with or not "
                f"signed with the secret of session type {tag!r}",
            ) from None
        except jwt.MissingRequiredClaimError:
            raise SessionError("session.token", "the token has no expiry (exp claim)") from None
        except jwt.InvalidTokenError:
            raise SessionError(
                "session.token",
                "malformed token: expected '<tag>:<jwt>' or a bare HS256 JWT",
            ) from None
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise SessionError("session.token", "the token's expiry (exp claim) is not a number")
        now = time.time() if now_s is None else now_s
        if now >= exp:
            raise SessionError(
                "session.token",
                f"the session expired {int(now - exp)}s ago; start a new session",
            )
        if "tag" in claims and claims["tag"] != tag:
            raise SessionError(
                "session.tag",
                f"the token was issued for another session type, not {tag!r}",
            )
        data = claims.get("data")
        if not isinstance(data, dict):
            raise SessionError("session.token", "the token carries no session data object")
        return data


@dataclass(frozen=True)
class Resolution:
    """Input with $Session{...} placeholders replaced, and where session values went."""

    value: dict[str, Any]
    session_paths: tuple[Path, ...]


def has_placeholders(value: object) -> bool:
    """Whether any string value, at any depth, contains a $Session{ placeholder."""
    if isinstance(value, str):
        return OPENER in value
    if isinstance(value, Mapping):
        return any(has_placeholders(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_placeholders(item) for item in value)
    return False


def resolve_placeholders(value: Mapping[str, Any], data: Mapping[str, Any]) -> Resolution:
    """Replace each $Session{a}{b}... in string values by data's value at that path."""
    paths: list[Path] = []

    def visit(item: Any, path: Path) -> Any:
        if not path or not isinstance(item, str) or OPENER not in item:
            return _DESCEND
        paths.append(path)
        return _resolve_string(item, path, data)

    return Resolution(value=_rebuild(dict(value), (), visit), session_paths=tuple(paths))


def redact(value: Mapping[str, Any], paths: Iterable[Path], mask: str = "***") -> dict[str, Any]:
    """Copy value with each path's value replaced by mask; absent paths are skipped."""
    targets = {tuple(path) for path in paths}

    def visit(item: Any, path: Path) -> Any:
        # The empty path is the whole mapping, which has to stay a mapping.
        return mask if path and path in targets else _DESCEND

    result: dict[str, Any] = _rebuild(dict(value), (), visit)
    return result


def seal(obj: Any, secret: str) -> str:
    """Encrypt and authenticate the JSON of obj with a key derived from secret."""
    try:
        plain = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise SessionError("sealed", "only JSON values can be sealed") from None
    return _fernet(secret).encrypt(plain.encode("utf-8")).decode("ascii")


def unseal(token: str, secret: str) -> Any:
    """Decrypt a seal() token; a wrong secret or any tampering raises SessionError."""
    fernet = _fernet(secret)
    if not isinstance(token, str):
        raise SessionError("sealed", "a sealed value must be a string")
    try:
        return json.loads(fernet.decrypt(token).decode("utf-8"))
    except (InvalidToken, ValueError):
        raise SessionError(
            "sealed", "cannot open the sealed value: wrong secret, or it was altered"
        ) from None


def _fernet(secret: str) -> Fernet:
    if not isinstance(secret, str) or not secret:
        raise SessionError("secret", "the sealing secret must be a non-empty string")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(
        secret.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(key))


def _field(path: Path) -> str:
    return "input" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def _rebuild(item: Any, path: Path, visit: Callable[[Any, Path], Any]) -> Any:
    # A fresh copy of the JSON tree in which visit() may replace any node by returning
    # something other than _DESCEND; never mutates or aliases the caller's objects.
    replaced = visit(item, path)
    if replaced is not _DESCEND:
        return replaced
    if isinstance(item, Mapping):
        return {k: _rebuild(sub, (*path, k), visit) for k, sub in item.items()}
    if isinstance(item, (list, tuple)):
        items = (_rebuild(sub, (*path, i), visit) for i, sub in enumerate(item))
        return tuple(items) if isinstance(item, tuple) else list(items)
    return copy.deepcopy(item)


def _resolve_string(text: str, path: Path, data: Mapping[str, Any]) -> Any:
    field_name = _field(path)
    matches = list(_PLACEHOLDER.finditer(text))
    # A placeholder followed by "{" has an unclosed step: "$Session{user}{id".
    unclosed = any(text.startswith("{", match.end()) for match in matches)
    if unclosed or text.count(OPENER) != len(matches):
        raise SessionError(
            field_name,
            "malformed $Session placeholder: every step must be a closed {...} without "
            "nested braces, e.g. $Session{user}{id}",
        )
    if len(matches) == 1 and matches[0].group(0) == text:
        # A whole-string placeholder keeps its JSON type; copied so data isn't aliased.
        return copy.deepcopy(_lookup(matches[0], data, field_name))

    def embed(match: re.Match[str]) -> str:
        found = _lookup(match, data, field_name)
        if isinstance(found, str):
            return found
        try:
            return json.dumps(found, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            raise SessionError(
                field_name,
                f"placeholder {match.group(0)} holds a value that is not JSON and cannot be embedded in text",
            ) from None

    # One pass: text that a session value brings in is never resolved again.
    return _PLACEHOLDER.sub(embed, text)


def _lookup(match: re.Match[str], data: Mapping[str, Any], field_name: str) -> Any:
    placeholder = match.group(0)
    steps = _STEP.findall(match.group(1))
    current: Any = data
    for depth, step in enumerate(steps):
        where = "at the top level" if depth == 0 else f"under {'.'.join(steps[:depth])!r}"
        problem: str | None = None
        if isinstance(current, Mapping):
            if step in current:
                current = current[step]
                continue
            problem = f"session data has no key {step!r} {where}"
        elif isinstance(current, (list, tuple)):
            if not (step.isascii() and step.isdigit()):
                problem = f"session data {where} is a list and {step!r} is not an index"
            elif int(step) >= len(current):
                problem = f"session data list {where} has no index {int(step)}"
            else:
                current = current[int(step)]
                continue
        else:
            problem = f"session data {where} is {_kind(current)}, which has no {step!r}"
        raise SessionError(field_name, f"placeholder {placeholder} has no value: {problem}")
    return current


_JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}


def _kind(value: object) -> str:
    # Names the JSON type only; the value itself may be private session data.
    if value is None:
        return "null"
    return _JSON_KINDS.get(type(value), "not an object or list")
