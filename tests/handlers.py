"""Handlers the end-to-end tests run on real workers. Each records what it saw in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from pydantic import BaseModel

from ductape_jobs import JobTimeoutError, RunContext, handler
from tests.plain_handlers import PRODUCT, calls_key, db, echo, record

__all__ = ["PRODUCT", "calls_key", "db", "echo", "record"]  # the plain handlers, served here too


@handler("flaky", product_tag=PRODUCT)
def flaky(input: dict[str, Any], ctx: RunContext) -> str:
    """Fails until attempt ``input['succeed_on']`` (never, if absent)."""
    record("flaky", input, ctx)
    if ctx.attempt < input.get("succeed_on", 10**9):
        raise RuntimeError(f"boom on attempt {ctx.attempt}")
    return "ok"


@handler("slow", product_tag=PRODUCT)
def slow(input: dict[str, Any], ctx: RunContext) -> str:
    """Sleeps ``input['seconds']`` (to be killed mid-run), then records."""
    db().rpush(calls_key("slow") + ":started", ctx.run_id)
    db().hset(calls_key("slow") + ":pids", ctx.run_id, os.getpid())  # the pool process running it
    time.sleep(float(input.get("seconds", 1)))
    record("slow", input, ctx)
    return "done"


@handler("patient", product_tag=PRODUCT)
def patient(input: dict[str, Any], ctx: RunContext) -> str:
    """Works in small steps for up to ``input['seconds']``, checking for a cancel between them."""
    db().rpush(calls_key("patient") + ":started", ctx.run_id)
    until = time.monotonic() + float(input.get("seconds", 30))
    while time.monotonic() < until:
        if ctx.cancelled():
            db().rpush(calls_key("patient") + ":cancelled", ctx.run_id)
        ctx.check_cancelled()  # raises RunCancelledError once the run is cancelled
        time.sleep(0.05)
    record("patient", input, ctx)
    return "finished"


@handler("stubborn", product_tag=PRODUCT)
def stubborn(input: dict[str, Any], ctx: RunContext) -> str:
    """Ignores its timeout and sleeps on: only the hard time limit stops it."""
    db().rpush(calls_key("stubborn") + ":started", ctx.run_id)
    until = time.monotonic() + float(input.get("seconds", 30))
    while time.monotonic() < until:
        try:
            time.sleep(until - time.monotonic())
        except JobTimeoutError:
            db().rpush(calls_key("stubborn") + ":ignored", ctx.run_id)
    record("stubborn", input, ctx)
    return "outlived"


@handler("async_echo", product_tag=PRODUCT)
async def async_echo(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """An ``async def`` handler: awaits, records, returns its input."""
    await asyncio.sleep(0.01)
    record("async_echo", input, ctx)
    return {"echo": input, "awaited": True}


@handler("async_flaky", product_tag=PRODUCT)
async def async_flaky(input: dict[str, Any], ctx: RunContext) -> str:
    """Fails until attempt ``input['succeed_on']``; sleeps ``input['seconds']`` first."""
    await asyncio.sleep(float(input.get("seconds", 0)))
    record("async_flaky", input, ctx)
    if ctx.attempt < input.get("succeed_on", 10**9):
        raise RuntimeError(f"async boom on attempt {ctx.attempt}")
    return "ok"


class Signup(BaseModel):
    """A typed input."""

    user_id: str
    email: str


@handler("typed", product_tag=PRODUCT)
def typed(input: Signup, ctx: RunContext) -> dict[str, str]:
    """Receives its input validated as a Signup."""
    record("typed", {"type": type(input).__name__, **input.model_dump()}, ctx)
    return {"user": input.user_id}


@handler("async_typed", product_tag=PRODUCT)
async def async_typed(input: Signup, ctx: RunContext) -> dict[str, str]:
    """An ``async def`` handler with a typed input."""
    record("async_typed", {"type": type(input).__name__, **input.model_dump()}, ctx)
    return {"user": input.user_id}


@handler("send_digest", product_tag="notifications")
def send_digest(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """The seed's session example: records its input and says where the digest went."""
    record("send_digest", input, ctx)
    return {"sent_to": input["email"], "user": input["userId"]}


@handler("bounce", product_tag="notifications")
def bounce(input: dict[str, Any], ctx: RunContext) -> None:
    """Records, then fails with the (session-derived) address in its message."""
    record("bounce", input, ctx)
    raise RuntimeError(f"mailbox {input['email']} does not exist")


@handler("work", product_tag=PRODUCT)
def work(input: dict[str, Any], ctx: RunContext) -> str:
    """Does ``input['ms']`` of work, then records: a run killed mid-work leaves no record."""
    time.sleep(float(input.get("ms", 0)) / 1000)
    record("work", input, ctx)
    return "worked"


@handler("echo", product_tag="other")
def other_echo(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Product "other"'s ``echo``: same event name as tests/echo, its own record."""
    record("other_echo", input, ctx)
    return {"echo": input}


class Card(BaseModel):
    """A model the session values do not fit: pydantic quotes (and shortens) them in its error."""

    number: int
    cvv: int
    holder: int


@handler("leak", product_tag=PRODUCT)
def leak(input: dict[str, Any], ctx: RunContext) -> Any:
    """Shows the session values in ``input['v']`` the way ``input['how']`` names, by raising."""
    v, how = input["v"], input["how"]
    record("leak", {"how": how, "run_id": ctx.run_id}, ctx)  # not the values: those stay sealed
    if how == "return":
        return {"v": v, "repr": repr(v), "json": json.dumps(v)}
    if how == "pydantic":
        Card.model_validate({"number": v["long"], "cvv": v["short"], "holder": v["quoted"]})
    if how == "chained":
        try:
            raise KeyError(v["email"])
        except KeyError as exc:
            raise RuntimeError(f"no account for {v['quoted']!r}") from exc
    shown = {
        "str": lambda: " ".join(str(x) for x in v.values()),
        "repr": lambda: repr(v),
        "json": lambda: json.dumps(v),
        "json unicode": lambda: json.dumps(v, ensure_ascii=False),
        "upper": lambda: str(v).upper(),
        "repr of repr": lambda: repr(repr(v)),
        "args": lambda: v,  # ValueError({...}): its str is the dict's repr
        "past the cut": lambda: "x" * 1975 + f" {v['email']} {v['long']}",
        "past the traceback cut": lambda: f"{v['long']} {v['email']} " + "y" * 8000,
    }[how]()
    raise ValueError(shown)
