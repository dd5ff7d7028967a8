"""From a validated request to what gets written: settings checks, sessions, the first run.

Pure: the clock and ids come in as arguments, so every rule here is unit-tested without Redis.
Imports neither Celery nor the store (the message builder comes in as ``build``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from collections.abc import Callable
from typing import Any

from ductape_jobs import timing
from ductape_jobs.errors import JobValidationError, SessionError
from ductape_jobs.jitter import Spread
from ductape_jobs.keys import route_of, routed
from ductape_jobs.models import JobRequest, ScheduleHandle
from ductape_jobs.records import Message, NewJob
from ductape_jobs.sealed import seal_input
from ductape_jobs.sessions import OPENER, Sessions, has_placeholders, redact, resolve_placeholders
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec, JobStatus, ms_to_datetime, run_id_for

# The last instant a datetime holds (9999-12-31T23:59:59.999Z): a run after it cannot be shown.
_LAST_MS = 253_402_300_799_999
_JSON_FIX = "use only objects with string keys, arrays, strings, finite numbers, true/false and null"
_JSON_SCALARS = (str, int, float, bool, type(None))
Build = Callable[[str, JobSpec, int, int], Message]  # run_id, spec, nominal_ms, now_ms -> message
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_OLDER_DIGESTS = "older_digests"  # not a JobSpec field: NewJob carries it to the dedupe check
_NOT_UNICODE = "text that is not valid Unicode (a lone surrogate, e.g. '\\ud800')"


def plan_job(
    req: JobRequest,
    settings: Settings,
    sessions: Sessions,
    now_ms: int,
    job_id: str,
    build: Build | None = None,
) -> NewJob:
    """Check the request against the settings and decide its first run; raises JobValidationError.

    With ``build`` (``MessageBuilder.build``), a run due now comes with its Celery message.
    """
    if req.env not in settings.envs:
        raise JobValidationError(
            "env",
            f"{req.env!r} is not a configured environment; use one of {list(settings.envs)} (DUCTAPE_ENVS)",
        )
    if req.cache is not None and req.cache not in settings.caches:
        known = sorted(settings.caches) or "none configured"
        raise JobValidationError(
            "cache", f"{req.cache!r} is not a configured cache (known: {known}); add it to DUCTAPE_CACHES"
        )
    input_json = check_input(req.input, settings)
    spec_fields = _session_fields(req, input_json, sessions, settings, now_ms)
    older_digests = spec_fields.pop(_OLDER_DIGESTS, ())
    rule = req.repeat.to_rule() if req.repeat is not None else None
    spec = JobSpec(
        env=req.env,
        product_tag=req.product_tag,
        event=req.event,
        retries=req.retries,
        timeout_s=req.timeout or settings.job_timeout_s,
        app=req.app,
        cache=req.cache,
        start_ms=req.start_ms,
        rule=None if rule is None else _stored_rule(rule),
        created_ms=now_ms,
        key=req.key,
        idempotency_key=req.idempotency_key,
        **spec_fields,
    )
    job_id = routed(job_id, identity_route(spec))
    if rule is None:
        plan = _plan_once(job_id, spec, settings, now_ms, build)
    else:
        plan = _plan_repeat(job_id, spec, rule, settings, now_ms, build)
    if req.key is not None:
        # A keyed job is found by its key, not by its fingerprint, while it is live.
        plan = dataclasses.replace(plan, dedupe=plan.status in _LIVE)
    if req.idempotency_key is not None:
        plan = dataclasses.replace(plan, idempotency_ttl_ms=settings.idempotency_window_s * 1000)
    return dataclasses.replace(plan, older_digests=older_digests) if older_digests else plan


def identity_route(spec: JobSpec) -> str:
    """Where a job's identity entry is looked up before its id exists, which its id then starts
    with (keys.routed), so the entry and the job share a shard: its key's route, else its
    idempotency key's (a request has one or the other), else (a schedule) its fingerprint's
    first digits, taken without the session's digest: that changes with the session key, and the
    twin sealed under an older key (ops.producer._fingerprints) must be found in the same shard."""
    if spec.key is not None:
        return route_of(spec.key)
    if spec.idempotency_key is not None:
        return route_of(spec.idempotency_key)
    if spec.rule is None:
        return ""
    unsealed = spec if spec.input_digest is None else dataclasses.replace(spec, input_digest=None)
    return unsealed.fingerprint()


def _stored_rule(rule: timing.Rule) -> dict[str, Any]:
    """The rule as a spec holds it; no jitter is left out, so a schedule's record and fingerprint
    stay what they were before jitter existed (the same schedule still dedupes to its job)."""
    stored = rule.__dict__.copy()
    if not stored["jitter_ms"]:
        del stored["jitter_ms"]
    return stored


_LIVE = (JobStatus.SCHEDULED, JobStatus.QUEUED)


def _first_run(job_id: str, spec: JobSpec, at_ms: int, now_ms: int, build: Build | None) -> dict[str, Any]:
    run_id = run_id_for(job_id, at_ms)
    message = None if build is None else build(run_id, spec, at_ms, now_ms)
    return {"run_id": run_id, "nominal_ms": at_ms, "message": message}


def _plan_once(job_id: str, spec: JobSpec, settings: Settings, now_ms: int, build: Build | None) -> NewJob:
    run_at_ms = max(spec.start_ms, now_ms)
    if run_at_ms - now_ms <= settings.horizon_ms:
        return NewJob(
            job_id,
            spec,
            JobStatus.QUEUED,
            False,
            None,
            run_at_ms,
            1,
            **_first_run(job_id, spec, run_at_ms, now_ms, build),
        )
    return NewJob(job_id, spec, JobStatus.SCHEDULED, False, run_at_ms, run_at_ms, 0, due_ms=run_at_ms)


def _plan_repeat(
    job_id: str, spec: JobSpec, rule: timing.Rule, settings: Settings, now_ms: int, build: Build | None
) -> NewJob:
    _check_rate(rule, settings)
    if rule.end_ms is not None and rule.end_ms < now_ms:
        raise JobValidationError(
            "repeat.endDate",
            f"{_iso(rule.end_ms)} is already past; give a later end date or drop it",
        )
    first_ms = timing.first_run_ms(rule, spec.start_ms, now_ms)
    if first_ms is None and rule.end_ms is None:
        raise JobValidationError(
            "start_at" if spec.start_ms > now_ms else "repeat",
            "the schedule's first run would fall after the year 9999; give an earlier start_at "
            "or another rule",
        )
    if first_ms is None:
        unbounded_ms = timing.first_run_ms(dataclasses.replace(rule, end_ms=None), spec.start_ms, now_ms)
        at = f" at {_iso(unbounded_ms)}" if unbounded_ms is not None else ""
        raise JobValidationError(
            "repeat.endDate",
            f"{_iso(rule.end_ms or 0)} is before the first run{at}, so the job would never run; "
            "give a later end date or an earlier start_at",
        )
    if (
        rule.every_ms is not None
        and rule.end_ms is None
        and rule.limit != 1
        and first_ms + rule.every_ms > _LAST_MS
    ):
        raise JobValidationError(
            "repeat.every",
            f"{rule.every_ms} ms puts the second run after the year 9999; it is in milliseconds "
            "(86400000 = 24 h): give a shorter interval, or limit: 1",
        )
    spread = Spread(rule, job_id, first_ms)  # the first slot is the schedule's phase anchor
    first_due_ms = spread.due_ms(first_ms)
    if first_due_ms > now_ms:
        at_ms = first_due_ms
        return NewJob(job_id, spec, JobStatus.SCHEDULED, True, at_ms, first_ms, 0, due_ms=at_ms, dedupe=True)
    # Due now: the first run is released here, as beat would release it, and the schedule advanced.
    following = spread.next_run(first_ms, 1, now_ms)
    next_ms = None if following is None else following[1]
    status = JobStatus.SCHEDULED if next_ms is not None else JobStatus.COMPLETED
    return NewJob(
        job_id,
        spec,
        status,
        True,
        next_ms,
        first_ms,
        1,
        **_first_run(job_id, spec, first_ms, now_ms, build),
        due_ms=next_ms,
        dedupe=next_ms is not None,
    )


def _check_rate(rule: timing.Rule, settings: Settings) -> None:
    """No repeat, by interval or by cron, runs more often than DUCTAPE_MIN_EVERY_MS allows."""
    if rule.every_ms is not None and rule.every_ms < settings.min_every_ms:
        raise JobValidationError(
            "repeat.every",
            f"{rule.every_ms} ms is below the minimum of {settings.min_every_ms} ms; it is in milliseconds "
            "(86400000 = 24 h); DUCTAPE_MIN_EVERY_MS sets the minimum",
        )
    gap_ms = None if rule.cron is None else timing.cron_min_gap_ms(rule.cron)
    if gap_ms is not None and gap_ms < settings.min_every_ms:
        raise JobValidationError(
            "repeat.cron",
            f"{rule.cron!r} runs as often as every {gap_ms} ms, below the minimum of "
            f"{settings.min_every_ms} ms; run it less often (fewer values in its seconds or minutes "
            "field); DUCTAPE_MIN_EVERY_MS sets the minimum",
        )


def check_input(value: dict[str, Any], settings: Settings) -> str:
    """Input must be JSON, at most max_input_bytes serialized and max_input_depth deep; its JSON."""
    _check_json_shape(value, settings.max_input_depth)
    try:
        text = _COMPACT.encode(value)  # ASCII (escaped), so its length is its size in bytes
    except (TypeError, ValueError) as exc:  # _check_json_shape should have caught it first
        raise JobValidationError("input", f"must be JSON-serializable: {exc}; {_JSON_FIX}") from None
    if len(text) > settings.max_input_bytes:
        raise JobValidationError(
            "input",
            f"is {len(text)} bytes serialized; the limit is {settings.max_input_bytes} "
            "(DUCTAPE_MAX_INPUT_BYTES); store large data elsewhere and pass a reference",
        )
    return text


def _check_json_shape(value: Any, limit: int) -> None:
    """Refuse what JSON cannot carry as is, or nesting past ``limit``, naming where (no recursion)."""
    if _flat(value):
        return
    # Each entry carries its path as a (parent, step) chain, turned into text only for a message.
    # Exact built-in types take the quick branches; anything else (subclasses) is looked at closely.
    stack: list[tuple[Any, int, Any]] = [(value, 1, None)]
    while stack:
        item, level, crumbs = stack.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii() and not _is_unicode(item):
                raise JobValidationError("input", f"{_path(crumbs)} is {_NOT_UNICODE}; {_JSON_FIX}")
        elif kind is int or kind is bool or item is None:
            continue
        elif isinstance(item, dict | list | tuple):
            if level > limit:
                raise JobValidationError(
                    "input",
                    f"is nested deeper than {limit} levels (at {_path(crumbs)}); flatten it "
                    "(DUCTAPE_MAX_INPUT_DEPTH)",
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if type(key) is not str or not key.isascii():
                        _check_key(key, crumbs)
                    stack.append((child, level + 1, (crumbs, key)))
            else:
                stack.extend((child, level + 1, (crumbs, i)) for i, child in enumerate(item))
        elif isinstance(item, str) and not _is_unicode(item):
            raise JobValidationError("input", f"{_path(crumbs)} is {_NOT_UNICODE}; {_JSON_FIX}")
        elif not isinstance(item, _JSON_SCALARS) or (isinstance(item, float) and not math.isfinite(item)):
            raise JobValidationError(
                "input",
                f"{_path(crumbs)} is {reprlib.repr(item)} ({type(item).__name__}), not JSON; {_JSON_FIX}",
            )


def _flat(value: Any) -> bool:
    """Whether value is a dict of ASCII keys to plain scalars (most inputs): nothing to refuse."""
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is not int and kind is not bool and item is not None:
            return False
    return True


def _check_key(key: Any, crumbs: Any) -> None:
    if not isinstance(key, str):
        # json.dumps would quietly turn the key into a string: the handler would get different
        # data than was scheduled.
        raise JobValidationError(
            "input",
            f"{_path(crumbs)} has the key {reprlib.repr(key)} ({type(key).__name__}); {_JSON_FIX}",
        )
    if not _is_unicode(key):
        raise JobValidationError("input", f"{_path(crumbs)} has a key {_NOT_UNICODE}; {_JSON_FIX}")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be stored: a lone surrogate ('\\ud800') has no UTF-8 form."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _path(crumbs: Any) -> str:
    steps: list[str] = []
    while crumbs is not None:
        crumbs, step = crumbs
        steps.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return "input" + "".join(reversed(steps))


def _session_fields(
    req: JobRequest, input_json: str, sessions: Sessions, settings: Settings, now_ms: int
) -> dict[str, Any]:
    """Resolve $Session{...} placeholders; only the masked input and a sealed copy are kept."""
    if req.session is None:
        # A placeholder shows in the input's JSON as is; only then is the input walked.
        if OPENER in input_json and has_placeholders(req.input):
            raise SessionError(
                "session",
                "input has $Session{...} placeholders but no session was given; pass session={tag, token}",
            )
        return {"input": req.input}
    data = sessions.verify(req.session.tag, req.session.token.get_secret_value(), now_s=now_ms / 1000)
    resolution = resolve_placeholders(req.input, data)
    check_input(resolution.value, settings)
    if not resolution.session_paths:
        return {"input": resolution.value}
    ring = sessions.ring(req.session.tag)
    canonical = json.dumps(resolution.value, sort_keys=True, separators=(",", ":"))
    digest, *older = ring.digests(canonical)
    return {
        "input": redact(resolution.value, resolution.session_paths),
        "redact_paths": [list(p) for p in resolution.session_paths],
        "session_tag": req.session.tag,
        "sealed": seal_input(ring, resolution.value, resolution.session_values),
        "input_digest": digest,
        _OLDER_DIGESTS: tuple(older),
    }


def _iso(value_ms: int) -> str:
    when = ms_to_datetime(value_ms)
    return when.isoformat() if when else "?"


def handle_of(plan: NewJob) -> ScheduleHandle:
    """What ``schedule()`` hands back for a job it wrote as planned."""
    when = plan.nominal_ms if plan.run_id is not None else plan.next_run_ms
    return ScheduleHandle(
        job_id=plan.job_id,
        status=JobStatus.QUEUED if plan.run_id is not None and not plan.recurring else plan.status,
        scheduled_at=ms_to_datetime(when or plan.anchor_ms),
        recurring=plan.recurring,
        next_run_at=ms_to_datetime(plan.next_run_ms if plan.recurring else when),
    )
