"""Scripted replies for the sans-IO parts: no Redis, every request checked, every reply chosen.

``drive`` runs a flow (ops/, flows.py) against a script of round trips: each command the flow
sends must be the next one the script names, and gets the script's reply. ``ScriptedStore`` is
the runner's store (runner.RunStore) answering the same way. What a script names (script and
command names, store methods) is the flows' public behaviour; the record layouts live in the
helpers below, so a change of layout is a change here.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from ductape_jobs import jobfields, ops
from ductape_jobs.flows import ClientCore
from ductape_jobs.keys import Keys
from ductape_jobs.models import JobRequest
from ductape_jobs.ops import REDIS_DOWN, Call, Eval, Flow, unreachable
from ductape_jobs.planning import plan_job
from ductape_jobs.rows import CreateJobsHead, CreateJobsRow
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec

T = TypeVar("T")
ANY = object()  # in a step's keys or args: any value is fine at this place (a clock reading, a random id)


@dataclass(frozen=True)
class Step:
    """One command a flow must send: an Eval of script ``name`` or a Call of method ``name``, the
    reply it gets (an exception is raised as the stores raise it), and optionally its exact
    keys, args and kwargs (``ANY`` in keys or args matches anything)."""

    name: str
    reply: Any = None
    keys: Sequence[Any] | None = None
    args: Sequence[Any] | None = None
    kwargs: Mapping[str, Any] | None = None

    def check(self, sent: Call | Eval, where: str) -> None:
        """Fail unless ``sent`` is this step's command."""
        name = sent.script if isinstance(sent, Eval) else sent.method
        assert name == self.name, f"{where}: sent {sent}, the script expects {self.name}"
        if self.keys is not None:
            assert isinstance(sent, Eval), f"{where}: keys given for a Call {sent}"
            assert len(sent.keys) == len(self.keys), f"{where}: keys {sent.keys} != {list(self.keys)}"
            for at, (got, want) in enumerate(zip(sent.keys, self.keys, strict=True)):
                assert want is ANY or got == want, f"{where}: key {at} is {got!r}, expected {want!r}"
        if self.args is not None:
            assert len(sent.args) == len(self.args), f"{where}: args {sent.args} != {self.args}"
            for at, (got, want) in enumerate(zip(sent.args, self.args, strict=True)):
                assert want is ANY or got == want, f"{where}: arg {at} is {got!r}, expected {want!r}"
        if self.kwargs is not None:
            assert isinstance(sent, Call), f"{where}: kwargs given for an Eval {sent}"
            assert dict(sent.kwargs) == dict(self.kwargs), f"{where}: kwargs {sent.kwargs} != {self.kwargs}"


def script(
    name: str, reply: Any = None, *, keys: Sequence[Any] | None = None, args: Sequence[Any] | None = None
) -> Step:
    """A step for one run of Lua script ``name`` (scripts.py)."""
    return Step(name, reply, keys, args)


def call(method: str, *args: Any, reply: Any = None, **kwargs: Any) -> Step:
    """A step for one redis-py command ``method`` with exactly these args (and kwargs)."""
    return Step(method, reply, None, args, kwargs)


Round = Step | Sequence[Step]


@dataclass
class Driven:
    """What a driven flow sent: per round trip, its commands (for asserts beyond the steps)."""

    rounds: list[list[Call | Eval]]


def drive(flow: Flow[T], *rounds: Round, sent: Driven | None = None) -> T:
    """Run ``flow`` to its end: its round trips must be ``rounds`` in order (a Step, or a list of
    Steps for one pipeline or stream), each fed the steps' replies. Fails when the flow sends
    something else, more, or ends before the script does. A reply that is an exception is thrown
    into the flow as ``Store.run`` throws it (connection trouble as BackendUnavailableError):
    unless the flow catches it, it comes out of ``drive``."""
    log = sent if sent is not None else Driven([])
    try:
        request = next(flow)
    except StopIteration as done:
        assert not rounds, f"the flow ended without a round trip; the script has {len(rounds)}"
        return done.value  # type: ignore[no-any-return]
    for at, expected in enumerate(rounds):
        steps = [expected] if isinstance(expected, Step) else list(expected)
        calls = list(request.calls)  # a Stream's calls are built as they are taken
        log.rounds.append(calls)
        assert len(calls) == len(steps), (
            f"round {at}: sent {len(calls)} commands {calls}, expected {len(steps)}"
        )
        for n, (got, step) in enumerate(zip(calls, steps, strict=True)):
            step.check(got, f"round {at} command {n}")
        replies = [step.reply for step in steps]
        failed = next((r for r in replies if isinstance(r, BaseException)), None)
        try:
            if failed is None:
                request = flow.send(replies)
            else:  # thrown into the flow at its yield, as Store.run does: it may expect it
                request = flow.throw(unreachable(failed) if isinstance(failed, REDIS_DOWN) else failed)
        except StopIteration as done:
            left = rounds[at + 1 :]
            assert not left, f"the flow ended after round {at}; the script still has {left}"
            return done.value  # type: ignore[no-any-return]
    flow.close()
    raise AssertionError(f"the flow sent a round trip the script does not have: {list(request.calls)}")


DOWN = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class ScriptedCore(ClientCore):
    """A client's core without a connection: its ``flows`` are driven by ``drive``."""

    def _open(self) -> None:
        pass  # nothing to connect: the script answers


def core(settings: Settings | None = None, **overrides: Any) -> ScriptedCore:
    """A core with these settings (default: the unit tests' deployment)."""
    return ScriptedCore(settings=settings or Settings(key_prefix="unit", **overrides))


# -- stored records as Redis hands them back ---------------------------------------------------


def job_hash(spec: JobSpec, status: str, **fields: Any) -> dict[bytes, bytes]:
    """A job hash as HGETALL returns it (defaults for a one-off created at ms 1000)."""
    values: dict[str, Any] = {
        **jobfields.unpack(jobfields.pack_spec(spec)),
        "status": status,
        "recurring": "0",
        "runs_done": 0,
        "attempts": 0,
        "created_ms": 1_000,
        "updated_ms": 1_000,
        **fields,
    }
    return {k.encode(): str(v).encode() for k, v in values.items() if v is not None}


def run_hash(job_id: str, status: str, **fields: Any) -> dict[bytes, bytes]:
    """A run hash as HGETALL returns it."""
    values = {"job_id": job_id, "status": status, "nominal_ms": 1_000, "attempts": 1, **fields}
    if "result" in values:
        values["result"] = json.dumps(values["result"])
    return {k.encode(): str(v).encode() for k, v in values.items()}


# -- CREATE_JOBS rows ---------------------------------------------------------------------------


def long_way_row(c: ClientCore, request: dict[str, Any], job_id: str, now: int) -> tuple[Any, ...]:
    """The CREATE_JOBS row a lone request planned at ``now`` as ``job_id`` gets (delivery tag aside)."""
    plan = plan_job(JobRequest.parse(request), c.settings, c.sessions, now, job_id, c.messages.build)
    return _normalized(ops.create_row(Keys(c.settings.key_prefix), plan))


def create_rows(create: Eval) -> list[tuple[Any, ...]]:
    """The rows of one CREATE_JOBS call (its ARGV after the prefix and the clock), delivery tags aside."""
    args = list(create.args)[len(CreateJobsHead._fields) :]
    assert len(args) % CREATE_ROW_WIDTH == 0, f"{len(args)} row arguments"
    return [_normalized(args[at : at + CREATE_ROW_WIDTH]) for at in range(0, len(args), CREATE_ROW_WIDTH)]


def row_job_id(row: Sequence[Any]) -> str:
    """The job id a CREATE_JOBS row writes."""
    return CreateJobsRow(*row).job_id


def _normalized(row: Sequence[Any]) -> tuple[Any, ...]:
    # Each message carries a fresh random delivery tag: the only field two equal plans differ in.
    return tuple(_TAG.sub('"delivery_tag": "-"', v) if isinstance(v, str) else v for v in row)


_TAG = re.compile(r'"delivery_tag": "[0-9a-f]{32}"')
CREATE_ROW_WIDTH = len(CreateJobsRow._fields)


# -- the runner's store ------------------------------------------------------------------------


class ScriptedStore:
    """The runner's store (runner.RunStore) answering from a script of (method, reply): each call
    must be the next the script names; its reply is returned (raised when an exception). Every
    call is kept, with its arguments, in ``calls``."""

    def __init__(self, *steps: tuple[str, Any], prefix: str = "unit") -> None:
        self.keys = Keys(prefix)
        self.script: deque[tuple[str, Any]] = deque(steps)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.pending = False  # what ``unread()`` reports

    def _answer(self, method: str, **args: Any) -> Any:
        self.calls.append((method, args))
        assert self.script, f"{method}({args}) called; the script has nothing left"
        expected, reply = self.script.popleft()
        assert method == expected, f"{method}({args}) called; the script expects {expected}"
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def done(self) -> bool:
        """Whether every scripted call was made."""
        return not self.script

    def args(self, method: str) -> list[dict[str, Any]]:
        """The arguments of each call of ``method``, in order."""
        return [a for m, a in self.calls if m == method]

    def begin_run(self, run_id: str, job_id: str, now_ms: int, lease_ms: int, owner: str) -> Any:
        return self._answer(
            "begin_run", run_id=run_id, job_id=job_id, now_ms=now_ms, lease_ms=lease_ms, owner=owner
        )

    def finish_run(
        self, run_id: str, job_id: str, attempt: int, now_ms: int, outcome: str, **rest: Any
    ) -> bool:
        return bool(
            self._answer(
                "finish_run",
                run_id=run_id,
                job_id=job_id,
                attempt=attempt,
                now_ms=now_ms,
                outcome=outcome,
                **rest,
            )
        )

    def change_state(self, action: str, job_id: str, now_ms: int) -> tuple[str, str | None]:
        return self._answer("change_state", action=action, job_id=job_id, now_ms=now_ms)  # type: ignore[no-any-return]

    def cached_result(self, key: str) -> str | None:
        return self._answer("cached_result", key=key)  # type: ignore[no-any-return]

    def store_result(self, key: str, result_json: str, ttl_ms: int) -> None:
        self._answer("store_result", key=key, result_json=result_json, ttl_ms=ttl_ms)

    def renew_run(self, run_id: str, owner: str, now_ms: int, lease_ms: int) -> str:
        return self._answer("renew_run", run_id=run_id, owner=owner, now_ms=now_ms, lease_ms=lease_ms)  # type: ignore[no-any-return]

    def unread(self) -> Callable[[], bool]:
        return lambda: self.pending
