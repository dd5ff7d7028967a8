"""What every command shares: settings from the global options, one lazily built client, ``--json``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ductape_jobs.client import Ductape
from ductape_jobs.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# The exit codes scripts rely on (documented in --help and the README).
EXIT_OK = 0
EXIT_PROBLEMS = 1  # doctor found problems; also any unexpected failure
EXIT_USAGE = 2  # usage or validation error (JobValidationError)
EXIT_NOT_FOUND = 3  # JobNotFoundError
EXIT_STATE = 4  # JobStateError
EXIT_UNAVAILABLE = 5  # BackendUnavailableError


class Context:
    """The global options, turned into settings and a client only when a command needs them."""

    def __init__(self, redis_url: str | None, prefix: str | None) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._settings: Settings | None = None
        self._client: Ductape | None = None

    @property
    def settings(self) -> Settings:
        """``Settings.from_env()`` with ``--redis-url`` and ``--prefix`` applied on top."""
        if self._settings is None:
            self._settings = Settings.from_env(redis_url=self.redis_url, key_prefix=self.prefix)
        return self._settings

    @property
    def ductape(self) -> Ductape:
        """The library client every job command goes through."""
        if self._client is None:
            settings = self.settings
            try:
                self._client = Ductape(settings=settings)
            except ValueError as exc:  # redis-py refuses the URL itself (scheme, port)
                raise click.UsageError(f"--redis-url/REDIS_URL is not a usable Redis URL: {exc}") from None
        return self._client

    def close(self) -> None:
        """Release the client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None


pass_context = click.make_pass_decorator(Context)


def json_option(fn: F) -> F:
    """``--json``: machine-readable output on stdout instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts).")(fn)
