"""The ``ductape-jobs`` group: global options, the commands, and the exit codes scripts rely on."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
import redis

from ductape_jobs.cli import doctor, jobs, schedule, shards
from ductape_jobs.cli.context import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_STATE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Context,
)
from ductape_jobs.cli.output import printable, redact
from ductape_jobs.errors import (
    BackendUnavailableError,
    DuctapeError,
    JobNotFoundError,
    JobStateError,
    JobValidationError,
)
from ductape_jobs.urls import url_secrets

EPILOG = """\b
Exit codes (stable, for scripts):
  0  ok
  1  doctor found problems (or an unexpected failure)
  2  usage or validation error (JobValidationError); nothing was written
  3  not found (JobNotFoundError)
  4  the job's state does not allow it (JobStateError)
  5  Redis unavailable (BackendUnavailableError)
Errors are one line on stderr: "error: <message>".
"""


@click.group(
    epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.option(
    "--redis-url",
    metavar="URL",
    help="Redis holding the jobs (default: $REDIS_URL, else redis://127.0.0.1:6379/0).",
)
@click.option(
    "--prefix",
    metavar="PREFIX",
    help="Key prefix of the deployment (default: $DUCTAPE_KEY_PREFIX, else ductape).",
)
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, prefix: str | None) -> None:
    """Schedule, inspect and manage ductape-jobs, and check a deployment (doctor).

    Other settings come from the environment as for the library (DUCTAPE_ENVS, DUCTAPE_CACHES,
    DUCTAPE_SESSIONS, DUCTAPE_REQUIRE_HANDLER, ...).
    """
    state = Context(redis_url, prefix)
    ctx.obj = state
    ctx.call_on_close(state.close)


schedule.register(cli)
jobs.register(cli)
doctor.register(cli)
shards.register(cli)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, JobValidationError):
        return EXIT_USAGE
    if isinstance(exc, JobNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, JobStateError):
        return EXIT_STATE
    if isinstance(exc, BackendUnavailableError | redis.ConnectionError | redis.TimeoutError):
        return EXIT_UNAVAILABLE
    return EXIT_PROBLEMS


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI and exit with a documented code."""
    args = list(sys.argv[1:] if argv is None else argv)
    secrets = _secrets(args)
    try:
        code = cli.main(args=args, prog_name="ductape-jobs", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx is not None else "", file=sys.stderr)
        code = EXIT_USAGE
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "ductape-jobs"
        code = _fail(f"{exc.format_message()} (see '{where} --help')", EXIT_USAGE, secrets)
    except click.ClickException as exc:
        code = _fail(exc.format_message(), exc.exit_code, secrets)
    except click.Abort:
        code = _fail("aborted", EXIT_PROBLEMS, secrets)
    except DuctapeError as exc:
        code = _fail(str(exc), exit_code_for(exc), secrets)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        message = f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL and that the server is up"
        code = _fail(message, EXIT_UNAVAILABLE, secrets)
    except redis.InvalidResponse:
        code = _fail("the server at REDIS_URL does not speak the Redis protocol", EXIT_UNAVAILABLE, secrets)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no secrets
        code = _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_PROBLEMS, secrets)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _fail(message: str, code: int, secrets: list[str]) -> int:
    # One line whatever the message held, and nothing a terminal would act on.
    text = printable(" ".join(redact(message, secrets).split()))
    click.echo(f"error: {text}", file=sys.stderr)
    return code


def _secrets(args: list[str]) -> list[str]:
    """Passwords the output must never show: REDIS_URL's, --redis-url's, the sentinels'."""
    urls = [os.environ.get("REDIS_URL")]
    for i, arg in enumerate(args):
        if arg == "--redis-url" and i + 1 < len(args):
            urls.append(args[i + 1])
        elif arg.startswith("--redis-url="):
            urls.append(arg.split("=", 1)[1])
    found = [secret for url in urls for secret in url_secrets(url)]
    return found + [os.environ[name] for name in ("DUCTAPE_SENTINEL_PASSWORD",) if os.environ.get(name)]
