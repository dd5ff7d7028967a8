"""The Lua scripts' arguments and replies as typed structures, each laid out here only.

A script that takes one row per item reads its fixed head and each row with one ``unpack`` into
locals named as the fields here, as FINISH_RUN reads its arguments (tests/unit/test_rows.py holds
the two sides together). Python
builds an argument list by flattening the structures; a reply is read by its type's
``from_reply``. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ductape_jobs.records import Answer, text

ScriptArg = str | int  # what redis-py sends as one ARGV entry ('' for none)


# -- CREATE_JOBS --------------------------------------------------------------------------------


class CreateJobsHead(NamedTuple):
    """CREATE_JOBS's ARGV before its rows."""

    prefix: str
    now_ms: int


class CreateJobsRow(NamedTuple):
    """One job of CREATE_JOBS: its record, its first run (if it goes now) and its due entry."""

    job_id: str
    spec: str  # its spec's fields packed (jobfields.pack_spec): beat's brief and the input among them
    status: str
    recurring: int  # 0 / 1
    next_run_ms: ScriptArg
    anchor_ms: int
    runs_done: int
    run_id: str  # '' = no run now
    nominal_ms: ScriptArg
    due_ms: ScriptArg  # when beat releases the job ('' = not in the due index)
    fp_keys: str  # its fingerprint key (a keyed job: its key entry), then its twins' under older
    # session keys, one per line
    queue_key: str
    message: str
    idem_key: str  # a one-off's idempotency entry ('' = none), written in the same step
    idem_ttl_ms: ScriptArg  # how long that entry returns the job
    traceparent: str = ""  # its run's trace (Message.traceparent), kept in the run record ('' = none)


class TwinFound(NamedTuple):
    """CREATE_JOBS's reply, per job not written because a live twin exists."""

    at: int  # 0-based, within the call
    job_id: str  # the twin's

    @classmethod
    def from_reply(cls, reply: list[Any]) -> list[TwinFound]:
        """The script's flat ``{index, twin_job_id, ...}`` (1-based indexes)."""
        return [cls(int(reply[at]) - 1, text(reply[at + 1])) for at in range(0, len(reply), 2)]


# -- CLAIM_DUE ----------------------------------------------------------------------------------


class ClaimDueHead(NamedTuple):
    """CLAIM_DUE's ARGV before its rows."""

    prefix: str
    fence: str
    now_ms: int
    runs_kept: int
    job_retention_s: int
    dead_retention_s: int


class ClaimDueRow(NamedTuple):
    """One due entry beat decided, applied only if what beat read still holds."""

    member: str  # j:<job_id> or r:<run_id>
    due_ms: int  # the score beat read
    runs_done: int  # the job's runs_done beat read
    run_id: str
    nominal_ms: int
    next_ms: ScriptArg  # the next run beat decided ('' = none)
    queue_key: str  # the reason beat could not read or decide it when message is ''
    message: str  # '' = not sendable: the entry is dropped or its job set aside
    overlap_policy: str  # repeat.overlap ('' = allow)
    skip_next_ms: ScriptArg  # the next run when this slot is skipped ('' = none)
    version: int  # the job's version beat read: an update in between (UPDATE_JOB) changes it
    traceparent: str  # the released run's trace (Message.traceparent), kept in its record ('' = none)


class Claimed(NamedTuple):
    """CLAIM_DUE's reply: the items that were claimed or set aside, unless the call was fenced out."""

    fenced: bool
    indexes: tuple[int, ...]  # 0-based, within the call

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Claimed:
        """The script's 1-based indexes, or ``{-1}`` when fenced out."""
        if reply and int(reply[0]) == -1:
            return cls(True, ())
        return cls(False, tuple(int(i) - 1 for i in reply))


# -- BACKFILL -----------------------------------------------------------------------------------


class BackfillHead(NamedTuple):
    """BACKFILL's ARGV before its rows."""

    job_id: str
    now_ms: int
    prefix: str
    runs_kept: int


class BackfillRow(NamedTuple):
    """One past slot to run, added only if its job does not know the run yet."""

    run_id: str
    nominal_ms: int
    queue_key: str
    message: str


class Backfilled(NamedTuple):
    """BACKFILL's reply."""

    answer: Answer
    status: str | None  # the status a refusal saw
    run_ids: list[str]  # the runs added

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Backfilled:
        """``{'ok', run_id, ...}``, ``{'refused', status}`` or ``{'missing'}``."""
        answer = Answer(text(reply[0]))
        if answer != Answer.OK:
            return cls(answer, text(reply[1]) if len(reply) > 1 else None, [])
        return cls(answer, None, [text(v) for v in reply[1:]])


# -- READ_DUE -----------------------------------------------------------------------------------


class DueRead(NamedTuple):
    """READ_DUE's reply, per due entry: what beat needs to decide it."""

    member: str
    due_ms: int
    job_id: str  # '' when unknown
    brief: str  # its brief fields packed (jobfields.read_brief), '' when the job is gone
    runs_done: int
    anchor_ms: int
    version: int  # bumped by every update (UPDATE_JOB); the claim checks it
    traceparent: str  # an r: entry's run's trace ('' = none, and always for a j: entry)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> list[DueRead]:
        """The script's flat list, one row of fields per entry."""
        size = len(cls._fields)
        out = []
        for at in range(0, len(reply), size):
            member, score, job_id, brief, done, anchor, version, traceparent = (
                text(v) for v in reply[at : at + size]
            )
            out.append(
                cls(
                    member,
                    int(float(score)),
                    job_id,
                    brief,
                    int(done or 0),
                    int(anchor or 0),
                    int(version or 0),
                    traceparent,
                )
            )
        return out


# -- worker -------------------------------------------------------------------------------------


class FinishRunArgs(NamedTuple):
    """FINISH_RUN's ARGV: one attempt's outcome, fenced by the attempt number."""

    attempt: int
    now_ms: int
    outcome: str  # completed | retry | retry_due | failed | cancelled
    result_json: str
    error_text: str
    traceback: str
    cached: int  # 0 / 1
    retention_s: int  # the run record's, once it completed
    due_ms: ScriptArg  # retry_due: when beat hands the retry back
    run_id: str
    prefix: str
    job_retention_s: int
    dead_retention_s: int


class BeginReply(NamedTuple):
    """BEGIN_RUN's reply: ``run`` with the attempt, or ``done``, ``skip``, ``gone``, ``busy``."""

    verdict: str
    attempt: int = 0  # run
    spec: str = ""  # run: the spec fields packed (jobfields.read_spec)
    nominal_ms: int = 0  # run
    manual: bool = False  # run
    wait_ms: int = 0  # busy: until the holder's lease runs out

    @classmethod
    def from_reply(cls, reply: list[Any]) -> BeginReply:
        """``{'run', attempts, spec, nominal_ms, manual}``, ``{'busy', wait_ms}`` or ``{verdict}``."""
        verdict = text(reply[0])
        if verdict == "busy":
            return cls(verdict, wait_ms=int(text(reply[1])))
        if verdict != "run":
            return cls(verdict)
        _, attempt, spec, nominal, manual = reply
        return cls(verdict, int(attempt), text(spec), int(nominal), text(manual) == "1")


# -- producer management ------------------------------------------------------------------------


class Answered(NamedTuple):
    """CHANGE_STATE's, CANCEL_RUN's and ADD_RUN's reply."""

    answer: Answer
    status: str | None  # the status a refusal saw (CANCEL_RUN: the status it had)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Answered:
        """``{'ok'}``, ``{'refused', status}`` or ``{'missing'}``."""
        return cls(Answer(text(reply[0])), text(reply[1]) if len(reply) > 1 else None)


class UpdateJobArgs(NamedTuple):
    """UPDATE_JOB's ARGV: the job as the producer read it, and what to write over it."""

    job_id: str
    now_ms: int
    version: int  # the job's version read
    runs_done: int  # read: a claim in between changes it
    status: str  # read
    spec: str  # the new spec's fields packed (jobfields.pack_spec)
    next_run_ms: ScriptArg  # '' = nothing left: the schedule completes
    anchor_ms: int
    fp: str  # the identity entry it should hold (key entry or fingerprint key; '' = none)
    prefix: str
    job_retention_s: int


# -- beat ---------------------------------------------------------------------------------------


class LockReply(NamedTuple):
    """ACQUIRE_LOCK's reply."""

    acquired: bool
    token: str  # the token held now (ours when acquired)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> LockReply:
        """``{1, token}`` or ``{0, held_token}``."""
        acquired, token = reply
        return cls(bool(int(acquired)), text(token))
