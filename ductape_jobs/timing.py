"""Pure occurrence maths: instants, zones, cron with DST rules, and repeat rules.

No I/O beyond zoneinfo's cached zone files, and no clock: every function that needs the time
takes `now_ms`. All instants are UTC epoch milliseconds. Must not import Redis, Celery or models.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal, cast
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

from ductape_jobs.errors import JobValidationError, shown

SECONDS_MS_BOUNDARY = 100_000_000_000  # numbers below are Unix seconds, at/above are ms
# repeat.overlap: what a slot does while the schedule's previous run is unfinished (README).
Overlap = Literal["allow", "skip", "buffer_one"]

# The last instant a datetime can hold (9999-12-31T23:59:59.999Z); also the bound of every other
# millisecond quantity a request holds (repeat.every, repeat.catchup_ms).
MAX_MS = 253_402_300_799_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_ONE_S = timedelta(seconds=1)
_INSTANT_FIX = (
    "use 0 for now, Unix seconds (below 1e11), epoch milliseconds, "
    "or an ISO-8601 time like '2025-12-31T23:59:59Z'"
)
# Debian ships these beside the IANA zones: 'localtime' is whatever the host is set to and
# 'right/' zones count leap seconds, so neither gives the same answer on every machine.
_HOST_ZONES = frozenset({"localtime", "posixrules"})
_HOST_ZONE_PREFIXES = ("right/", "posix/")
# croniter splits fields on ASCII whitespace only; a no-break space stays inside a field.
_CRON_FIELD = re.compile(r"\S+", re.ASCII)
# H (hashed) needs a hash_id and R (random) differs per parse: neither is a fixed schedule.
_BACKWARDS_RANGE = re.compile(r"^(\d+)-(\d+)(?:/\d+)?$")
_HASHED_OR_RANDOM = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
# A cron listing every value of every field one by one (0,1,...,59 for seconds) is about 530
# characters long.
MAX_CRON_CHARS = 1_000
_CRON_HELP = "fields are minute hour day-of-month month day-of-week, e.g. '*/15 * * * *'"
# Any fixed start works: without a year field a cron repeats within 400 years, and its longest
# gap (a weekday-pinned Feb 29) stays inside croniter's 50-year search.
_FIRE_CHECK_FROM = datetime(2000, 1, 1)  # noqa: DTZ001 - croniter walks local wall time here


def parse_instant_ms(value: object, field: str) -> int:
    """Read a start_at/endDate value as UTC epoch ms (0 stays 0, meaning now)."""
    if isinstance(value, bool):
        raise JobValidationError(field, f"{shown(value)} is a boolean, not a time; {_INSTANT_FIX}")
    if isinstance(value, float) and not math.isfinite(value):
        raise JobValidationError(field, f"{shown(value)} is not a finite number; {_INSTANT_FIX}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise JobValidationError(field, f"{shown(value)} is negative; {_INSTANT_FIX}")
        # round() keeps float seconds to the ms (1.5 -> 1500) despite binary fractions.
        ms = round(value * 1000) if value < SECONDS_MS_BOUNDARY else round(value)
        if ms > MAX_MS:
            raise JobValidationError(
                field,
                f"{shown(value)} is after the year 9999; use epoch milliseconds or seconds",
            )
        return ms
    if isinstance(value, str):
        return _iso_to_ms(value, field)
    if isinstance(value, datetime):
        return _datetime_to_ms(value, field)
    raise JobValidationError(field, f"{shown(value)} ({type(value).__name__}) is not a time; {_INSTANT_FIX}")


def _iso_to_ms(value: str, field: str) -> int:
    """Parse an ISO-8601 string; naive and date-only forms are UTC."""
    text = value.strip()
    if not text:
        raise JobValidationError(field, f"{value!r} is empty; {_INSTANT_FIX}")
    # RFC 3339 allows a lower-case 'z'; Python 3.11's fromisoformat does not.
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise JobValidationError(field, f"{shown(value)} is not an ISO-8601 time; {_INSTANT_FIX}") from None
    return _datetime_to_ms(parsed, field, as_given=shown(value))


def _datetime_to_ms(value: datetime, field: str, as_given: str | None = None) -> int:
    """Convert a datetime to epoch ms; naive means UTC."""
    if value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    try:
        ms = (value - _EPOCH) // _ONE_MS
    except OverflowError:
        ms = -1
    if ms < 0:
        raise JobValidationError(
            field,
            f"{as_given or shown(value)} is before 1970-01-01T00:00:00Z; {_INSTANT_FIX}",
        )
    return ms


def parse_zone(name: object, field: str = "repeat.tz") -> ZoneInfo:
    """Load an IANA time zone by name."""
    fix = "use a name like 'America/New_York' or 'UTC'"
    if not isinstance(name, str):
        raise JobValidationError(field, f"{shown(name)} is not a zone name; {fix}")
    if name in _HOST_ZONES or name.startswith(_HOST_ZONE_PREFIXES):
        raise JobValidationError(field, f"{name!r} depends on the host's zone files; {fix}")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        # ZoneInfoNotFoundError is a KeyError; malformed keys ('', '../x') are ValueErrors.
        raise JobValidationError(field, f"{shown(name)} is not an IANA time zone; {fix}") from None


@dataclass(frozen=True)
class _Cron:
    """A parsed cron expression and how it behaves when clocks fall back."""

    expr: str
    # A '*' or stepped hour follows elapsed time, so it runs in both passes of a repeated hour.
    both_passes: bool
    min_gap_s: int  # shortest wall-clock gap between two runs (_min_gap_s)
    # The crons whose runs together are this one's, minus any that never fire (_day_halves).
    parts: tuple[str, ...]


def _cron(expr: str, field: str) -> _Cron:
    """A cron string parsed, through a cache keyed by its normalized form."""
    if len(expr) > MAX_CRON_CHARS:
        raise JobValidationError(
            field,
            f"{shown(expr)} is {len(expr)} characters long; a cron expression has at most "
            f"{MAX_CRON_CHARS} (list fewer values, or use ranges and steps: '*/5', '9-17')",
        )
    # Normalized before the cache, so spacing variants of one expression share one entry.
    return _parse_cron(" ".join(_CRON_FIELD.findall(expr)), field)


@lru_cache(maxsize=512)
def _parse_cron(expr: str, field: str) -> _Cron:
    """Check a normalized cron string's syntax (not whether it ever fires)."""
    fields = expr.split(" ") if expr else []
    if len(fields) == 1 and fields[0].startswith("@"):
        raise JobValidationError(
            field,
            f"{shown(expr)} is an alias; write it as 5 fields, e.g. '0 0 * * *' for @daily",
        )
    if len(fields) not in (5, 6):
        raise JobValidationError(
            field,
            f"{shown(expr)} has {len(fields)} fields; use 5 (minute hour day-of-month month "
            "day-of-week, e.g. '0 9 * * *') or 6 with seconds first (e.g. '30 0 9 * * *')",
        )
    for part in (p for f in fields for p in f.split(",")):
        if _HASHED_OR_RANDOM.match(part):
            raise JobValidationError(
                field,
                f"{shown(expr)} uses H/R (hashed or random) values; write explicit numbers",
            )
        backwards = _BACKWARDS_RANGE.match(part)
        if backwards and int(backwards[1]) > int(backwards[2]):
            # croniter wraps it around ('1-0' = every minute); Vixie cron refuses it, and so do we
            raise JobValidationError(
                field,
                f"{shown(expr)} has the range {part.split('/')[0]!r}, which runs backwards; "
                "write the low end first, or list both parts (e.g. '22-23,0-2')",
            )
    try:
        expanded, _ = croniter.expand(expr, second_at_beginning=True)
    except (CroniterError, TypeError, ValueError) as exc:
        # Some croniter errors wrap a whole traceback: keep only a short first line.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f" ({reason})" if reason and len(reason) < 160 and "Traceback" not in reason else ""
        raise JobValidationError(
            field,
            f"{shown(expr)} is not a valid cron expression{detail}; {_CRON_HELP}",
        ) from None
    hour = fields[1] if len(fields) == 5 else fields[2]
    return _Cron(
        expr=expr,
        both_passes=hour == "*" or "/" in hour,
        min_gap_s=_min_gap_s(expanded, len(fields)),
        parts=tuple(part for part in _day_halves(fields, expanded) if _fires(part)),
    )


def _day_halves(fields: list[str], expanded: list[list[int | str]]) -> tuple[str, ...]:
    """The cron as crons croniter reads right: one per day field when both are restricted.

    Vixie cron runs on a day matching the day-of-month OR the day-of-week when neither is '*'.
    croniter does so for plain values only and switches to AND once '#', 'L' or 'W' appears, so
    each day field is evaluated on its own (the other set to '*') and the earlier run is taken.
    """
    # croniter.expand lists minute, hour, day, month, weekday: '*' (or '?') leaves a field free.
    if expanded[2][0] == "*" or expanded[4][0] == "*":
        return (" ".join(fields),)
    by_day_of_month = [*fields[:-1], "*"]
    by_day_of_week = [*fields[:-3], "*", *fields[-2:]]
    return " ".join(by_day_of_month), " ".join(by_day_of_week)


def _fires(expr: str) -> bool:
    """Whether a syntactically valid cron ever names a wall time."""
    try:
        croniter(expr, _FIRE_CHECK_FROM, second_at_beginning=True).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


def _min_gap_s(expanded: list[list[int | str]], n_fields: int) -> int:
    """The shortest wall-clock gap between two runs, from the hour, minute and second values.

    A day's run times are the hours x minutes x seconds product in order; the shortest gap is
    between two neighbours at one level with the finer levels at their extremes (10:59:59 to
    11:00:00). Any two consecutive days are taken to match, so a cron that skips days gets a bound
    at or below its real gap, never above it.
    """
    # croniter.expand lists minute, hour, day, month, weekday, then second; '*' stands for all.
    seconds = _values(expanded[5], 60) if n_fields == 6 else [0]
    levels = ((seconds, 1), (_values(expanded[0], 60), 60), (_values(expanded[1], 24), 3600))
    gaps, spread = [], 0  # spread: how far the finer levels reach within one value of this one
    for values, unit in levels:
        steps = [later - earlier for earlier, later in itertools.pairwise(values)]
        if steps:
            gaps.append(min(steps) * unit - spread)
        spread += (values[-1] - values[0]) * unit
    gaps.append(86_400 - spread)  # the day's last run to the next day's first
    return min(gaps)


def _values(field: list[int | str], size: int) -> list[int]:
    return list(range(size)) if field == ["*"] else sorted(int(v) for v in field)


class _WallClock:
    """Local wall times a cron names, with no zone attached (croniter in naive mode)."""

    def __init__(self, cron: _Cron, start: datetime) -> None:
        self._iters = [
            croniter(part, start, ret_type=datetime, second_at_beginning=True) for part in cron.parts
        ]

    def after(self, wall: datetime) -> datetime:
        """First named wall time strictly after `wall` (the earliest of the cron's parts)."""
        found: list[datetime] = []
        for part in self._iters:
            try:
                found.append(part.get_next(ret_type=datetime, start_time=wall))
            except CroniterBadDateError:
                continue  # this part has no run left within croniter's search; another may
        if not found:
            raise CroniterBadDateError(f"no wall time after {wall}")
        return min(found)


def validate_cron(expr: object, field: str = "repeat.cron") -> str:
    """Check a cron expression (5 fields, or 6 with seconds first) and return it normalized."""
    if not isinstance(expr, str):
        raise JobValidationError(field, f"{shown(expr)} is not a cron string; {_CRON_HELP}")
    cron = _cron(expr, field)
    if not cron.parts:
        raise JobValidationError(
            field,
            f"{shown(expr)} never fires (no such date, e.g. 31 February); "
            "check the day-of-month and month fields",
        )
    return cron.expr


def cron_min_gap_ms(expr: str) -> int:
    """The shortest gap between two runs of a (valid) cron on the wall clock, in ms.

    Exact when every day matches, and a lower bound otherwise. A clock change can bring two runs of
    a zoned cron closer once (a run moved to the end of a spring-forward gap, or a repeated hour run
    twice); that is the DST rule at work, not the cron's rate, and is not counted.
    """
    return _cron(expr, "repeat.cron").min_gap_s * 1000


@dataclass(frozen=True)
class Rule:
    """A normalized repeat rule (the model layer builds it)."""

    cron: str | None = None
    tz: str = "UTC"
    every_ms: int | None = None
    limit: int | None = None  # total runs including the first
    end_ms: int | None = None  # inclusive: no run after it
    misfire: Literal["skip", "run_all"] = "skip"
    catchup_ms: int = 0  # with run_all: how far back missed runs are still run
    jitter_ms: int = 0  # each run falls due within [0, jitter_ms) after its slot (ductape_jobs.jitter)
    # What a slot does while the schedule's previous run is unfinished (CLAIM_DUE decides it).
    # 'allow' here, so a rule stored before the field existed keeps its old behaviour;
    # models.Repeat gives new schedules 'skip'.
    overlap: Overlap = "allow"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_ms is None):
            raise JobValidationError("repeat", "set exactly one of cron and every_ms")
        if self.every_ms is not None and self.every_ms <= 0:
            raise JobValidationError("repeat.every", f"{shown(self.every_ms)} must be a positive ms interval")
        if self.limit is not None and self.limit < 1:
            raise JobValidationError("repeat.limit", f"{shown(self.limit)} must be 1 or more")
        if self.catchup_ms < 0:
            raise JobValidationError("repeat.catchup_ms", f"{shown(self.catchup_ms)} must be >= 0")
        if self.jitter_ms < 0:
            raise JobValidationError("repeat.jitter_ms", f"{shown(self.jitter_ms)} must be >= 0")
        check_jitter(self.jitter_ms, self.every_ms, self.cron)  # also for a rule read back


def check_jitter(jitter_ms: int, every_ms: int | None, cron: str | None) -> None:
    """Jitter stays below the period, so that runs keep their order and each due time maps back
    to one slot (ductape_jobs.jitter)."""
    if jitter_ms == 0:
        return
    if every_ms is not None:
        period_ms, what = every_ms, f"the interval (every: {every_ms})"
    else:
        period_ms = cron_min_gap_ms(cast(str, cron))
        what = f"the shortest gap between two runs of {cron!r} ({period_ms} ms)"
    if jitter_ms >= period_ms:
        raise JobValidationError(
            "repeat.jitter_ms",
            f"{jitter_ms} ms is not below {what}; jitter must be shorter than the period "
            "so that runs keep their order: give a smaller jitter_ms",
        )


def _offset(moment: datetime) -> timedelta:
    """UTC offset of an aware datetime (ZoneInfo always has one)."""
    return moment.utcoffset() or timedelta(0)


def _offset_s(zone: ZoneInfo, at_s: int) -> timedelta:
    """The zone's UTC offset at an instant."""
    return _offset(datetime.fromtimestamp(at_s, tz=zone))


def _transition_s(zone: ZoneInfo, before_s: int, after_s: int) -> int:
    """First second in (before_s, after_s] whose UTC offset differs from before_s's."""
    offset = _offset_s(zone, before_s)
    low, high = before_s, after_s
    while high - low > 1:
        mid = (low + high) // 2
        if _offset_s(zone, mid) == offset:
            low = mid
        else:
            high = mid
    return high


def _runs_s(wall: datetime, zone: ZoneInfo, both_passes: bool) -> tuple[int, int | None]:
    """The run second for a local wall time, plus its second-pass run in a fall-back fold."""
    early = int(wall.replace(tzinfo=zone, fold=0).timestamp())
    late = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    if early == late:
        return early, None
    if early < late:
        return early, (late if both_passes else None)
    # In a gap PEP 495 maps fold=1 before the jump and fold=0 after it; the run moves to
    # the instant the gap ends.
    return _transition_s(zone, late, early), None


def _next_run_s(cron: _Cron, zone: ZoneInfo, after_s: int) -> int:
    """First run second strictly after after_s, with the DST rules applied."""
    here = datetime.fromtimestamp(after_s, tz=zone)
    wall = here.replace(tzinfo=None)
    # Non-zero only inside a repeated (fall-back) stretch: how far the clocks went back.
    repeat = _offset(here.replace(fold=0)) - _offset(here.replace(fold=1))
    repeat_s = int(repeat.total_seconds())
    clock = _WallClock(cron, wall)
    best: int | None = None
    if repeat and here.fold == 0 and cron.both_passes:
        # First pass: wall times already passed come round again in the second pass, and
        # the earliest of those may come before the next wall time's first-pass run.
        second_pass_s = _transition_s(zone, after_s, after_s + repeat_s)
        second_pass_wall = datetime.fromtimestamp(second_pass_s, tz=zone).replace(tzinfo=None)
        first = clock.after(second_pass_wall - _ONE_S)
        if first <= wall:
            best = int(first.replace(tzinfo=zone, fold=1).timestamp())
    elif repeat and here.fold == 1 and not cron.both_passes:
        # Shortcut: a fixed-hour cron ran the rest of this stretch in the first pass, so jump
        # to its end instead of stepping through up to 3600 one-second matches.
        second_pass_s = _transition_s(zone, after_s - repeat_s, after_s)
        end_s = second_pass_s + repeat_s
        wall = datetime.fromtimestamp(end_s, tz=zone).replace(tzinfo=None) - _ONE_S
    while True:
        # After the two cases above the next wall time maps past after_s, so this returns on
        # its first lap; the loop guards zones with two transitions close together.
        wall = clock.after(wall)
        for run_s in _runs_s(wall, zone, cron.both_passes):
            if run_s is not None and run_s > after_s:
                return run_s if best is None else min(run_s, best)


def clock_changes(tz: str, from_ms: int, to_ms: int) -> bool:
    """Whether the zone's UTC offset differs between the two instants (a DST change between)."""
    if tz == "UTC":
        return False
    zone = parse_zone(tz)
    return _offset_s(zone, from_ms // 1000) != _offset_s(zone, min(to_ms, MAX_MS) // 1000)


def cron_next_ms(expr: str, tz: str, after_ms: int, *, inclusive: bool = False) -> int | None:
    """First run instant > after_ms (>= when inclusive) of a cron in a zone, DST rules applied."""
    cron = _parse_cron(expr, "repeat.cron")  # a stored rule: validated and normalized already
    zone = parse_zone(tz)
    # Runs fall on whole seconds, so ">= after_ms" is "> the second before ceil(after_ms)".
    after_s = -(-after_ms // 1000) - 1 if inclusive else after_ms // 1000
    try:
        return _next_run_s(cron, zone, after_s) * 1000
    except (CroniterBadDateError, OverflowError, ValueError):
        # No match before the year 9999 (or ever): the schedule has nothing left.
        return None


def _occurrence_from_ms(rule: Rule, anchor_ms: int, after_ms: int) -> int | None:
    """First nominal occurrence > after_ms and >= anchor_ms; None past the year 9999, where no
    part (datetimes, Celery's ETA) can show it."""
    floor_ms = max(after_ms, anchor_ms - 1)
    if rule.cron is not None:
        at_ms = cron_next_ms(rule.cron, rule.tz, floor_ms)
    else:
        every_ms = cast(int, rule.every_ms)  # Rule.__post_init__ allows exactly one of the two
        at_ms = anchor_ms + ((floor_ms - anchor_ms) // every_ms + 1) * every_ms
    return None if at_ms is None or at_ms > MAX_MS else at_ms


def first_run_ms(rule: Rule, start_ms: int, now_ms: int) -> int | None:
    """The schedule's first run time, or None if it falls after end_ms."""
    base_ms = max(start_ms, now_ms)
    first_ms = base_ms if rule.every_ms is not None else _occurrence_from_ms(rule, base_ms, base_ms - 1)
    if first_ms is None or (rule.end_ms is not None and first_ms > rule.end_ms):
        return None
    return first_ms


def occurrence_after_ms(rule: Rule, anchor_ms: int, after_ms: int) -> int | None:
    """Next nominal occurrence strictly after after_ms (never before anchor_ms), ignoring limit/end."""
    return _occurrence_from_ms(rule, anchor_ms, after_ms)


def _unjittered(slot_ms: int) -> int:
    return slot_ms


def next_run_ms(
    rule: Rule,
    anchor_ms: int,
    released_ms: int,
    runs_done: int,
    now_ms: int,
    due: Callable[[int], int] = _unjittered,
) -> int | None:
    """The slot after the one at released_ms (runs_done includes it), or None when finished.

    ``due`` maps a slot to the time its run falls due (ductape_jobs.jitter); a slot is missed when
    its due time, not the slot itself, is past.
    """
    if rule.limit is not None and runs_done >= rule.limit:
        return None
    next_ms = _occurrence_from_ms(rule, anchor_ms, released_ms)
    if next_ms is not None and due(next_ms) < now_ms:
        # Slots missed while we were down: 'skip' resumes at now, 'run_all' keeps the ones
        # inside the catch-up window (run one by one as each is released).
        keep_from_ms = now_ms if rule.misfire == "skip" else now_ms - rule.catchup_ms
        if due(next_ms) < keep_from_ms:
            next_ms = first_due_from(rule, anchor_ms, keep_from_ms, due, after_ms=released_ms)
    if next_ms is None or (rule.end_ms is not None and next_ms > rule.end_ms):
        return None
    return next_ms


def first_due_from(
    rule: Rule,
    anchor_ms: int,
    from_ms: int,
    due: Callable[[int], int] = _unjittered,
    after_ms: int = -1,
) -> int | None:
    """The first slot after after_ms whose run falls due at or after from_ms (a slot past
    end_ms may come back: the caller checks the end)."""
    # A run falls due less than jitter_ms after its slot, so no earlier slot can qualify.
    at_ms = _occurrence_from_ms(rule, anchor_ms, max(after_ms, from_ms - max(rule.jitter_ms, 1)))
    while at_ms is not None and (rule.end_ms is None or at_ms <= rule.end_ms) and due(at_ms) < from_ms:
        at_ms = _occurrence_from_ms(rule, anchor_ms, at_ms)
    return at_ms


def upcoming_ms(rule: Rule, anchor_ms: int, next_ms: int | None, runs_done: int, n: int) -> list[int]:
    """The next n run times starting at next_ms, honouring limit and end_ms."""
    if rule.limit is not None:
        n = min(n, rule.limit - runs_done)
    found: list[int] = []
    at_ms = next_ms
    while at_ms is not None and len(found) < n:
        if rule.end_ms is not None and at_ms > rule.end_ms:
            break
        found.append(at_ms)
        at_ms = _occurrence_from_ms(rule, anchor_ms, at_ms)
    return found


# Missed slots of a cron are counted one by one up to this many (0.1-0.2 ms each); past it the
# rest is estimated from their mean gap, so a long outage cannot stall a beat tick.
MISSED_EXACT_STEPS = 256


def missed_slots(
    rule: Rule, anchor_ms: int, released_ms: int, runs_done: int, next_ms: int | None, now_ms: int
) -> int:
    """How many on-phase slots after released_ms the misfire policy skipped to reach next_ms.

    ``next_ms`` is what ``next_run_ms`` returned for the same arguments. Exact for ``every``; for a
    cron exact up to MISSED_EXACT_STEPS slots, estimated beyond. Slots past end_ms are not missed.
    """
    if rule.limit is not None and runs_done >= rule.limit:
        return 0  # the schedule ended by its limit: nothing was jumped over
    # Every skipped slot lies before now: 'skip' keeps the first slot at or after now,
    # 'run_all' the first inside its window, and a schedule that ended skipped up to its end.
    bound_ms = now_ms if next_ms is None else min(next_ms, now_ms)
    if rule.end_ms is not None:
        bound_ms = min(bound_ms, rule.end_ms + 1)
    if rule.every_ms is not None:
        first_ms = _occurrence_from_ms(rule, anchor_ms, released_ms)
        if first_ms is None or first_ms >= bound_ms:
            return 0
        return (bound_ms - 1 - first_ms) // rule.every_ms + 1
    # Cron runs fall on whole seconds, so a slot after released_ms is at least at the next one:
    # a beat less than a second late (the usual case) needs no cron maths at all.
    if bound_ms <= (released_ms // 1000 + 1) * 1000:
        return 0
    count, first_ms, at_ms = 0, None, released_ms
    while count < MISSED_EXACT_STEPS:
        found = _occurrence_from_ms(rule, anchor_ms, at_ms)
        if found is None or found >= bound_ms:
            return count
        first_ms = found if first_ms is None else first_ms
        count, at_ms = count + 1, found
    if first_ms is None or at_ms == first_ms:
        return count
    mean_gap_ms = (at_ms - first_ms) / (count - 1)
    return count + int((bound_ms - 1 - at_ms) // mean_gap_ms)


def slots_between_ms(rule: Rule, anchor_ms: int, start_ms: int, end_ms: int, most: int) -> list[int] | None:
    """The schedule's slots in [start_ms, end_ms], on its phase (an ``every`` rule's slots are
    anchor_ms plus or minus whole intervals, so a backfill may reach before the first run), or
    None when there are more than ``most``. Ignores limit and end_ms: the caller bounds the range."""
    found: list[int] = []
    if rule.every_ms is not None:
        at_ms: int | None = start_ms + (anchor_ms - start_ms) % rule.every_ms
    else:
        at_ms = cron_next_ms(cast(str, rule.cron), rule.tz, start_ms, inclusive=True)
    while at_ms is not None and at_ms <= end_ms:
        if len(found) == most:
            return None
        found.append(at_ms)
        if rule.every_ms is not None:
            at_ms += rule.every_ms
        else:
            at_ms = cron_next_ms(cast(str, rule.cron), rule.tz, at_ms)
    return found
