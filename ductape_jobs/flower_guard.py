"""Flower on the workers app: never open (it needs credentials; it listens on loopback unless
told), and its Broker page reads our queues.

``celery -A workers flower`` makes the app (``workers.create_app`` calls ``guard_flower``) before
Flower reads its options. Flower then reads
them all (``FLOWER_*`` variables, the ``--conf`` file, the command line) and, before it binds its
port, calls the app's ``loader.import_default_modules()``, which sends Celery's
``import_modules`` signal: the check runs there. So it holds however Flower is started (README,
``make flower``, compose) and from any working directory, with or without ``flowerconfig.py``.
"""

from __future__ import annotations

from typing import Any

import click
from celery import Celery
from celery.signals import import_modules

LOOPBACK = "127.0.0.1"
FIX = "set FLOWER_BASIC_AUTH=user:password (or pass --basic-auth=user:password)"


def guard_flower(app: Celery) -> None:
    """Make ``celery -A workers flower`` refuse to start open, bind to loopback by default, and
    read our queues on its Broker page."""

    def check(sender: Any = None, **_: Any) -> None:
        if sender is app and _running_flower():
            # Imported here: only the flower command needs tornado's option registry.
            from tornado.options import options

            close_flower(options)
            name_broker_scheme(app)

    import_modules.connect(check, weak=False)


def close_flower(options: Any) -> None:
    """Exit with a clear message when Flower has no credentials; default its address to loopback."""
    problem = credentials_problem(list(options.basic_auth or ()), options.auth)
    if problem:
        click.echo(f"error: Flower refuses to start: {problem}", err=True)
        raise SystemExit(2)
    if not options.address and not options.unix_socket:
        options.address = LOOPBACK


def name_broker_scheme(app: Celery) -> str | None:
    """Make the app's broker URI name kombu's scheme (``redis``, ``sentinel``) when the app runs a
    subclass of kombu's Redis transport; the scheme, or None when there is nothing to name.

    Flower's Broker page and ``/api/queues/length`` pick their Redis client by that URI's scheme
    (``flower.utils.broker.Broker``) and answer 404 "broker is not supported" for any other. kombu
    writes the transport's name into the scheme, and the workers app names ours by its class path
    (``ductape_jobs.transport:Transport``, for kombu#582), which no scheme can be. Ours read the
    same URLs and keep the same queue lists as kombu's, so kombu's alias table names them by
    kombu's scheme; that table is read only to write a connection's URI (``Connection.as_uri``).
    """
    # Imported here: only the flower process needs them.
    from kombu.connection import Connection
    from kombu.transport import TRANSPORT_ALIASES, get_transport_cls
    from kombu.transport import redis as kombu_redis

    name = app.conf.broker_transport
    if not isinstance(name, str) or name in TRANSPORT_ALIASES:
        return None  # kombu's own, named by its alias (redis, rediss, sentinel): Flower knows those
    transport = get_transport_cls(name)
    if transport is None:
        return None
    if issubclass(transport, kombu_redis.SentinelTransport):
        scheme = "sentinel"
    elif issubclass(transport, kombu_redis.Transport):
        scheme = "redis"
    else:
        return None
    Connection.resolve_aliases[name] = scheme
    return scheme


def credentials_problem(basic_auth: list[str], oauth: str) -> str | None:
    """Why these Flower credentials leave it open, or None when they close it."""
    if oauth:  # Flower's OAuth login (--auth with --auth_provider) guards every page itself
        return None
    if not basic_auth:
        return f"no credentials; {FIX}"
    for index, entry in enumerate(basic_auth):
        user, _, password = entry.partition(":")
        if not user or not password:
            # The entry is a secret: say which one is malformed, never what it holds.
            return f"FLOWER_BASIC_AUTH entry {index + 1} is not user:password with both parts set; {FIX}"
    return None


def _running_flower() -> bool:
    """Whether this process is running Celery's ``flower`` command."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.command.name == "flower"
