"""The job hash's spec fields: a ``JobSpec`` (and what beat reads of it) as short hash fields.

A job's spec is stored as one short field per value that differs from its default (the field
names below; design §6.3), beside the job's state fields, so the whole hash stays a listpack
(every value within ``hash-max-listpack-value``, 64 bytes by default) for a typical job: a
listpack costs a few bytes a field, a hashtable about 50. The input is its own field (``in``), and
beat reads only the fields it needs (``BRIEF``), never the input.

Scripts carry the fields *packed*: names and values alternating, joined by ``SEP`` (the ASCII
unit separator, which no value holds: JSON and ``repr`` escape control characters, the other
values are slugs, numbers, cron expressions and zone names). CREATE_JOBS, UPDATE_JOB and
SYNC_IMPORTED write them (``spec_args``, ``put_spec`` of the prelude); BEGIN_RUN and READ_DUE
hand them back packed the same way (``packed``).

A record written before this layout holds ``spec`` (JobSpec JSON) and ``brief`` (JobBrief JSON)
instead: it is read as it is (``spec_of``, ``brief_of``), and an update or a re-import rewrites
it in this layout (``put_spec`` deletes both). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ductape_jobs.brief import JobBrief, argsrepr
from ductape_jobs.terms import CeleryCall, JobSpec

SEP = "\x1f"
Kind = Literal["str", "int", "json"]
# As planning's input check writes JSON (ASCII, compact), so a twin's packed spec is the same text.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

# JobSpec attribute -> (hash field, kind, default: left out when equal).
_SPEC: dict[str, tuple[str, Kind, Any]] = {
    "env": ("env", "str", None),
    "product_tag": ("tag", "str", None),
    "event": ("ev", "str", None),
    "retries": ("rt", "int", 0),
    "timeout_s": ("to", "int", None),
    "app": ("app", "str", None),
    "cache": ("ca", "str", None),
    "start_ms": ("st", "int", 0),
    "redact_paths": ("rp", "json", []),
    "session_tag": ("ses", "str", None),
    "sealed": ("sl", "str", None),
    "input_digest": ("dg", "str", None),
    "created_ms": ("cr", "int", None),
    "celery": ("cel", "json", None),
    "key": ("key", "str", None),
    "idempotency_key": ("ik", "str", None),
}
# timing.Rule field -> (hash field, kind, default). A job has a rule when it has cron or every.
_RULE: dict[str, tuple[str, Kind, Any]] = {
    "cron": ("cron", "str", None),
    "tz": ("tz", "str", "UTC"),
    "every_ms": ("every", "int", None),
    "limit": ("lim", "int", None),
    "end_ms": ("end", "int", None),
    "misfire": ("mis", "str", "skip"),
    "catchup_ms": ("cu", "int", 0),
    "jitter_ms": ("jit", "int", 0),
    "overlap": ("ov", "str", "allow"),
}
_RULE_READ = tuple((attr, field, kind == "int", default) for attr, (field, kind, default) in _RULE.items())
INPUT, ARGSREPR, TRACEPARENT = "in", "ar", "tp"
CREATED = _SPEC["created_ms"][0]  # left out when it is the job hash's own created_ms
LEGACY_SPEC, LEGACY_BRIEF = "spec", "brief"  # the layout before: JobSpec JSON, JobBrief JSON

# What the worker reads (BEGIN_RUN: with the job's created_ms, for a spec that left its own out),
# what beat reads (READ_DUE, the lost sweep), and every field an update rewrites. The legacy
# field comes last in each.
SPEC = (
    *(f for f, _, _ in _SPEC.values()),
    *(f for f, _, _ in _RULE.values()),
    INPUT,
    "created_ms",
    LEGACY_SPEC,
)
BRIEF = (
    "env",
    "tag",
    "ev",
    "to",
    "cel",
    *(f for f, _, _ in _RULE.values()),
    ARGSREPR,
    TRACEPARENT,
    LEGACY_BRIEF,
)
ALL = (*SPEC[:-2], ARGSREPR, TRACEPARENT, LEGACY_SPEC, LEGACY_BRIEF)


def _encode(value: Any, kind: Kind) -> str:
    if kind == "json":
        return _JSON.encode(dataclasses.asdict(value) if isinstance(value, CeleryCall) else value)
    return str(value)


_DECODE: dict[Kind, Callable[[str], Any]] = {"str": str, "int": int, "json": json.loads}
# How spec_of reads _SPEC: (attribute, hash field, decoder, default); a worker reads one a run.
_SPEC_READ = tuple((attr, field, _DECODE[kind], default) for attr, (field, kind, default) in _SPEC.items())


def pack_spec(spec: JobSpec, traceparent: str | None = None, input_json: str | None = None) -> str:
    """The spec's fields packed for a script, with what beat shows (``ar``) and the trace that
    scheduled it (``tp``). ``input_json``: the input as planning's check wrote it, if known."""
    parts = pack_head(spec, traceparent)
    if spec.input:
        shown = argsrepr(spec)
        parts += SEP + pack_input(_JSON.encode(spec.input) if input_json is None else input_json, shown)
    return parts


def pack_head(spec: JobSpec, traceparent: str | None = None) -> str:
    """Every packed field but the input and its ``argsrepr`` (``pack_input``), which come last."""
    parts: list[str] = []
    for attr, (field, kind, default) in _SPEC.items():
        value = getattr(spec, attr)
        if value != default:
            parts += (field, _encode(value, kind))
    for attr, (field, kind, default) in _RULE.items():
        value = None if spec.rule is None else spec.rule.get(attr, default)
        if spec.rule is not None and value != default and value is not None:
            parts += (field, _encode(value, kind))
    if traceparent:
        parts += (TRACEPARENT, traceparent)
    packed = SEP.join(parts)
    if packed.count(SEP) != len(parts) - 1:
        raise ValueError(f"a spec value holds the separator {SEP!r}: {spec!r}")
    return packed


def pack_input(input_json: str, shown: str) -> str:
    """The packed input field and its ``argsrepr`` (left out of a spec whose input is ``{}``)."""
    if SEP in input_json or SEP in shown:
        raise ValueError(f"the input holds the separator {SEP!r}")
    return SEP.join((INPUT, input_json, ARGSREPR, shown))


def unpack(packed: str) -> dict[str, str]:
    """Packed fields as a dict (a script's reply, or what a row carries)."""
    if not packed:
        return {}
    parts = packed.split(SEP)
    if len(parts) % 2:
        raise ValueError(f"packed fields end with a name and no value: {parts[-1][:64]!r}")
    pairs = iter(parts)
    return dict(zip(pairs, pairs, strict=False))  # beat reads one per due entry: kept lean


def fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """An HGETALL or HMGET-by-name reply (bytes or str) as a dict of str, absent fields left out."""
    return {_text(k): _text(v) for k, v in raw.items() if v is not None}


def read_spec(packed: str) -> JobSpec:
    """The spec BEGIN_RUN hands back packed; raises ValueError when it can't be read."""
    return spec_of(unpack(packed))


def read_brief(packed: str) -> JobBrief:
    """The brief READ_DUE hands back packed; raises ValueError when it can't be read."""
    return brief_of(unpack(packed))


def holds_spec(packed: str) -> bool:
    """Whether a packed brief is an old record's whole spec (a record older than briefs)."""
    return packed.startswith(LEGACY_SPEC + SEP)


def spec_of(f: Mapping[str, str]) -> JobSpec:
    """The spec a job hash holds (either layout); raises ValueError when it can't be read."""
    if LEGACY_SPEC in f:
        return JobSpec.from_json(f[LEGACY_SPEC])
    data: dict[str, Any] = {"input": json.loads(f[INPUT]) if INPUT in f else {}}
    for attr, field, decode, default in _SPEC_READ:
        value = f.get(field)
        data[attr] = default if value is None else decode(value)
    if CREATED not in f and "created_ms" in f:  # the job's own (spec_args left it out)
        data["created_ms"] = int(f["created_ms"])
    data["rule"] = _rule_of(f)
    return JobSpec.of_fields(data)


def brief_of(f: Mapping[str, str]) -> JobBrief:
    """What beat reads of a job (either layout); raises ValueError when it can't be read."""
    if LEGACY_BRIEF in f:
        return JobBrief.from_json(f[LEGACY_BRIEF])
    if LEGACY_SPEC in f:
        return JobBrief.of(spec_of(f))
    return JobBrief(
        env=f.get("env"),  # type: ignore[arg-type]  # None (a damaged record): ValueError
        product_tag=f.get("tag"),  # type: ignore[arg-type]
        event=f.get("ev"),  # type: ignore[arg-type]
        rule=_rule_of(f),
        argsrepr=f.get(ARGSREPR, "{}"),
        timeout_s=None if "to" not in f else int(f["to"]),
        celery=None if "cel" not in f else CeleryCall.of(json.loads(f["cel"])),
        traceparent=f.get(TRACEPARENT),
    )


def _rule_of(f: Mapping[str, str]) -> dict[str, Any] | None:
    """The rule as a spec holds it (planning's form: every field, jitter_ms only when set)."""
    if "cron" not in f and "every" not in f:
        return None
    rule = {}
    for attr, field, number, default in _RULE_READ:
        value = f.get(field)
        rule[attr] = default if value is None else int(value) if number else value
    if not rule["jitter_ms"]:
        del rule["jitter_ms"]
    return rule


def lua_prelude() -> str:
    """Lua: the field lists, ``packed(key, names)`` and ``put_spec(key, packed)``."""

    def table(names: tuple[str, ...]) -> str:
        return "{" + ", ".join(f"'{n}'" for n in names) + "}"

    return f"""
local SPEC_FIELDS = {table(SPEC)}
local BRIEF_FIELDS = {table(BRIEF)}
local ALL_SPEC_FIELDS = {table(ALL)}
-- The fields among names[first..] that an HMGET of `names` found, packed (jobfields.py): name,
-- value, ... joined by \\31.
local function pack_from(names, values, first)
  local parts = {{}}
  for i = first, #names do
    if values[i] then
      parts[#parts+1] = names[i]
      parts[#parts+1] = values[i]
    end
  end
  return table.concat(parts, '\\31')
end
-- A job's fields among `names` that it has, packed.
local function packed(key, names)
  return pack_from(names, redis.call('HMGET', key, unpack(names)), 1)
end
-- Append packed fields to `args` as HSET arguments; the spec's created_ms is left out when it
-- is the job's own (`created`): the usual case, and read back from the job's created_ms.
local function spec_args(spec, args, created)
  for name, value in string.gmatch(spec .. '\\31', '([^\\31]*)\\31([^\\31]*)\\31') do
    if name ~= '{CREATED}' or value ~= created then
      args[#args+1] = name
      args[#args+1] = value
    end
  end
  return args
end
-- Write a job's spec fields in place of the ones it had (an old record's spec and brief too).
local function put_spec(key, spec)
  local created = redis.call('HGET', key, 'created_ms')
  redis.call('HDEL', key, unpack(ALL_SPEC_FIELDS))
  redis.call('HSET', key, unpack(spec_args(spec, {{}}, created)))
end
-- The job's retries (either layout).
local function retries_of(key)
  local f = redis.call('HMGET', key, '{_SPEC["retries"][0]}', '{LEGACY_SPEC}')
  if f[2] then return tonumber(cjson.decode(f[2])['retries']) end
  return tonumber(f[1] or 0)
end
-- The end of the job's rule (either layout), nil when none or unreadable.
local function end_ms_of(key)
  local f = redis.call('HMGET', key, '{_RULE["end_ms"][0]}', '{LEGACY_BRIEF}')
  if f[1] then return tonumber(f[1]) end
  if not f[2] then return nil end  -- (a record older than briefs: left for a resume or cancel)
  local ok, b = pcall(cjson.decode, f[2])
  if not ok or type(b) ~= 'table' or type(b['rule']) ~= 'table' then return nil end
  return tonumber(b['rule']['end_ms'])
end
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
