"""The scripts' rows and replies (rows.py) match what the Lua in scripts.py reads and returns.

Read from the Lua text: a row script declares ``local HEAD, ROW = h, r`` and unpacks its head
and each row into locals named as the NamedTuple's fields; a reply's arity is that of the tables
the script returns (or appends per item). A field added on one side only fails here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import pytest

from ductape_jobs import scripts
from ductape_jobs.records import Answer, Swept
from ductape_jobs.rows import (
    Answered,
    Backfilled,
    BackfillHead,
    BackfillRow,
    BeginReply,
    ClaimDueHead,
    ClaimDueRow,
    Claimed,
    CreateJobsHead,
    CreateJobsRow,
    DueRead,
    FinishRunArgs,
    LockReply,
    TwinFound,
    UpdateJobArgs,
)

ROW_SCRIPTS = [
    ("CREATE_JOBS", CreateJobsHead, CreateJobsRow),
    ("CLAIM_DUE", ClaimDueHead, ClaimDueRow),
    ("BACKFILL", BackfillHead, BackfillRow),
]


def unpacked(lua: str, source: str) -> list[str]:
    """The names of the locals one ``unpack(ARGV, <source>)`` assigns."""
    found = re.findall(r"local ([\w,\s]+?)\s*=\s*unpack\(ARGV, " + re.escape(source) + r"\)", lua)
    assert len(found) == 1, f"expected one unpack(ARGV, {source}), found {len(found)}"
    return [name.strip() for name in found[0].split(",")]


def returned(lua: str) -> list[list[str]]:
    """The items of every table literal the script returns, split at top-level commas."""
    tables = []
    for body in re.findall(r"return \{([^{}]*)\}", lua):
        items, depth, item = [], 0, ""
        for ch in body:
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(item.strip())
                item = ""
            else:
                item += ch
        tables.append([*items, item.strip()] if item.strip() else items)
    return tables


def sample(items: list[str]) -> list[Any]:
    """A reply as the table would give it: string literals as bytes, anything else as b'1'."""
    return [item.strip("'").encode() if item.startswith("'") else b"1" for item in items]


@pytest.mark.parametrize(("name", "head", "row"), ROW_SCRIPTS, ids=[n for n, _, _ in ROW_SCRIPTS])
def test_each_row_script_reads_its_head_and_rows_as_the_named_tuples_lay_them_out(
    name: str, head: type[NamedTuple], row: type[NamedTuple]
) -> None:
    lua = getattr(scripts, name)
    sizes = re.findall(r"local HEAD, ROW = (\d+), (\d+)", lua)
    assert sizes == [(str(len(head._fields)), str(len(row._fields)))]
    assert unpacked(lua, "1, HEAD") == list(head._fields)
    assert unpacked(lua, "at + 1, at + ROW") == list(row._fields)
    assert "ARGV[" not in lua  # nothing is read past the two structures
    assert re.findall(r"for i = 1, \(#ARGV - HEAD\) / ROW do\n  local at = HEAD \+ \(i - 1\) \* ROW\n", lua)


@pytest.mark.parametrize(("name", "args"), [("FINISH_RUN", FinishRunArgs), ("UPDATE_JOB", UpdateJobArgs)])
def test_finish_run_and_update_job_read_their_arguments_as_the_named_tuples_lay_them_out(
    name: str, args: type[NamedTuple]
) -> None:
    lua = getattr(scripts, name)
    assert re.findall(r"local ARGS = (\d+)", lua) == [str(len(args._fields))]
    assert unpacked(lua, "1, ARGS") == list(args._fields)
    assert "ARGV[" not in lua


def test_a_field_added_on_one_side_only_is_caught() -> None:
    lua = scripts.CREATE_JOBS.replace(" = unpack(ARGV, at + 1", ", extra = unpack(ARGV, at + 1")
    assert unpacked(lua, "at + 1, at + ROW") != list(CreateJobsRow._fields)


def test_the_per_item_replies_append_one_field_per_named_tuple_field() -> None:
    assert scripts.CREATE_JOBS.count("twins[#twins+1] =") == len(TwinFound._fields)
    assert scripts.READ_DUE.count("out[#out+1] =") == len(DueRead._fields)
    flat = [b"j:a", b"5.0", b"a", b"{}", b"2", b"3", b"4", b""] * 2
    assert DueRead.from_reply(flat) == [DueRead("j:a", 5, "a", "{}", 2, 3, 4, "")] * 2
    assert TwinFound.from_reply([1, b"x", 3, b"y"]) == [TwinFound(0, "x"), TwinFound(2, "y")]


def test_sweep_and_lock_replies_have_the_named_tuples_arity() -> None:
    (sweep,) = returned(scripts.SWEEP)
    assert len(sweep) == len(dataclasses.fields(Swept))
    locks = returned(scripts.ACQUIRE_LOCK)
    assert len(locks) == 2
    for table in locks:
        assert len(table) == len(LockReply._fields)
        LockReply.from_reply(sample(table))


def test_every_begin_run_reply_decodes_whole() -> None:
    tables = returned(scripts.BEGIN_RUN)
    assert {t[0] for t in tables} == {"'run'", "'done'", "'skip'", "'gone'", "'busy'"}
    for table in tables:
        got = BeginReply.from_reply(sample(table))
        assert got.verdict == table[0].strip("'")
        if got.verdict == "run":  # strict: a value more or less on either side fails to decode
            with pytest.raises(ValueError):
                BeginReply.from_reply([*sample(table), b"1"])
            with pytest.raises(ValueError):
                BeginReply.from_reply(sample(table)[:-1])


@pytest.mark.parametrize("name", ["CHANGE_STATE", "ADD_RUN", "UPDATE_JOB"])
def test_management_replies_fit_a_verdict(name: str) -> None:
    tables = returned(getattr(scripts, name))
    assert tables
    for table in tables:
        assert 1 <= len(table) <= len(Answered._fields)
        got = Answered.from_reply(sample(table))
        assert got.answer in tuple(Answer)
        assert (got.status is None) == (len(table) == 1)


def test_a_fenced_claim_is_told_from_claimed_indexes() -> None:
    assert returned(scripts.CLAIM_DUE) == [["-1"]]
    assert Claimed.from_reply([-1]) == Claimed(True, ())
    assert Claimed.from_reply([1, 3]) == Claimed(False, (0, 2))
    assert Claimed.from_reply([]) == Claimed(False, ())


def test_backfill_replies_decode_whole() -> None:
    tables = returned(scripts.BACKFILL)
    assert {t[0] for t in tables} == {"'missing'", "'refused'"}
    assert "local added, inflight = {'ok'}, {}" in scripts.BACKFILL
    assert Backfilled.from_reply([b"ok", b"a:1", b"a:2"]) == Backfilled(Answer.OK, None, ["a:1", "a:2"])
    assert Backfilled.from_reply([b"refused", b"cancelled"]) == Backfilled(Answer.REFUSED, "cancelled", [])
    assert Backfilled.from_reply([b"missing"]) == Backfilled(Answer.MISSING, None, [])
