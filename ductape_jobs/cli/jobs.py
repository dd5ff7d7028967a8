"""Commands that read and manage existing jobs and runs: list, show, runs, upcoming, failed, and the
state changes (cancel, cancel-run, pause, resume, trigger, redrive, backfill)."""

from __future__ import annotations

import click

from ductape_jobs.cli.context import Context, json_option, pass_context
from ductape_jobs.cli.output import (
    echo_json,
    job_detail,
    job_json,
    jobs_table,
    note,
    run_json,
    runs_table,
    say,
    stamp,
    table,
)
from ductape_jobs.cli.schedule import number_or_text
from ductape_jobs.terms import JobStatus, ms_to_datetime

STATUSES = [s.value for s in JobStatus]


@click.command("list")
@click.option("--env", help="Only jobs of this env.")
@click.option("--product-tag", "--product", "product_tag", help="Only jobs of this product.")
@click.option("--event", help="Only jobs of this event.")
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this status.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="At most this many."
)
@json_option
@pass_context
def list_jobs(
    obj: Context,
    env: str | None,
    product_tag: str | None,
    event: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Jobs, newest first."""
    found = obj.ductape.job.list(env=env, product_tag=product_tag, event=event, status=status, limit=limit)
    for bad in found.unreadable:
        note(f"skipped job {bad.job_id}: {bad.reason}")
    if as_json:
        echo_json([job_json(j) for j in found])
    elif found:
        say(jobs_table(found))
    else:
        note("no jobs match")


@click.command()
@click.argument("job_id")
@json_option
@pass_context
def show(obj: Context, job_id: str, as_json: bool) -> None:
    """One job: its request, schedule, state, last error and result."""
    job = obj.ductape.job.get(job_id)
    if as_json:
        echo_json(job_json(job))
    else:
        say(job_detail(job))


@click.command()
@click.argument("job_id")
@click.option(
    "--limit", type=click.IntRange(1, 1_000), default=20, show_default=True, help="At most this many."
)
@json_option
@pass_context
def runs(obj: Context, job_id: str, limit: int, as_json: bool) -> None:
    """A job's recent runs, newest first."""
    found = obj.ductape.job.runs(job_id, limit=limit)
    if as_json:
        sealed = bool(found) and obj.ductape.job.get(job_id).spec.sealed is not None
        echo_json([run_json(r, sealed) for r in found])
    elif found:
        say(runs_table(found))
    else:
        note(f"job {job_id} has no runs yet")


@click.command()
@click.argument("job_id")
@click.option("-n", "--count", type=click.IntRange(1, 1_000), default=5, show_default=True, help="How many.")
@json_option
@pass_context
def upcoming(obj: Context, job_id: str, count: int, as_json: bool) -> None:
    """The job's next run times (UTC), honouring its limit, end date and time zone."""
    times = obj.ductape.job.upcoming(job_id, count)
    if as_json:
        echo_json([t.isoformat() for t in times])
    elif times:
        say("\n".join(stamp(t) for t in times))
    else:
        note(f"job {job_id} has no upcoming runs")


@click.command()
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="At most this many."
)
@json_option
@pass_context
def failed(obj: Context, limit: int, as_json: bool) -> None:
    """Dead-lettered runs (all attempts failed), newest first; redrive one with 'redrive RUN_ID'."""
    found = obj.ductape.job.failed(limit=limit)
    if as_json:
        echo_json([run_json(r) for r in found])
    elif found:
        say(runs_table(found))
    else:
        note("no failed runs")
    if obj.ductape.job.set_aside(limit=1):
        note("beat set some jobs aside (it could not read or decide them): see 'ductape-jobs set-aside'")


@click.command("set-aside")
@click.option(
    "--limit", type=click.IntRange(1, 1_000), default=100, show_default=True, help="At most this many."
)
@json_option
@pass_context
def set_aside(obj: Context, limit: int, as_json: bool) -> None:
    """Jobs beat set aside because it could not read or decide them (each failed with the reason)."""
    found = obj.ductape.job.set_aside(limit=limit)
    if as_json:
        echo_json(
            [
                {"job_id": a.job_id, "set_aside_at": stamp(ms_to_datetime(a.at_ms)), "reason": a.reason}
                for a in found
            ]
        )
    elif found:
        click.echo(
            table(
                ["JOB", "SET ASIDE", "REASON"],
                [(a.job_id, stamp(ms_to_datetime(a.at_ms)), a.reason) for a in found],
            )
        )
    else:
        note("no jobs set aside")


def _state_command(action: str, summary: str) -> click.Command:
    @click.command(action, help=summary)
    @click.argument("job_id")
    @json_option
    @pass_context
    def command(obj: Context, job_id: str, as_json: bool) -> None:
        job = getattr(obj.ductape.job, action)(job_id)
        if as_json:
            echo_json(job_json(job))
        else:
            say(f"job {job.job_id}: {job.status.value}")

    return command


@click.command()
@click.argument("job_id")
@json_option
@pass_context
def trigger(obj: Context, job_id: str, as_json: bool) -> None:
    """Run the job once more now, outside its schedule (not counted toward its limit)."""
    run_id = obj.ductape.job.trigger(job_id)
    if as_json:
        echo_json({"job_id": job_id, "run_id": run_id})
    else:
        say(run_id)


@click.command()
@click.argument("run_id")
@json_option
@pass_context
def redrive(obj: Context, run_id: str, as_json: bool) -> None:
    """Run a dead-lettered run again, with fresh attempts."""
    again = obj.ductape.job.redrive(run_id)
    if as_json:
        echo_json({"run_id": again})
    else:
        say(again)


TERMINATE_HELP = (
    "Also kill the worker process running it (Celery's revoke, SIGTERM) instead of asking its handler."
)


@click.command()
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help=TERMINATE_HELP)
@json_option
@pass_context
def cancel(obj: Context, job_id: str, terminate: bool, as_json: bool) -> None:
    """Stop the job: no further runs; queued runs that have not started are skipped; running runs
    are cancelled (their handlers see ctx.cancelled(), or with --terminate are killed)."""
    job = obj.ductape.job.cancel(job_id, terminate=terminate)
    if as_json:
        echo_json(job_json(job))
    else:
        say(f"job {job.job_id}: {job.status.value}")


@click.command("cancel-run")
@click.argument("run_id")
@click.option("--terminate", is_flag=True, help=TERMINATE_HELP)
@json_option
@pass_context
def cancel_run(obj: Context, run_id: str, terminate: bool, as_json: bool) -> None:
    """Stop one run, its schedule going on: not started, it never starts; running, its handler sees
    ctx.cancelled() (or with --terminate is killed). A finished run is refused (exit 4)."""
    run = obj.ductape.job.cancel_run(run_id, terminate=terminate)
    if as_json:
        echo_json(run_json(run))
    elif run.status.value == "running":
        say(f"run {run.run_id}: cancel requested; its handler sees it within seconds")
    else:
        say(f"run {run.run_id}: {run.status.value}")


@click.command()
@click.argument("job_id")
@click.option(
    "--start", required=True, metavar="WHEN", help="First slot time: Unix seconds, epoch ms, or ISO-8601."
)
@click.option("--end", required=True, metavar="WHEN", help="Last slot time (inclusive), in the past.")
@json_option
@pass_context
def backfill(obj: Context, job_id: str, start: str, end: str, as_json: bool) -> None:
    """Run every slot of a past range once (a slot that ran already is left alone): the run ids added."""
    added = obj.ductape.job.backfill(job_id, number_or_text(start), number_or_text(end))
    if as_json:
        echo_json({"job_id": job_id, "run_ids": added})
    else:
        say("\n".join(added) if added else "nothing to run: every slot in the range has run already")


def register(group: click.Group) -> None:
    """Add these commands to the CLI."""
    for command in (
        list_jobs,
        show,
        runs,
        upcoming,
        failed,
        set_aside,
        cancel,
        cancel_run,
        trigger,
        redrive,
        backfill,
    ):
        group.add_command(command)
    group.add_command(
        _state_command("pause", "Hold a scheduled job; runs already handed to workers still run.")
    )
    group.add_command(
        _state_command("resume", "Put a paused job back on its schedule (a missed slot runs once).")
    )
