"""``ductape-jobs reshard``: move the records to another shard count (ductape_jobs.reshard)."""

from __future__ import annotations

from dataclasses import asdict

import click

from ductape_jobs.cli.context import EXIT_STATE, Context, json_option, pass_context
from ductape_jobs.cli.output import echo_json, note, say
from ductape_jobs.clock import now_ms
from ductape_jobs.connection import connect
from ductape_jobs.keys import Keys
from ductape_jobs.reshard import busy, reshard


@click.command("reshard")
@click.option(
    "--to", "to", type=click.IntRange(1, 1024), required=True, help="The new shard count (DUCTAPE_SHARDS)."
)
@json_option
@pass_context
def reshard_command(obj: Context, to: int, as_json: bool) -> None:
    """Move every record from DUCTAPE_SHARDS shards to --to shards.

    Stop every beat, worker and producer first (a beat still alive is refused, exit 4); start
    them again with DUCTAPE_SHARDS set to the new count. Take a snapshot first (BGSAVE): the
    move is not one atomic step, though running it again finishes an interrupted one.
    """
    settings = obj.settings
    old, new = Keys(settings.key_prefix, settings.shards), Keys(settings.key_prefix, to)
    client = connect(settings)
    try:
        why = busy(client, old, now_ms())
        if why:
            note(f"error: not moved: {'; '.join(why)}; stop every beat (and worker) first")
            raise click.exceptions.Exit(EXIT_STATE)
        moved = reshard(client, old, new)
    finally:
        client.close()
    if as_json:
        echo_json({"from": old.shards, "to": to, **asdict(moved)})
        return
    say(
        f"moved from {old.shards} to {to} shard(s): {moved.keys} key(s) renamed, {moved.entries} index "
        f"entries written; start every process with DUCTAPE_SHARDS={to}"
    )
    if moved.missed:
        say(
            f"note: {moved.missed} identity entries (fingerprint, key or idempotency key) are in their job's "
            "shard, not where a new request looks (jobs made before ids were routed): a request with "
            "the same identity creates a new job"
        )


def register(group: click.Group) -> None:
    """Add the command to the CLI."""
    group.add_command(reshard_command)
