"""Redis URLs fit to print: every password a URL can carry is masked, wherever it is shown.

redis-py reads a password from the user info (``redis://:pw@h``, ``redis://user:pw@h``) and from
query parameters (``?password=pw``, ``?sentinel_password=pw``, ``?ssl_password=pw``), each either
percent-encoded or not; this module masks all of them. Pure text, no I/O.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

from ductape_jobs.scrub import MASK

# Any URL in a text: a scheme, '://', then everything up to whitespace or a quote.
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]*", re.IGNORECASE)
# Query parameters that carry a credential (password, sentinel_password, ssl_password, auth...).
_SECRET_PARAM = re.compile(r"pass|secret|token|auth|credential", re.IGNORECASE)
_PARAM = re.compile(r"(?P<sep>^|[&;])(?P<name>[^=&;]*)=(?P<value>[^&;]*)")


class _Url(NamedTuple):
    scheme: str
    userinfo: str | None  # None: no '@'
    where: str  # host, port and path
    query: str | None  # None: no '?'


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (user info and query)."""
    return _URL.sub(lambda found: _masked(_split(found.group())), text)


def url_secrets(url: str | None) -> list[str]:
    """Every password in ``url``, as written and percent-decoded, for scrubbing other texts."""
    if not url or "://" not in url:
        return []
    parts = _split(url)
    found = []
    if parts.userinfo is not None and ":" in parts.userinfo:
        found.append(parts.userinfo.split(":", 1)[1])
    for param in _PARAM.finditer(parts.query or ""):
        if _SECRET_PARAM.search(param["name"]):
            found.append(param["value"])
    # As written, percent-decoded, and cut at a '#' (which redis-py reads as the fragment).
    forms = {form for value in found for form in (value, unquote(value), value.split("#", 1)[0])}
    return sorted(form for form in forms if form)


def _split(url: str) -> _Url:
    scheme, _, rest = url.partition("://")
    # The last '@' ends the user info, even when a password holds an unencoded '/', '?' or '@'
    # (redis-py would misread such a URL, but it must still not be shown).
    userinfo, at, after = rest.rpartition("@")
    where, question, query = after.partition("?")
    return _Url(scheme, userinfo if at else None, where, query if question else None)


def _masked(url: _Url) -> str:
    shown = f"{url.scheme}://"
    if url.userinfo is not None:
        user, colon, _ = url.userinfo.partition(":")
        shown += f"{user}:{MASK}@" if colon else f"{user}@"
    shown += url.where
    if url.query is not None:
        shown += "?" + _PARAM.sub(_masked_param, url.query)
    return shown


def _masked_param(param: re.Match[str]) -> str:
    value = MASK if _SECRET_PARAM.search(param["name"]) else param["value"]
    return f"{param['sep']}{param['name']}={value}"
