"""The Lua key prelude builds, on a real server, exactly the keys keys.py builds; the scripts
build no key by hand."""

from __future__ import annotations

import re

import pytest
import redis

from ductape_jobs import scripts
from ductape_jobs.keys import LUA_KEYS, Keys, lua_prelude
from ductape_jobs.ops import SCRIPT_NAMES

SAMPLES = [
    ("ductape", "0123456789abcdef0123456789abcdef"),
    ("t-odd.prefix{tag}", "0123456789abcdef0123456789abcdef:1700000000000m"),
    ("p'q\\r", "id with 'quotes' and \\backslash"),
]


@pytest.mark.parametrize(("prefix", "some_id"), SAMPLES)
def test_the_prelude_builds_the_keys_keys_py_builds(r: redis.Redis, prefix: str, some_id: str) -> None:
    calls = ", ".join(
        f"{name}(ARGV[1], ARGV[2])" if callable(getattr(Keys, builder)) else f"{name}(ARGV[1])"
        for name, builder in LUA_KEYS.items()
    )
    got = r.eval(lua_prelude() + f"return {{{calls}}}", 0, prefix, some_id)
    keys = Keys(prefix)
    wanted = []
    for builder in LUA_KEYS.values():
        made = getattr(keys, builder)
        wanted.append(made(some_id) if callable(made) else made)
    assert [k.decode() for k in got] == wanted


def test_no_script_builds_a_key_by_hand() -> None:
    prelude = lua_prelude().splitlines(keepends=True)
    for name in SCRIPT_NAMES:
        lua = getattr(scripts, name)
        own = "".join(line for line in lua.splitlines(keepends=True) if line not in prelude)
        assert re.findall(r"\.\. ':[a-z_]+", own) == [], name
        for builder in set(re.findall(r"\b(\w+_key)\(", own)):  # from the prelude, kept with the script
            assert f"local function {builder}(" in lua, (name, builder)
