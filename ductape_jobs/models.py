"""The vocabulary, written down once. No I/O here.

- a *job* is what a caller schedules (``JobRequest`` in, ``JobRecord`` stored);
- a *run* is one execution of a job (``RunRecord``), with a deterministic id
  ``{job_id}:{nominal_run_ms}`` that is also its Celery task id;
- a *repeat* is a job's recurrence rule (``Repeat`` in, ``timing.Rule`` normalized);
- a *task* is the Celery callable that executes runs of one event.

The seed's wire names (``start_at``, ``every``, ``endDate``) are converted to milliseconds here
and nowhere else.
"""

from __future__ import annotations

import difflib
import math
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ductape_jobs import timing
from ductape_jobs.errors import JobValidationError, SessionError, shown
from ductape_jobs.terms import (
    KEY,
    KEY_FIX,
    MAX_INT,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    SLUG,
    SLUG_FIX,
    JobSpec,
    JobStatus,
    RunStatus,
    check_task_namespace,
    ms_to_datetime,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Repeat(_Frozen):
    """A recurrence rule as the caller writes it (seed: IJobRepeatOptions)."""

    cron: str | None = None
    every: int | None = Field(default=None, description="interval in milliseconds")
    limit: int | None = None
    end_date: int | float | str | datetime | None = Field(
        default=None, validation_alias=AliasChoices("endDate", "end_date")
    )
    tz: str | None = None
    misfire: Literal["skip", "run_all"] = "skip"
    catchup_ms: int = Field(default=0, ge=0, le=MAX_INT, strict=True)  # strict: "0" is not 0
    # Each run falls due within [0, jitter_ms) after its slot, by a hash of its run id (jitter.py).
    jitter_ms: int = Field(default=0, ge=0, le=MAX_INT, strict=True)
    # New schedules skip a slot while their previous run is unfinished (Temporal's default, and
    # what the slow-job-on-a-fast-schedule reports ask for); a stored rule without the field
    # (written before it existed) keeps overlapping: timing.Rule's default is 'allow'.
    overlap: timing.Overlap = "skip"

    @model_validator(mode="before")
    @classmethod
    def _one_end_spelling(cls, data: object) -> object:
        return _one_spelling(data, "endDate", "end_date", "repeat.endDate")

    @field_validator("cron", mode="before")
    @classmethod
    def _cron(cls, value: object) -> object:
        return None if value in (None, "") else timing.validate_cron(value)

    @field_validator("tz", mode="before")
    @classmethod
    def _tz(cls, value: object) -> object:
        if value in (None, ""):
            return None
        timing.parse_zone(value)
        return value

    @field_validator("every", "limit", mode="before")
    @classmethod
    def _strict_int(cls, value: object, info: Any) -> object:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a whole number, got {shown(value)}")
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise ValueError(f"must be a whole number, got {shown(value)}")
        number = int(value)
        if number > MAX_INT:
            raise ValueError(f"must be at most {MAX_INT} (2**63 - 1), got {shown(value)}")
        if info.field_name == "every" and number < 1:
            raise ValueError(f"must be a positive interval in milliseconds, got {shown(value)}")
        if info.field_name == "limit" and number < 1:
            raise ValueError(
                f"must be at least 1 (it counts every run, the first included), got {shown(value)}"
            )
        return number

    @field_validator("end_date", mode="before")
    @classmethod
    def _end(cls, value: object) -> object:
        if value in (None, ""):
            return None
        return timing.parse_instant_ms(value, "repeat.endDate")

    @model_validator(mode="after")
    def _one_rule(self) -> Repeat:
        if self.is_empty:
            return self
        if (self.cron is None) == (self.every is None):
            raise ValueError(
                "give exactly one of 'cron' or 'every' (got "
                + ("both" if self.cron is not None else "neither")
                + ")"
            )
        if self.tz is not None and self.cron is None:
            raise ValueError("'tz' applies to 'cron' only; drop it or use a cron rule")
        timing.check_jitter(self.jitter_ms, self.every, self.cron)
        return self

    @property
    def is_empty(self) -> bool:
        """``{}`` or all-empty means no repeat; any field given a value (``misfire`` alone too) is a rule."""
        return all(getattr(self, name) is None for name in self.model_fields_set)

    @property
    def end_ms(self) -> int | None:
        """The inclusive end instant in epoch ms."""
        # Typed with every spelling a caller may pass; the _end validator already made it epoch ms.
        assert self.end_date is None or isinstance(self.end_date, int)
        return self.end_date

    def to_rule(self) -> timing.Rule:
        """The normalized rule the occurrence maths works on."""
        return timing.Rule(
            cron=self.cron,
            tz=self.tz or "UTC",
            every_ms=self.every,
            limit=self.limit,
            end_ms=self.end_ms,
            misfire=self.misfire,
            catchup_ms=self.catchup_ms,
            jitter_ms=self.jitter_ms,
            overlap=self.overlap,
        )


class SessionRef(_Frozen):
    """A session to resolve ``$Session{...}`` placeholders from (seed: ISession)."""

    tag: str = Field(min_length=1, max_length=128, strict=True)
    token: SecretStr


class JobRequest(_Frozen):
    """What a caller asks for (seed: IJobProcessorInput); validated up front."""

    # strict: pydantic would otherwise take bytes for a str (b"dev" -> "dev") and bytes keys in
    # input; a wrong type is refused, never converted.
    env: str = Field(pattern=SLUG, strict=True)
    product_tag: str = Field(
        validation_alias=AliasChoices("product_tag", "product"), pattern=SLUG, strict=True
    )
    event: str = Field(pattern=SLUG, strict=True)
    start_at: int | float | str | datetime = 0
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    timeout: int | None = None  # seconds, 1..MAX_TIMEOUT_S; None: the DUCTAPE_JOB_TIMEOUT_S default
    input: dict[StrictStr, Any] = Field(default_factory=dict, strict=True)
    app: str | None = Field(default=None, pattern=SLUG, strict=True)
    cache: str | None = Field(default=None, pattern=SLUG, strict=True)
    session: SessionRef | None = None
    repeat: Repeat | None = None
    # The job's own name: scheduling the same key again updates that job in place (docs/design.md
    # section 4, "Keys and updates").
    key: str | None = Field(default=None, pattern=KEY, strict=True)
    # A one-off's retry token: the same key within DUCTAPE_IDEMPOTENCY_WINDOW_S gets the same job.
    idempotency_key: str | None = Field(default=None, pattern=KEY, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _one_product_spelling(cls, data: object) -> object:
        return _one_spelling(data, "product_tag", "product", "product_tag")

    @field_validator("product_tag")
    @classmethod
    def _not_celery(cls, value: str) -> str:
        check_task_namespace(value)
        return value

    @field_validator("start_at", mode="before")
    @classmethod
    def _start(cls, value: object) -> object:
        return timing.parse_instant_ms(value, "start_at")

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
            raise ValueError(f"must be a whole number of extra attempts 0..{MAX_RETRIES}, got {shown(value)}")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TIMEOUT_S:
            raise ValueError(f"must be a whole number of seconds 1..{MAX_TIMEOUT_S}, got {shown(value)}")
        return value

    @field_validator("repeat", mode="after")
    @classmethod
    def _drop_empty(cls, value: Repeat | None) -> Repeat | None:
        return None if value is None or value.is_empty else value

    @model_validator(mode="after")
    def _one_identity(self) -> JobRequest:
        if self.idempotency_key is not None and self.key is not None:
            raise JobValidationError(
                "idempotency_key",
                "give key or idempotency_key, not both: scheduling the same key again already "
                "returns (and updates) the same job",
            )
        if self.idempotency_key is not None and self.repeat is not None:
            raise JobValidationError(
                "idempotency_key",
                "is for one-off jobs; name a repeating job with key= instead "
                "(the same key again updates it in place)",
            )
        return self

    @property
    def start_ms(self) -> int:
        """Earliest run time in epoch ms; 0 means now."""
        # Typed with every spelling a caller may pass; the _start validator already made it epoch ms.
        assert isinstance(self.start_at, int)
        return self.start_at

    @classmethod
    def parse(cls, data: object) -> JobRequest:
        """Validate ``data`` (a dict or a JobRequest), raising one JobValidationError."""
        if isinstance(data, JobRequest):
            return data
        if not isinstance(data, dict):
            raise JobValidationError("request", f"must be a dict of job fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, data) from None


def _one_spelling(data: object, name: str, alias: str, field: str) -> object:
    """Refuse a request that spells one field both ways (pydantic would call one 'unknown')."""
    if isinstance(data, dict) and name in data and alias in data:
        raise JobValidationError(
            field,
            f"given twice, as {name}={shown(data[name])} and {alias}={shown(data[alias])}; keep one",
        )
    return data


def validation_error(exc: ValidationError, data: Any) -> JobValidationError:
    """Turn pydantic's error list into one JobValidationError naming the first bad field."""
    first = exc.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    field = ".".join(loc) or "request"
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, JobValidationError):
        return cause
    # Anything under `session` may be a token passed in the wrong place: never echo it.
    secretive = loc[:1] == ["session"]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = _unknown_field_message(loc)
    elif first["type"] == "missing":
        message = "is required"
    elif first["type"] == "string_pattern_mismatch" and loc[-1] in ("key", "idempotency_key"):
        message = f"{shown(first.get('input'))} is not a valid key; {KEY_FIX}"
    elif first["type"] == "string_pattern_mismatch":
        message = f"{shown(first.get('input'))} is not a valid tag; {SLUG_FIX}"
    elif first["type"] != "value_error":
        got = "<secret>" if secretive else shown(first.get("input"))
        message = f"{message} (got {got})"
    return (SessionError if secretive else JobValidationError)(field, message)


def _unknown_field_message(loc: list[str]) -> str:
    """Name the fields that are allowed where the unknown one was, and the likely intended one."""
    nested: dict[str, type[BaseModel]] = {"repeat": Repeat, "session": SessionRef}
    model = nested.get(loc[0], JobRequest) if len(loc) > 1 else JobRequest
    known = []
    for name, info in model.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None)
        known.append(str(choices[0]) if choices else name)
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"is not a known field (known: {', '.join(known)}){hint}"


class JobRecord(_Frozen):
    """A job as ``ductape.job.get`` returns it."""

    job_id: str
    spec: JobSpec
    status: JobStatus
    recurring: bool
    next_run_ms: int | None = None
    runs_done: int = 0
    attempts: int = 0
    last_run_id: str | None = None
    last_error: str | None = None
    result: Any = None
    created_ms: int
    updated_ms: int
    skipped_slots: int = 0  # slots repeat.overlap skipped (not counted toward limit)
    version: int = 0  # bumped by every update (UPDATE_JOB); beat's claim checks it

    @property
    def next_run_at(self) -> datetime | None:
        """Next run time as an aware UTC datetime."""
        return ms_to_datetime(self.next_run_ms)


class RunRecord(_Frozen):
    """One execution of a job, as ``ductape.job.runs`` returns it."""

    run_id: str
    job_id: str
    nominal_ms: int
    status: RunStatus
    attempts: int = 0
    queued_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    error: str | None = None
    traceback: str | None = None
    result: Any = None
    cached: bool = False
    manual: bool = False


class ScheduleHandle(_Frozen):
    """What ``schedule()`` returns."""

    job_id: str
    status: JobStatus
    scheduled_at: datetime
    recurring: bool
    next_run_at: datetime | None
    created: bool = True
    updated: bool = False  # an existing job (its key's, or a twin asking other settings) was changed
