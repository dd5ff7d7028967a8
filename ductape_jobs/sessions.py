"""Session tokens and $Session{...} placeholders: issue, verify, resolve, redact.

Pure logic: no I/O, no Redis, no settings; time is an argument (`now_s`).
Nothing here puts a token, a secret or a session value into an error message or a repr.
Keys rotate through each session type's key ring (``keyring``).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from ductape_jobs.errors import SessionError
from ductape_jobs.keyring import KeyRing, check_secret, seal, unseal

__all__ = ["KeyRing", "seal", "unseal"]  # re-exported: sealing lives in keyring

Path = tuple[str | int, ...]

_ALGORITHM = "HS256"
_CONFIG_KEYS = frozenset({"secret", "secrets", "expiry_s"})
# Tokens longer than this are refused before any decoding: ours are a few hundred bytes plus the
# session data, and a forged 50 MB token must not cost seconds of CPU.
MAX_TOKEN_CHARS = 8 * 1024
# Clock skew allowed between the process that issued a token and the one that checks it.
LEEWAY_S = 30

_PLACEHOLDER = re.compile(r"\$Session((?:\{[^{}]*\})+)")
_STEP = re.compile(r"\{([^{}]*)\}")
OPENER = "$Session{"
_DESCEND = object()


def _is_whole_number(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


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
    """A configured session type: its key ring (newest first) and its longest expiry.

    Give one ``secret`` or a ``secrets`` ring; ``secret`` then reads as the newest key.
    """

    tag: str
    secret: str = field(default="", repr=False)
    expiry_s: int = 3600
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not self.tag:
            raise SessionError("sessions", "a session tag must be a non-empty string")
        if self.secret and self.secrets:
            raise SessionError(
                f"sessions.{self.tag}", "give either secret or secrets (a key ring, newest first), not both"
            )
        if not self.secret and not self.secrets:
            raise SessionError(f"sessions.{self.tag}.secret", "the session type has no secret")
        if self.secrets:
            if isinstance(self.secrets, str) or not isinstance(self.secrets, (list, tuple)):
                raise SessionError(f"sessions.{self.tag}.secrets", "must be a list of secrets, newest first")
            object.__setattr__(self, "secrets", tuple(self.secrets))
        else:
            object.__setattr__(self, "secrets", (check_secret(self.secret, f"sessions.{self.tag}.secret"),))
        object.__setattr__(self, "secret", KeyRing(self.tag, self.secrets).newest)
        _check_expiry(self.expiry_s, f"sessions.{self.tag}.expiry_s")

    @property
    def ring(self) -> KeyRing:
        """The key ring of this type."""
        return KeyRing(self.tag, self.secrets)


def session_types_from_config(
    raw: Mapping[str, Mapping[str, object]],
) -> dict[str, SessionType]:
    """Build session types from {"<tag>": {"secret" | "secrets": ..., "expiry_s": ...}}."""
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
        secrets = entry.get("secrets", ())
        if not isinstance(secrets, list | tuple):
            raise SessionError(f"sessions.{tag}.secrets", "must be a list of secrets, newest first")
        secret = entry.get("secret", "")
        if not isinstance(secret, str):
            check_secret(secret, f"sessions.{tag}.secret")
        types[tag] = SessionType(
            tag=tag,
            secret=str(secret),
            secrets=tuple(secrets),
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
        self._rings: dict[str, KeyRing] = {}

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
        """The newest secret of a configured session type (what new tokens and seals use)."""
        return self._type(tag).secret

    def ring(self, tag: str) -> KeyRing:
        """The key ring of a configured session type: seal under its newest key, open under any."""
        return self._rings.setdefault(tag, self._type(tag).ring)

    def start(
        self,
        tag: str,
        data: Mapping[str, Any],
        expiry: int | None = None,
        *,
        expiry_s: int | None = None,
        now_s: float | None = None,
    ) -> str:
        """Issue a "<tag>:<jwt>" token carrying data, valid for expiry seconds (the type's default,
        which is also the longest allowed)."""
        session_type = self._type(tag)
        if not isinstance(data, Mapping):
            raise SessionError("session.data", "session data must be an object (a mapping)")
        if expiry is not None and expiry_s is not None:
            raise SessionError("session.expiry", "give expiry or its older name expiry_s, not both")
        chosen = expiry if expiry is not None else expiry_s
        lifetime = _check_expiry(session_type.expiry_s if chosen is None else chosen, "session.expiry")
        if lifetime > session_type.expiry_s:
            raise SessionError(
                "session.expiry",
                f"{lifetime}s is longer than session type {tag!r} allows ({session_type.expiry_s}s); "
                "give a shorter expiry or raise the type's expiry_s",
            )
        issued = int(time.time() if now_s is None else now_s)
        claims = {"tag": tag, "data": dict(data), "iat": issued, "exp": issued + lifetime}
        ring = self.ring(tag)
        import jwt  # here, not at the top: see keyring's imports

        try:
            body = jwt.encode(claims, ring.newest, algorithm=_ALGORITHM, headers={"kid": ring.ids[0]})
        except (TypeError, ValueError):
            raise SessionError(
                "session.data",
                "session data must be JSON: string keys; string, number, boolean, "
                "null, list or object values",
            ) from None
        except jwt.PyJWTError:
            raise SessionError(f"sessions.{tag}.secret", "PyJWT refused the signing secret") from None
        return f"{tag}:{body}"

    def verify(self, tag: str, token: str, *, now_s: float | None = None) -> dict[str, Any]:
        """Check a "<tag>:<jwt>" or bare JWT (size, signature, tag, exp, nbf, iat); return data."""
        session_type = self._type(tag)
        if not isinstance(token, str) or not token:
            raise SessionError("session.token", "the session token must be a non-empty string")
        if len(token) > MAX_TOKEN_CHARS:
            # Refused before any decoding: the cost of a refusal does not grow with the token.
            raise SessionError(
                "session.token",
                f"the token is longer than {MAX_TOKEN_CHARS} characters; keep session data small",
            )
        if not token.isascii():
            raise _malformed()
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
        claims = _decode(body, self.ring(tag))
        if claims.get("tag") != tag:
            raise SessionError(
                "session.tag",
                f"the token was not issued for session type {tag!r} (its tag claim is missing or another)",
            )
        _check_times(claims, time.time() if now_s is None else now_s, session_type.expiry_s)
        data = claims.get("data")
        if not isinstance(data, dict):
            raise SessionError("session.token", "the token carries no session data object")
        return data


def _malformed() -> SessionError:
    return SessionError("session.token", "malformed token: expected '<tag>:<jwt>' or a bare HS256 JWT")


def _decode(body: str, ring: KeyRing) -> dict[str, Any]:
    """The verified claims of a JWT signed by any key of the ring (the one its kid names)."""
    import jwt  # here, not at the top: see keyring's imports

    # `from None` throughout: PyJWT's own exceptions are not promised to stay token-free.
    try:
        kid = jwt.get_unverified_header(body).get("kid")
    except jwt.PyJWTError:
        raise _malformed() from None
    if kid is None:
        candidates = list(ring.secrets)  # issued before key rings: any key may have signed it
    else:
        secret = ring.by_id(kid) if isinstance(kid, str) else None
        if secret is None:
            raise SessionError(
                "session.token",
                f"signature does not match: the token names a key that is not in the key ring of "
                f"session type {ring.tag!r} (removed after a rotation?); start a new session",
            )
        candidates = [secret]
    for secret in candidates:
        try:
            claims: dict[str, Any] = jwt.decode(
                body,
                secret,
                algorithms=[_ALGORITHM],
                options={
                    "require": ["exp"],
                    # checked by _check_times against now_s, stricter than PyJWT's
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
            return claims
        except jwt.InvalidSignatureError:
            continue
        except jwt.MissingRequiredClaimError:
            raise SessionError("session.token", "the token has no expiry (exp claim)") from None
        except jwt.PyJWTError:
            raise _malformed() from None
    raise SessionError(
        "session.token",
        "signature does not match: the token was tampered with or not "
        f"signed with a secret of session type {ring.tag!r}",
    )


def _check_times(claims: Mapping[str, Any], now: float, longest_s: int) -> None:
    """exp in (now, now + the type's expiry]; nbf and iat, when present, not ahead of now."""
    exp = _claim_time(claims, "exp", "expiry")
    if exp is None:
        raise SessionError("session.token", "the token has no expiry (exp claim)")
    if now >= exp:
        raise SessionError("session.token", f"the session expired {int(now - exp)}s ago; start a new session")
    if exp > now + longest_s + LEEWAY_S:
        raise SessionError(
            "session.token",
            f"the token's expiry is further ahead than this session type allows ({longest_s}s); "
            "it was not issued by start() with this key ring",
        )
    nbf = _claim_time(claims, "nbf", "not-before time")
    if nbf is not None and nbf > now + LEEWAY_S:
        raise SessionError(
            "session.token", f"the token is not valid for another {int(nbf - now)}s (nbf claim)"
        )
    iat = _claim_time(claims, "iat", "issue time")
    if iat is not None and iat > now + LEEWAY_S:
        raise SessionError(
            "session.token", f"the token claims to be issued {int(iat - now)}s in the future (iat claim)"
        )


def _claim_time(claims: Mapping[str, Any], name: str, what: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise SessionError("session.token", f"the token's {what} ({name} claim) is not a finite number")
    return float(value)


@dataclass(frozen=True)
class Resolution:
    """Input with $Session{...} placeholders replaced, where session values went, and which."""

    value: dict[str, Any]
    session_paths: tuple[Path, ...]
    # The session data each placeholder took, in order (what error texts are scrubbed of).
    session_values: tuple[Any, ...] = field(default=(), compare=False)


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
    taken: list[Any] = []

    def visit(item: Any, path: Path) -> Any:
        if not path or not isinstance(item, str) or OPENER not in item:
            return _DESCEND
        paths.append(path)
        return _resolve_string(item, path, data, taken)

    resolved = _rebuild(dict(value), (), visit)
    return Resolution(value=resolved, session_paths=tuple(paths), session_values=tuple(taken))


def redact(value: Mapping[str, Any], paths: Iterable[Path], mask: str = "***") -> dict[str, Any]:
    """Copy value with each path's value replaced by mask; absent paths are skipped."""
    targets = {tuple(path) for path in paths}

    def visit(item: Any, path: Path) -> Any:
        # The empty path is the whole mapping, which has to stay a mapping.
        return mask if path and path in targets else _DESCEND

    result: dict[str, Any] = _rebuild(dict(value), (), visit)
    return result


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


def _resolve_string(text: str, path: Path, data: Mapping[str, Any], taken: list[Any]) -> Any:
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
        whole = copy.deepcopy(_lookup(matches[0], data, field_name))
        taken.append(whole)
        return whole

    def embed(match: re.Match[str]) -> str:
        found = _lookup(match, data, field_name)
        taken.append(found)
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
