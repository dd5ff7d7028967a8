"""A session type's key ring: signing, sealing and digest keys that rotate without downtime.

The ring lists secrets newest first. New tokens and seals use the first; verifying and opening
accept any, found by the key id stored beside what was signed or sealed. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ductape_jobs.errors import RetiredKeyError, SessionError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

# cryptography (and PyJWT, which loads it) are imported where a key is used, not here: its Rust
# library is ~10 MB resident, and a worker or beat with no session type configured never needs it
# (their memory is a bench figure; tests/unit/test_layers.py checks they do not load it).

# HS256 wants a 256-bit key; PyJWT only warns below that, we refuse up front instead.
MIN_SECRET_BYTES = 32
_SEAL_INFO = b"ductape-jobs/seal/v1"
_KEY_ID_INFO = b"ductape-jobs/key-id/v1"
# A sealed value is "<key id>:<Fernet token>"; a Fernet token never holds ':'. Seals made before
# key rings have no key id and are tried against every key.
_KID_SEP = ":"


def check_secret(secret: object, where: str) -> str:
    """The secret if it can sign HS256 tokens; otherwise a SessionError naming ``where``."""
    if not isinstance(secret, str):
        raise SessionError(where, "the secret must be a string")
    from jwt.utils import is_pem_format, is_ssh_key

    raw = secret.encode("utf-8")
    if len(raw) < MIN_SECRET_BYTES:
        raise SessionError(
            where,
            f"the secret is {len(raw)} bytes; HS256 needs at least {MIN_SECRET_BYTES} "
            "(try `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
        )
    if is_pem_format(raw) or is_ssh_key(raw):
        # PyJWT refuses such keys for HMAC when signing; we say so before the first token.
        raise SessionError(
            where, "the secret looks like a PEM or SSH key; HS256 needs a random string, not a key file"
        )
    return secret


def key_id(secret: str) -> str:
    """A short public id of a secret (HKDF, so it tells nothing about the secret itself)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=6, salt=None, info=_KEY_ID_INFO).derive(
        secret.encode("utf-8")
    )
    return derived.hex()


@dataclass(frozen=True)
class KeyRing:
    """Secrets of one session type, newest first, each with its key id."""

    tag: str
    secrets: tuple[str, ...] = field(repr=False)
    ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.secrets:
            raise SessionError(f"sessions.{self.tag}.secrets", "the key ring needs at least one secret")
        for i, secret in enumerate(self.secrets):
            check_secret(secret, f"sessions.{self.tag}.secrets[{i}]")
        ids = tuple(key_id(s) for s in self.secrets)
        if len(set(ids)) != len(ids):
            raise SessionError(f"sessions.{self.tag}.secrets", "the key ring lists the same secret twice")
        object.__setattr__(self, "ids", ids)

    @property
    def newest(self) -> str:
        """The secret new tokens and seals use."""
        return self.secrets[0]

    def by_id(self, kid: str) -> str | None:
        """The secret with that key id, or None when it left the ring."""
        for known, secret in zip(self.ids, self.secrets, strict=True):
            if hmac.compare_digest(known, kid):
                return secret
        return None

    def seal(self, obj: Any) -> str:
        """obj sealed under the newest key, prefixed with its key id."""
        return f"{self.ids[0]}{_KID_SEP}{seal(obj, self.newest)}"

    def open(self, sealed: object) -> Any:
        """What seal() sealed, under whichever key of the ring sealed it."""
        if not isinstance(sealed, str):
            raise SessionError("sealed", "a sealed value must be a string")
        kid, sep, token = sealed.rpartition(_KID_SEP)
        if not sep:
            return _first_opening(token, self.secrets)
        secret = self.by_id(kid)
        if secret is None:
            raise RetiredKeyError(
                "sealed",
                f"sealed under key {kid[:12]!r}, which is not in this key ring of session type "
                f"{self.tag!r} (ring: {list(self.ids)}): removed, or not deployed here yet; put that "
                "secret back in the ring to run such jobs, or schedule them again with a new session",
            )
        return unseal(token, secret)

    def digests(self, canonical: str) -> tuple[str, ...]:
        """HMAC-SHA256 of ``canonical`` under each key, newest first (the input digest and its
        twins under older keys, so a rotation keeps finding the same schedule)."""
        return tuple(
            hmac.new(s.encode(), canonical.encode(), hashlib.sha256).hexdigest() for s in self.secrets
        )


def seal(obj: Any, secret: str) -> str:
    """Encrypt and authenticate the JSON of obj with a key derived from secret."""
    try:
        plain = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise SessionError("sealed", "only JSON values can be sealed") from None
    return _fernet(secret).encrypt(plain.encode("utf-8")).decode("ascii")


def unseal(token: str, secret: str) -> Any:
    """Decrypt a seal() token; a wrong secret or any tampering raises SessionError."""
    from cryptography.fernet import InvalidToken

    fernet = _fernet(secret)
    if not isinstance(token, str):
        raise SessionError("sealed", "a sealed value must be a string")
    try:
        return json.loads(fernet.decrypt(token).decode("utf-8"))
    except (InvalidToken, ValueError):
        raise SessionError(
            "sealed", "cannot open the sealed value: wrong secret, or it was altered"
        ) from None


def _first_opening(token: str, secrets: Iterable[str]) -> Any:
    for secret in secrets:
        try:
            return unseal(token, secret)
        except SessionError:
            continue
    raise SessionError(
        "sealed", "cannot open the sealed value with any key of the ring: a removed key, or it was altered"
    )


def _fernet(secret: str) -> Fernet:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if not isinstance(secret, str) or not secret:
        raise SessionError("secret", "the sealing secret must be a non-empty string")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(
        secret.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(key))
