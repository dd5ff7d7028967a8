"""Each script carries only the prelude definitions it uses (scripts._script): Lua makes a closure
of every top-level ``local function`` on every call."""

from __future__ import annotations

import re

import pytest

from ductape_jobs import scripts
from ductape_jobs.ops import SCRIPT_NAMES

PRELUDES = {
    name: getattr(scripts, name)
    for name in ("_KEYS", "_BATCHED_WRITES", "_LIFECYCLE", "_CANCEL", "_LOSE_ATTEMPT")
}


@pytest.mark.parametrize("name", PRELUDES)
def test_a_prelude_holds_only_definitions_at_its_top_level(name: str) -> None:
    # A statement at column 0 that is not a definition would be cut off with the definition above it.
    for line in PRELUDES[name].splitlines():
        if line and not line[0].isspace():
            assert re.match(r"(local\s+(function\s+\w+\(|[\w ,]+=)|end\b|--|\}|\))", line), (name, line)


@pytest.mark.parametrize("name", PRELUDES)
def test_each_definition_of_a_prelude_ends_where_the_next_begins(name: str) -> None:
    # An indented statement after a definition's closing line would be cut with that definition.
    for names, text in scripts._definitions(PRELUDES[name]):
        code = [line for line in text.splitlines() if line.strip() and not line.startswith("--")]
        assert len(code) == 1 or re.match(r"(end|\}|\))\b", code[-1]), (name, names, code[-1])
        assert len(re.findall(r"^local\s", "\n".join(code), re.M)) == 1, (name, names)


def test_a_script_keeps_what_its_body_uses_and_what_that_uses_in_order() -> None:
    prelude = """local A = {1}
-- b uses a
local function b() return A[1] end
local function unused() return 0 end
local c, d = 1, 2
local function e()
  return b() + d
end
"""
    got = scripts._script(prelude, "return e()\n")
    assert got == (
        "local A = {1}\n-- b uses a\nlocal function b() return A[1] end\nlocal c, d = 1, 2\n"
        "local function e()\n  return b() + d\nend\nreturn e()\n"
    )
    assert scripts._script(prelude, "return 1\n") == "return 1\n"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_no_script_uses_a_definition_it_left_out(name: str) -> None:
    lua = getattr(scripts, name)
    code = re.sub(r"--[^\n]*|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "", lua)  # no comments, no strings
    # called, indexed or passed on (a table key `name = ...` of the script's own is none of these)
    used = set(re.findall(r"\b([A-Za-z_]\w*)\s*[(\[.:),]", code))
    for prelude in PRELUDES.values():
        for names, text in scripts._definitions(prelude):
            if text not in lua:
                assert not names & used, (name, names)


def test_the_worker_scripts_leave_out_what_they_never_call() -> None:
    assert "local function drop(" not in scripts.BEGIN_RUN
    assert "local function drop(" not in scripts.FINISH_RUN
    assert "local function push(" not in scripts.FINISH_RUN
    assert "local function retire(" in scripts.FINISH_RUN
