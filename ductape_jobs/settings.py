"""Settings, built once per entry point from the environment (``DUCTAPE_*``, ``REDIS_URL``).

Nothing here reads the environment at import time; ``Settings.from_env()`` is called by the
client, the worker app and the beat, and the result is passed down.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ductape_jobs.errors import JobValidationError
from ductape_jobs.models import MAX_TIMEOUT_S, SLUG, JobSpec
from ductape_jobs.urls import SentinelTarget, sentinel_target, url_secrets

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class CacheConfig(BaseModel):
    """A named result cache: successful results live for ``ttl_ms``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ttl_ms: int = Field(gt=0)


class Settings(BaseModel):
    """Everything configurable, with the defaults docs/design.md section 10 names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    # Redis behind Sentinel (README, "Redis with Sentinel"): REDIS_URL in kombu's form
    # (sentinel://[:pw@]host:26379;sentinel://host2:26379) or these addresses (host:port each,
    # REDIS_URL then giving only the password and database); the master's name; the sentinels'
    # own password, when they have one.
    sentinels: tuple[str, ...] = ()
    sentinel_master: str | None = Field(default=None, min_length=1)
    sentinel_password: SecretStr | None = None
    # Each write that must survive a failover (urls above: see store.REPLICATED) waits until
    # this many replicas have it (Redis WAIT), at most wait_timeout_ms; 0: no waiting.
    wait_replicas: int = Field(default=0, ge=0, le=16)
    wait_timeout_ms: int = Field(default=1_000, ge=1, le=60_000)
    key_prefix: str = Field(default="ductape", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # How many shards the jobs (and the due index, and beat's leadership) are split into: fixed
    # at deployment, the same in every process; changed only by moving the records (README,
    # "Several beats"). 1 keeps the key names of deployments older than shards.
    shards: int = Field(default=1, ge=1, le=1024)
    envs: tuple[str, ...] = ("dev", "staging", "prd")
    handlers: tuple[str, ...] = ()
    worker_envs: tuple[str, ...] = ()  # empty: a worker serves every env
    require_handler: bool = True
    task_events: bool = False  # Flower switches them on while it watches; always-on costs ~2x
    caches: dict[str, CacheConfig] = Field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = Field(default_factory=dict, repr=False)
    horizon_ms: int = Field(default=60_000, ge=1_000)
    visibility_timeout_s: int = Field(default=3_600, ge=1)
    # How long a started run is held against other deliveries without a heartbeat: the worker
    # running it renews it every third of this, so it only runs out when that worker is gone.
    run_lease_s: int = Field(default=60, ge=1)
    # A job's default ``timeout``: the handler is interrupted after this long (a failed attempt)
    # and its process killed a grace period later (models.hard_limit_s).
    job_timeout_s: int = Field(default=300, ge=1, le=MAX_TIMEOUT_S)
    # Messages each worker process reserves ahead of the one it runs (Celery's prefetch multiplier):
    # 2 keeps a process fed between runs; 1 is fairer when handlers run for a long time.
    prefetch_multiplier: int = Field(default=2, ge=1)
    max_input_bytes: int = Field(default=256 * 1024, ge=2)
    max_input_depth: int = Field(default=32, ge=1)
    min_every_ms: int = Field(default=1_000, ge=1)
    backoff_cap_s: int = 300
    beat_lock_ttl_ms: int = Field(default=5_000, ge=500)
    beat_batch: int = Field(default=1_000, ge=1)
    beat_max_sleep_ms: int = Field(default=1_000, ge=10)
    runs_kept: int = Field(default=100, ge=1)
    # Lifecycle (README, "Sizing Redis"): how long finished records stay, then leave with their
    # index entries. Seconds, so a soak test can shorten them; days in production.
    run_retention_s: int = Field(default=7 * 86_400, ge=1)
    job_retention_s: int = Field(default=7 * 86_400, ge=1)
    dead_retention_s: int = Field(default=30 * 86_400, ge=1)
    dead_max: int = Field(default=100_000, ge=1)
    # How long an idempotency_key returns its one-off (the key's TTL): 1 s .. 30 days.
    idempotency_window_s: int = Field(default=86_400, ge=1, le=30 * 86_400)
    socket_timeout_s: float = Field(default=5.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)  # beat's Prometheus endpoint
    metrics_addr: str = Field(default="127.0.0.1", min_length=1)  # the address it listens on
    metrics_per_job: bool = True  # false: series per (product, event, env) only, never per job
    metrics_linger_s: int = Field(default=300, ge=0)  # an ended schedule's series stay this long

    @field_validator("envs", "worker_envs", "handlers", "sentinels", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("envs", "worker_envs")
    @classmethod
    def _env_names(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # Each env names a Celery queue; an empty list would leave nothing to schedule on.
        for env in value:
            if not re.match(SLUG, env):
                raise ValueError(f"{env!r} is not a valid env name; use letters, digits, '_', '.' or '-'")
        if info.field_name == "envs" and not value:
            raise ValueError("needs at least one env, e.g. 'dev,staging,prd'")
        unknown = [env for env in value if env not in info.data.get("envs", value)]
        if unknown:
            raise ValueError(f"{unknown} are not in DUCTAPE_ENVS; a worker can only serve configured envs")
        return value

    @model_validator(mode="after")
    def _sentinel_complete(self) -> Settings:
        # A Sentinel URL without its master's name (or an unusable address) fails here, at start.
        self.sentinel_target()
        return self

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
        for name in cls.model_fields:
            raw = environ.get(f"DUCTAPE_{name.upper()}")
            if raw is None or name == "redis_url":
                continue
            if name in ("caches", "sessions"):
                values[name] = _json_setting(name, raw)
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = str(first["msg"]).removeprefix("Value error, ")
            if not first["loc"]:  # a check across settings (the Sentinel target): it names the fix
                raise JobValidationError("settings.redis_url", reason) from None
            field = ".".join(str(p) for p in first["loc"])
            secret = field.startswith(("redis_url", "sessions", "sentinel_password"))
            shown = "***" if secret else repr(first["input"])
            raise JobValidationError(
                f"settings.{field}", f"{reason} (got {shown}); fix DUCTAPE_{field.split('.')[0].upper()}"
            ) from None


def _json_setting(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise JobValidationError(
            f"settings.{name}", f"DUCTAPE_{name.upper()} must be a JSON object"
        ) from None
