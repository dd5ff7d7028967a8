"""Redis URLs fit to print: every password a URL can carry is masked, wherever it is shown.

redis-py reads a password from the user info (``redis://:pw@h``, ``redis://user:pw@h``) and from
query parameters (``?password=pw``, ``?sentinel_password=pw``, ``?ssl_password=pw``), each either
percent-encoded or not; this module masks all of them. A Sentinel deployment is named by kombu's
form, ``sentinel://[:pw@]host:26379[/db];sentinel://host2:26379`` (one URL per sentinel, ``;``
between them): ``sentinel_target`` reads it (or ``DUCTAPE_SENTINELS``) into a ``SentinelTarget``,
and ``kombu_sentinel`` writes it back for kombu. Pure text, no I/O.
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


# Where one URL of a ';'-separated list ends: before a ';' that starts another URL (a ';' inside a
# password or a query stays in its URL).
_NEXT_URL = re.compile(r";(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
SENTINEL_PORT = 26379


class SentinelTarget(NamedTuple):
    """A Redis behind Sentinel: where the sentinels are, which master, and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None = None  # the master's (and its replicas')
    sentinel_password: str | None = None  # the sentinels' own (their requirepass)

    def __repr__(self) -> str:
        shown = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"SentinelTarget(sentinels={shown!r}, master={self.master!r}, db={self.db})"


class _Url(NamedTuple):
    scheme: str
    userinfo: str | None  # None: no '@'
    where: str  # host, port and path
    query: str | None  # None: no '?'


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (user info and query)."""
    return _URL.sub(lambda found: ";".join(_masked(_split(u)) for u in _urls(found.group())), text)


def url_secrets(url: str | None) -> list[str]:
    """Every password in ``url``, as written and percent-decoded, for scrubbing other texts."""
    if not url or "://" not in url:
        return []
    found = []
    for parts in map(_split, _urls(url)):
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


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names sentinels (kombu's ``sentinel://`` form) rather than one server."""
    return url.lstrip().lower().startswith("sentinel://")


def sentinel_target(
    url: str,
    sentinels: tuple[str, ...] = (),
    master: str | None = None,
    sentinel_password: str | None = None,
) -> SentinelTarget | None:
    """The Sentinel deployment ``url`` (or ``sentinels``, ``host:port`` each) names; None for one
    plain server. The first URL's user info and database are the master's, as kombu reads them;
    ``master_name`` and ``sentinel_password`` may also be given as query parameters of the URL.
    With ``sentinels`` given, ``url`` (``redis://``) gives only the password and database.

    ValueError (naming no secret) when the master's name is missing or an address is unusable.
    """
    if not is_sentinel(url) and not sentinels:
        return None
    first = _split(_urls(url)[0])
    if is_sentinel(url):
        parts = [_split(u) for u in _urls(url)]
        addresses = [_address(p.where.split("/", 1)[0], f"sentinel URL #{n}") for n, p in enumerate(parts, 1)]
    else:
        parts = [first]
        addresses = [_address(entry.strip(), "DUCTAPE_SENTINELS") for entry in sentinels if entry.strip()]
    query: dict[str, str] = {}
    for part in parts:
        for param in _PARAM.finditer(part.query or ""):
            query.setdefault(param["name"], unquote(param["value"]))
    master = master or query.get("master_name")
    if not master:
        raise ValueError(
            "a Sentinel deployment needs its master's name: set DUCTAPE_SENTINEL_MASTER "
            "(the name in the sentinels' 'sentinel monitor <name> ...' line)"
        )
    user, colon, password = (first.userinfo or "").partition(":")
    db = first.where.partition("/")[2].strip("/") or query.get("db", "0")
    if not db.isdigit():
        raise ValueError(f"the database in the Redis URL must be a number (got {db!r})")
    return SentinelTarget(
        sentinels=tuple(addresses),
        master=master,
        db=int(db),
        username=unquote(user) or None,
        password=unquote(password) if colon and password else None,
        sentinel_password=sentinel_password or query.get("sentinel_password") or None,
    )


def kombu_sentinel(target: SentinelTarget) -> tuple[str, dict[str, object]]:
    """The broker URL and transport options kombu's ``sentinel://`` transport reads for ``target``:
    one URL per sentinel, the master's credentials and database on the first (kombu reads them
    from it), ``master_name`` and the sentinels' own password (``sentinel_kwargs``) as options."""
    user = quote(target.username or "", safe="")
    password = quote(target.password or "", safe="")
    userinfo = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    urls = [
        f"sentinel://{userinfo if n == 0 else ''}{_host(host)}:{port}/{target.db}"
        for n, (host, port) in enumerate(target.sentinels)
    ]
    options: dict[str, object] = {"master_name": target.master}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return ";".join(urls), options


def _urls(text: str) -> list[str]:
    return _NEXT_URL.split(text)


def _address(where: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; the port defaults to Sentinel's) as a pair."""
    host, colon, port = where.rpartition(":") if not where.endswith("]") else (where, "", "")
    if not colon:
        host, port = where, str(SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"{what} is not host:port (got {where!r})")
    return host, int(port)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
