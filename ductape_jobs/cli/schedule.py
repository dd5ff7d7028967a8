"""``schedule``: one job from flags, or jobs from a JSON file, through the library's own validation;
``update``: change a live job in place."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from typing import IO, Any

import click

from ductape_jobs.cli.context import Context, json_option, pass_context
from ductape_jobs.cli.output import echo_json, handle_json, handles_table, job_json, note, say, stamp
from ductape_jobs.client import Ductape
from ductape_jobs.errors import DuctapeError, JobValidationError
from ductape_jobs.models import ScheduleHandle
from ductape_jobs.terms import ms_to_datetime

EXAMPLES = """\b
Examples:
  ductape-jobs schedule --env prd --product-tag billing --event process_payment \\
      --retries 3 --input '{"orderId": "order_456", "amount": 99.99}'
  ductape-jobs schedule --env prd --product-tag reports --event daily_report \\
      --repeat '{"cron": "0 9 * * *", "tz": "America/New_York"}'
  ductape-jobs schedule jobs.json        # an object like the seed's, or a list of them
  some-generator | ductape-jobs schedule - --json
"""
# A flag value longer than this is no number schedule() could take (ISO times are shorter too).
_LONGEST_NUMBER = 40
_HUGE = "a number too large to read (over 4,300 digits); every numeric field has a bound (see the README)"


@click.command(epilog=EXAMPLES)
@click.argument("file", type=click.File("r"), required=False)
@click.option("--env", help="One of DUCTAPE_ENVS.")
@click.option(
    "--product-tag", "--product", "product_tag", help="The product; with --event it names the handler."
)
@click.option("--event", help="The job tag (handler name).")
@click.option("--start-at", metavar="WHEN", help="0 = now (default); Unix seconds, epoch ms, or ISO-8601.")
@click.option("--retries", metavar="N", help="Extra attempts, 0..25 (default 0).")
@click.option(
    "--timeout", metavar="S", help="Seconds a run may take, 1..86400 (default DUCTAPE_JOB_TIMEOUT_S)."
)
@click.option("--input", "input_json", metavar="JSON", help="The handler's input, a JSON object.")
@click.option("--app", help="Optional app tag, handed to the handler.")
@click.option("--cache", help="A configured cache tag (DUCTAPE_CACHES).")
@click.option("--repeat", "repeat_json", metavar="JSON", help='e.g. \'{"every": 86400000, "limit": 4}\'.')
@click.option("--key", help="The job's own name: the same key again updates that job in place.")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="A one-off's retry token: the same key within DUCTAPE_IDEMPOTENCY_WINDOW_S returns the same job.",
)
@click.option(
    "--jitter-ms",
    metavar="MS",
    help="Spread each run of the repeat by a fixed offset in [0, MS) (repeat.jitter_ms).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Requests per Redis round trip when the file holds a list.",
)
@json_option
@pass_context
def schedule(
    obj: Context,
    file: IO[str] | None,
    env: str | None,
    product_tag: str | None,
    event: str | None,
    start_at: str | None,
    retries: str | None,
    timeout: str | None,
    input_json: str | None,
    app: str | None,
    cache: str | None,
    repeat_json: str | None,
    jitter_ms: str | None,
    key: str | None,
    idempotency_key: str | None,
    chunk_size: int,
    as_json: bool,
) -> None:
    """Schedule a job from flags, or jobs from a JSON FILE ('-' reads stdin).

    The same validation as ductape.job.schedule(): a refused request exits 2 and writes nothing;
    with a list, every request is checked before the first is written.
    """
    flags = _flags(env, product_tag, event, start_at, retries, timeout, input_json, app, cache, repeat_json)
    if jitter_ms is not None:
        flags["repeat"] = _with_jitter(flags.get("repeat"), jitter_ms)
    flags.update({k: v for k, v in (("key", key), ("idempotency_key", idempotency_key)) if v is not None})
    if file is not None and flags:
        raise click.UsageError("give either a JSON file or flags (--env, --event, ...), not both")
    if file is None and not flags:
        raise click.UsageError(
            "give a JSON file (or - for stdin), or flags: --env, --product-tag, --event, ..."
        )
    data = flags if file is None else _load(file)
    if isinstance(data, list):
        handles = schedule_list(obj.ductape, data, chunk_size, as_json)
        if as_json:
            echo_json([handle_json(h) for h in handles])
        elif handles:
            say(handles_table(handles))
        return
    if not isinstance(data, dict):
        raise JobValidationError(
            "request", f"the file must hold a JSON object or a list of objects, got {type(data).__name__}"
        )
    handle = obj.ductape.job.schedule(data)
    if as_json:
        echo_json(handle_json(handle))
    else:
        say(_sentence(handle))


def schedule_list(
    ductape: Ductape, requests: list[Any], chunk_size: int, as_json: bool
) -> list[ScheduleHandle]:
    """Check every request, then write them ``chunk_size`` at a time, with progress on stderr."""
    for index, raw in enumerate(requests):
        try:
            ductape.job.validate(raw)
        except JobValidationError as exc:
            if len(requests) > 1:  # the library's own wording for a batch
                raise type(exc)(f"requests[{index}].{exc.field}", str(exc).split(": ", 1)[1]) from None
            raise
    handles: list[ScheduleHandle] = []
    total = len(requests)
    bar = (
        click.progressbar(length=total, label=f"scheduling {total} jobs", file=sys.stderr, show_pos=True)
        if total > chunk_size
        else nullcontext()
    )
    try:
        with bar as progress:
            for start in range(0, total, chunk_size):
                part = requests[start : start + chunk_size]
                handles.extend(ductape.job.schedule_many(part))
                if progress is not None:
                    progress.update(len(part))
    except DuctapeError:
        if handles:
            note(
                f"{len(handles)} of {total} jobs were scheduled before the failure; they are listed on stdout"
            )
            if as_json:
                echo_json([handle_json(h) for h in handles])
            else:
                say(handles_table(handles))
        raise
    fresh = sum(h.created for h in handles)
    if not as_json:
        note(f"scheduled {fresh} job(s)" + (f"; {total - fresh} already existed" if fresh < total else ""))
    return handles


def _flags(
    env: str | None,
    product_tag: str | None,
    event: str | None,
    start_at: str | None,
    retries: str | None,
    timeout: str | None,
    input_json: str | None,
    app: str | None,
    cache: str | None,
    repeat_json: str | None,
) -> dict[str, Any]:
    """The request the flags describe; values are handed on as typed, for the library to judge."""
    fields: dict[str, Any] = {
        "env": env,
        "product_tag": product_tag,
        "event": event,
        "app": app,
        "cache": cache,
        "start_at": None if start_at is None else number_or_text(start_at),
        "retries": None if retries is None else number_or_text(retries),
        "timeout": None if timeout is None else number_or_text(timeout),
        "input": None if input_json is None else _json_flag("input", input_json),
        "repeat": None if repeat_json is None else _json_flag("repeat", repeat_json),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _with_jitter(repeat: Any, jitter_ms: str) -> Any:
    """The --repeat object with --jitter-ms added (the library judges both)."""
    if repeat is None:
        raise JobValidationError("repeat.jitter_ms", "--jitter-ms spreads a repeat; give --repeat as well")
    if isinstance(repeat, dict):
        if "jitter_ms" in repeat:
            raise JobValidationError(
                "repeat.jitter_ms", "given twice, in --repeat and as --jitter-ms; keep one"
            )
        return {**repeat, "jitter_ms": number_or_text(jitter_ms)}
    return repeat  # not an object: the library refuses it by name


def number_or_text(value: str) -> int | float | str:
    """A flag's number as a number (a time or a count), anything else as the text given."""
    if len(value) > _LONGEST_NUMBER:
        return value  # no time or count is this long: the library refuses it as text, by name
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _json_flag(field: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobValidationError(
            field,
            f"--{field} is not valid JSON ({exc.msg} at column {exc.colno}); pass an object: '{{\"k\": 1}}'",
        ) from None
    except ValueError:  # a number past CPython's 4,300-digit limit
        raise JobValidationError(field, f"--{field} holds {_HUGE}") from None


def _load(file: IO[str]) -> Any:
    name = "stdin" if file.name in ("<stdin>", "-") else file.name
    try:
        return json.load(file)
    except json.JSONDecodeError as exc:
        raise JobValidationError(
            "request", f"{name} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise JobValidationError("request", f"{name} is not UTF-8 text") from None
    except ValueError:  # a number past CPython's 4,300-digit limit
        raise JobValidationError("request", f"{name} holds {_HUGE}") from None


def _sentence(handle: ScheduleHandle) -> str:
    if handle.updated:
        head = f"updated {handle.job_id} in place: {handle.status.value}"
    elif not handle.created:
        head = f"already scheduled as {handle.job_id} (the same schedule exists): {handle.status.value}"
    else:
        head = f"scheduled {handle.job_id}: {handle.status.value}, first run {stamp(handle.scheduled_at)}"
    return head + (f", next run {stamp(handle.next_run_at)}" if handle.recurring else "")


UPDATE_EXAMPLES = """\b
Examples:
  ductape-jobs update 3f2a... --every 300000            # every 5 minutes from now on
  ductape-jobs update 3f2a... --cron '0 9 * * MON-FRI' --tz Europe/Paris
  ductape-jobs update 3f2a... --retries 3 --input '{"orderId": "order_789"}'
"""


@click.command(epilog=UPDATE_EXAMPLES)
@click.argument("job_id")
@click.option("--every", metavar="MS", help="A new interval in milliseconds (replaces the rule).")
@click.option("--cron", metavar="EXPR", help="A new cron expression (replaces the rule).")
@click.option("--tz", help="The new cron's time zone (with --cron).")
@click.option("--repeat", "repeat_json", metavar="JSON", help="A whole new repeat rule, as for schedule.")
@click.option("--start-at", metavar="WHEN", help="A new earliest run: Unix seconds, epoch ms, or ISO-8601.")
@click.option("--retries", metavar="N", help="Extra attempts, 0..25.")
@click.option("--timeout", metavar="S", help="Seconds a run may take, 1..86400.")
@click.option("--input", "input_json", metavar="JSON", help="A new input, a JSON object.")
@json_option
@pass_context
def update(
    obj: Context,
    job_id: str,
    every: str | None,
    cron: str | None,
    tz: str | None,
    repeat_json: str | None,
    start_at: str | None,
    retries: str | None,
    timeout: str | None,
    input_json: str | None,
    as_json: bool,
) -> None:
    """Change a live job in place: same job id, its runs kept, its next run from the new rule.

    What is not given stays; a new rule (--every, --cron or --repeat) replaces the old one whole.
    """
    if sum(x is not None for x in (every, cron, repeat_json)) > 1:
        raise click.UsageError("give one of --every, --cron or --repeat")
    if tz is not None and cron is None:
        raise click.UsageError("--tz goes with --cron")
    fields = _flags(None, None, None, start_at, retries, timeout, input_json, None, None, repeat_json)
    if every is not None:
        fields["repeat"] = {"every": number_or_text(every)}
    if cron is not None:
        fields["repeat"] = {"cron": cron, **({"tz": tz} if tz is not None else {})}
    if not fields:
        raise click.UsageError(
            "nothing to change: give --every, --cron, --repeat, --start-at, --retries, --timeout or --input"
        )
    job = obj.ductape.job.update(job_id, **fields)
    if as_json:
        echo_json(job_json(job))
    else:
        say(f"updated {job.job_id}: {job.status.value}, next run {stamp(ms_to_datetime(job.next_run_ms))}")


def register(group: click.Group) -> None:
    """Add the commands to the CLI."""
    group.add_command(schedule)
    group.add_command(update)
