"""Handlers for every event in the seed's examples (``DUCTAPE_HANDLERS=examples.handlers``)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from ductape_jobs import RunContext, handler

log = logging.getLogger("examples")


class WelcomeEmail(BaseModel):
    """The Quick Example's input, validated before the handler sees it."""

    userId: str  # the seed's wire name
    email: str


@handler("send_welcome_email", product_tag="my-app")
def send_welcome_email(input: WelcomeEmail, ctx: RunContext) -> dict[str, Any]:
    """Pretends to send a welcome email."""
    log.info("welcome email to user %s (run %s, attempt %d)", input.userId, ctx.run_id, ctx.attempt)
    return {"sent_to": input.userId}


@handler("process_payment", product_tag="billing")
def process_payment(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Pretends to charge an order."""
    log.info("charging order %s: %.2f", input["orderId"], input["amount"])
    return {"order": input["orderId"], "charged": input["amount"]}


@handler("send_campaign", product_tag="marketing")
def send_campaign(input: dict[str, Any], ctx: RunContext) -> str:
    """Pretends to send a campaign."""
    log.info("campaign %s to %s", input["campaignId"], input["audience"])
    return "sent"


@handler("generate_daily_report", product_tag="reports")
def generate_daily_report(input: dict[str, Any], ctx: RunContext) -> str:
    """Pretends to build a report for the run's scheduled day."""
    return f"report for {ctx.scheduled_at.date().isoformat()}"


@handler("sync_inventory", product_tag="sync")
def sync_inventory(input: dict[str, Any], ctx: RunContext) -> str:
    """Pretends to sync inventory."""
    return "synced"


@handler("send_reminder", product_tag="reminders")
def send_reminder(input: dict[str, Any], ctx: RunContext) -> str:
    """Pretends to remind a user."""
    return f"reminded {input.get('userId')}"


@handler("check_promo_status", product_tag="promo")
def check_promo_status(input: dict[str, Any], ctx: RunContext) -> str:
    """Pretends to check a promotion."""
    return "active"


@handler("send_digest", product_tag="notifications")
def send_digest(input: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Receives the session's values resolved; returns only what is safe to show."""
    return {"digest_for": input["userId"]}


@handler("tick", product_tag="demo")
def tick(input: dict[str, Any], ctx: RunContext) -> str:
    """The demo's fast recurring job, so repeats are visible within a minute."""
    return f"{input.get('name')} #{ctx.run_id.rsplit(':', 1)[1]}"
