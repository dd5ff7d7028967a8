"""Redis URLs fit to print: every password a URL can carry is masked, wherever it is shown.

redis-py reads a password from the user info (``redis://:pw@h``, ``redis://user:pw@h``) and from
query parameters (``?password=pw``, ``?sentinel_password=pw``, ``?ssl_password=pw``), each either
percent-encoded or not; this module masks all of them. Pure text, no I/O.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote, unquote

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


def broker_url(url: str) -> str:
    """``url`` as kombu can read it: a ``?password=`` (or ``?username=``) moved into the user info.

    redis-py reads both spellings; kombu passes query parameters on as keyword arguments beside
    the user info's own, so a URL with ``?password=`` stops every worker and beat with
    ``TypeError: dict() got multiple values for keyword argument 'password'`` (it names no secret,
    but nothing starts). A password in both places keeps the user info's, as redis-py does.
    """
    parts = _split(url)
    if parts.query is None or parts.scheme.lower() not in ("redis", "rediss"):
        return url
    moved: dict[str, str] = {}
    kept = []
    for item in re.split("[&;]", parts.query):
        name, _, value = item.partition("=")
        if name in ("password", "username"):
            moved.setdefault(name, value)
        elif item:
            kept.append(item)
    if not moved:
        return url
    user, colon, password = (parts.userinfo or "").partition(":")
    user = user or quote(unquote(moved.get("username", "")), safe="")
    password = password if colon else quote(unquote(moved.get("password", "")), safe="")
    userinfo = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    query = "?" + "&".join(kept) if kept else ""
    return f"{parts.scheme}://{userinfo}{parts.where}{query}"


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
