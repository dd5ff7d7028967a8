"""Settings, built once per entry point from the environment (``DUCTAPE_*``, ``REDIS_URL``).

Nothing here reads the environment at import time; ``Settings.from_env()`` is called by the
client, the worker app and the beat, and the result is passed down.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ductape_jobs.errors import JobValidationError
from ductape_jobs.terms import MAX_TIMEOUT_S, SLUG, JobSpec
from ductape_jobs.urls import SentinelTarget, sentinel_target, url_secrets

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET_FIELDS = ("redis_url", "sessions", "sentinel_password")  # shown as *** in any error


class Secret:
    """A secret value (a URL with its password, a password): shown as ``***`` everywhere."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The value itself; never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class CacheConfig:
    """A named result cache: successful results live for ``ttl_ms``."""

    ttl_ms: int


class Invalid(ValueError):
    """A setting's value refused: why, what was given, and where inside it (a cache's ttl_ms)."""

    def __init__(self, reason: str, got: object, where: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason, self.got, self.where = reason, got, where


# Each field's parser checks and converts what the environment or a caller gives (text from the
# environment, typed values from code), raising Invalid; Settings.__post_init__ runs them all.
Parse = Callable[[Any], Any]


def _setting(default: Any, parse: Parse) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


def number(default: float | None, **bounds: Any) -> Any:
    """A whole number (or a float with ``kind=float``) within ``bounds`` (``ge``, ``gt``, ``le``:
    _numbers); None only as the default says."""
    return _setting(default, _numbers(default, **bounds))


def _numbers(
    default: float | None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    kind: type[int] | type[float] = int,
) -> Parse:
    def parse(value: Any) -> int | float | None:
        if value is None and default is None:
            return None
        got = value
        if isinstance(value, str):
            value = value.strip()
        try:
            if isinstance(value, bool):
                raise ValueError
            if kind is int and isinstance(value, str) and not value.lstrip("+-").isdigit():
                value = float(value)  # "5.0" is 5, as pydantic read it; "5.5" is refused below
            parsed = kind(value)
            if kind is int and isinstance(value, float) and value != parsed:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            what = "an integer" if kind is int else "a number"
            raise Invalid(f"Input should be {what}", got) from None
        if not math.isfinite(parsed):
            raise Invalid("Input should be a finite number", got)
        if ge is not None and parsed < ge:
            raise Invalid(f"Input should be greater than or equal to {ge}", got)
        if gt is not None and parsed <= gt:
            raise Invalid(f"Input should be greater than {gt}", got)
        if le is not None and parsed > le:
            raise Invalid(f"Input should be less than or equal to {le}", got)
        return parsed

    return parse


def text(default: str | None, *, pattern: str | None = None, min_length: int = 0) -> Any:
    """A string, matching ``pattern`` when given; None only as the default says."""

    def parse(value: Any) -> str | None:
        if value is None and default is None:
            return None
        if not isinstance(value, str):
            raise Invalid("Input should be a valid string", value)
        if len(value) < min_length:
            raise Invalid(f"String should have at least {min_length} character", value)
        if pattern is not None and not re.fullmatch(pattern, value):  # no trailing newline past $
            raise Invalid(f"String should match pattern '{pattern}'", value)
        return value

    return _setting(default, parse)


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def flag(default: bool) -> Any:
    """A boolean: true/false, yes/no, on/off, 1/0 (any case) from the environment."""

    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        word = value.strip().lower() if isinstance(value, str) else None
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise Invalid("Input should be a valid boolean (true or false)", value)

    return _setting(default, parse)


def names(default: tuple[str, ...] = ()) -> Any:
    """Names: a comma-separated string (blanks dropped) or a sequence of strings."""

    def parse(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise Invalid("Input should be a list of names", value)
        return tuple(value)

    return _setting(default, parse)


def secret(default: str | None) -> Any:
    """A secret string (a str, a Secret or pydantic's SecretStr), kept as a Secret."""

    def parse(value: Any) -> Secret | None:
        if value is None and default is None:
            return None
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise Invalid("Input should be a valid string", value)
        return Secret(value)

    return field(default=None if default is None else Secret(default), metadata={"parse": parse})


def _object(value: Any, where: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Invalid("Input should be a valid dictionary", value, where)
    return value


def caches() -> Any:
    """Named caches: {name: {"ttl_ms": n}} with n > 0 (a CacheConfig is taken as it is)."""

    def parse(value: Any) -> dict[str, CacheConfig]:
        parsed = {}
        for name, cache in _object(value).items():
            config = {"ttl_ms": cache.ttl_ms} if isinstance(cache, CacheConfig) else _object(cache, (name,))
            if set(config) != {"ttl_ms"}:
                raise Invalid("A cache holds exactly one field, ttl_ms", config, (name,))
            try:
                parsed[name] = CacheConfig(_ttl(config["ttl_ms"]))
            except Invalid as bad:
                raise Invalid(bad.reason, bad.got, (name, "ttl_ms")) from None
        return parsed

    return _setting({}, parse)


_ttl = _numbers(1, gt=0)  # a cache's ttl_ms: a whole number above 0


def objects() -> Any:
    """Named objects (session types: sessions.session_types_from_config reads each)."""

    def parse(value: Any) -> dict[str, dict[str, Any]]:
        return {name: _object(config, (name,)) for name, config in _object(value).items()}

    return _setting({}, parse)


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything configurable, with the defaults docs/design.md section 10 names.

    A plain dataclass checked by its fields' parsers, not a pydantic model: beat and the worker
    build one at start-up, and beat never loads pydantic (~10 MB a process; bench figure 5).
    ``replace(**changes)`` makes a checked copy. A bad value raises JobValidationError naming
    the field and its variable, never showing a secret.
    """

    redis_url: Secret = secret(DEFAULT_REDIS_URL)
    # Redis behind Sentinel (README, "Redis with Sentinel"): REDIS_URL in kombu's form
    # (sentinel://[:pw@]host:26379;sentinel://host2:26379) or these addresses (host:port each,
    # REDIS_URL then giving only the password and database); the master's name; the sentinels'
    # own password, when they have one.
    sentinels: tuple[str, ...] = names()
    sentinel_master: str | None = text(None, min_length=1)
    sentinel_password: Secret | None = secret(None)
    # Each write that must survive a failover (urls above: see store.REPLICATED) waits until
    # this many replicas have it (Redis WAIT), at most wait_timeout_ms; 0: no waiting.
    wait_replicas: int = number(0, ge=0, le=16)
    wait_timeout_ms: int = number(1_000, ge=1, le=60_000)
    key_prefix: str = text("ductape", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # How many shards the jobs (and the due index, and beat's leadership) are split into: fixed
    # at deployment, the same in every process; changed only by moving the records (README,
    # "Several beats"). 1 keeps the key names of deployments older than shards.
    shards: int = number(1, ge=1, le=1024)
    envs: tuple[str, ...] = names(("dev", "staging", "prd"))
    handlers: tuple[str, ...] = names()
    worker_envs: tuple[str, ...] = names()  # empty: a worker serves every env
    require_handler: bool = flag(True)
    task_events: bool = flag(False)  # Flower switches them on while it watches; always-on costs ~2x
    caches: dict[str, CacheConfig] = caches()
    sessions: dict[str, dict[str, Any]] = objects()
    horizon_ms: int = number(60_000, ge=1_000)
    visibility_timeout_s: int = number(3_600, ge=1)
    # How long a started run is held against other deliveries without a heartbeat: the worker
    # running it renews it every third of this, so it only runs out when that worker is gone.
    run_lease_s: int = number(60, ge=1)
    # A job's default ``timeout``: the handler is interrupted after this long (a failed attempt)
    # and its process killed a grace period later (terms.hard_limit_s).
    job_timeout_s: int = number(300, ge=1, le=MAX_TIMEOUT_S)
    # Messages each worker process reserves ahead of the one it runs (Celery's prefetch multiplier):
    # 2 keeps a process fed between runs; 1 is fairer when handlers run for a long time.
    prefetch_multiplier: int = number(2, ge=1)
    max_input_bytes: int = number(256 * 1024, ge=2)
    max_input_depth: int = number(32, ge=1)
    min_every_ms: int = number(1_000, ge=1)
    backoff_cap_s: int = number(300)
    beat_lock_ttl_ms: int = number(5_000, ge=500)
    beat_batch: int = number(1_000, ge=1)
    beat_max_sleep_ms: int = number(1_000, ge=10)
    runs_kept: int = number(100, ge=1)
    # Lifecycle (README, "Sizing Redis"): how long finished records stay, then leave with their
    # index entries. Seconds, so a soak test can shorten them; days in production.
    run_retention_s: int = number(7 * 86_400, ge=1)
    job_retention_s: int = number(7 * 86_400, ge=1)
    dead_retention_s: int = number(30 * 86_400, ge=1)
    dead_max: int = number(100_000, ge=1)
    # How long an idempotency_key returns its one-off (the key's TTL): 1 s .. 30 days.
    idempotency_window_s: int = number(86_400, ge=1, le=30 * 86_400)
    socket_timeout_s: float = number(5.0, gt=0, kind=float)
    metrics_port: int | None = number(None, ge=1, le=65_535)  # beat's Prometheus endpoint
    metrics_addr: str = text("127.0.0.1", min_length=1)  # the address it listens on
    metrics_per_job: bool = flag(True)  # false: series per (product, event, env) only, never per job
    metrics_linger_s: int = number(300, ge=0)  # an ended schedule's series stay this long

    def __post_init__(self) -> None:
        for spec in fields(self):
            try:
                object.__setattr__(self, spec.name, spec.metadata["parse"](getattr(self, spec.name)))
            except Invalid as bad:
                raise _refused(spec.name, bad) from None
        for name in ("envs", "worker_envs"):
            try:
                _check_envs(name, getattr(self, name), self.envs)
            except Invalid as bad:
                raise _refused(name, bad) from None
        try:  # a Sentinel URL without its master's name (or an unusable address) fails here, at start
            self.sentinel_target()
        except ValueError as exc:
            raise JobValidationError("settings.redis_url", str(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked as a new Settings is."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return f"Settings(key_prefix={self.key_prefix!r}, envs={self.envs!r}, redis_url='***')"

    __str__ = __repr__

    @property
    def url(self) -> str:
        """The Redis URL, password included; never log it."""
        return self.redis_url.get_secret_value()

    def sentinel_target(self) -> SentinelTarget | None:
        """The Sentinel deployment REDIS_URL or DUCTAPE_SENTINELS names, or None for one server."""
        password = self.sentinel_password.get_secret_value() if self.sentinel_password else None
        return sentinel_target(self.url, self.sentinels, self.sentinel_master, password)

    def secrets(self) -> list[str]:
        """Every Redis password these settings hold (URL and sentinels'), for scrubbing texts."""
        found = url_secrets(self.url)
        if self.sentinel_password is not None and self.sentinel_password.get_secret_value():
            found.append(self.sentinel_password.get_secret_value())
        return found

    def queue_for(self, env: str) -> str:
        """The Celery queue that carries runs of ``env`` under this key prefix."""
        return f"{self.key_prefix}.{env}"

    def timeout_s(self, spec: JobSpec) -> int:
        """A job's timeout: its own, or the default for records that predate timeouts."""
        return spec.timeout_s or self.job_timeout_s

    def served_queues(self) -> tuple[str, ...]:
        """The queues a worker built from these settings consumes."""
        return tuple(self.queue_for(env) for env in (self.worker_envs or self.envs))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``REDIS_URL`` and ``DUCTAPE_*`` variables, then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if environ.get("REDIS_URL"):
            values["redis_url"] = environ["REDIS_URL"]
        names = [spec.name for spec in fields(cls)]
        overrides = {k: v for k, v in overrides.items() if v is not None}  # None: not given
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise JobValidationError("settings", f"{unknown} are not settings (known: {', '.join(names)})")
        for name in names:
            raw = environ.get(f"DUCTAPE_{name.upper()}")
            if raw is None or name == "redis_url":
                continue
            if name in ("caches", "sessions"):
                values[name] = _json_setting(name, raw)
            else:
                values[name] = raw
        values.update(overrides)
        return cls(**values)


def _refused(name: str, bad: Invalid) -> JobValidationError:
    """The error for a refused value: the field, why, what was given (*** for a secret), the fix."""
    where = ".".join((name, *bad.where))
    shown = "***" if name in SECRET_FIELDS else repr(bad.got)
    return JobValidationError(f"settings.{where}", f"{bad.reason} (got {shown}); fix DUCTAPE_{name.upper()}")


def _check_envs(name: str, value: tuple[str, ...], envs: tuple[str, ...]) -> None:
    # Each env names a Celery queue; an empty list would leave nothing to schedule on.
    for env in value:
        if not re.fullmatch(SLUG, env):
            raise Invalid(f"{env!r} is not a valid env name; use letters, digits, '_', '.' or '-'", value)
    if name == "envs" and not value:
        raise Invalid("needs at least one env, e.g. 'dev,staging,prd'", value)
    unknown = [env for env in value if env not in envs]
    if unknown:
        raise Invalid(f"{unknown} are not in DUCTAPE_ENVS; a worker can only serve configured envs", value)


def _json_setting(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise JobValidationError(
            f"settings.{name}", f"DUCTAPE_{name.upper()} must be a JSON object"
        ) from None
