"""Every example of ``seed/scheduling-jobs.md``, in Python spelling."""

from __future__ import annotations

from typing import Any

from ductape_jobs import Ductape


def quick_example(ductape: Ductape) -> Any:
    """Schedule a job to run immediately."""
    return ductape.job.schedule(
        env="prd",
        product_tag="my-app",
        event="send_welcome_email",
        start_at=0,  # 0 means run immediately
        retries=3,
        input={"userId": "user_123", "email": "john@example.com"},
    )


def run_immediately(ductape: Ductape) -> Any:
    """Run immediately."""
    return ductape.job.schedule(
        env="prd",
        product_tag="billing",
        event="process_payment",
        start_at=0,
        retries=3,
        input={"orderId": "order_456", "amount": 99.99},
    )


def at_a_specific_time(ductape: Ductape, start_at: int = 1704067200) -> Any:
    """Run at a specific timestamp (Unix seconds; a past time runs now)."""
    return ductape.job.schedule(
        env="prd",
        product_tag="marketing",
        event="send_campaign",
        start_at=start_at,
        retries=2,
        input={"campaignId": "camp_123", "audience": "active_users"},
    )


def daily_cron(ductape: Ductape) -> Any:
    """Run every day at 9 AM New York time."""
    return ductape.job.schedule(
        env="prd",
        product_tag="reports",
        event="generate_daily_report",
        start_at=0,
        retries=2,
        input={},
        repeat={"cron": "0 9 * * *", "tz": "America/New_York"},
    )


def every_24_hours(ductape: Ductape) -> Any:
    """Run every 24 hours (every is in milliseconds)."""
    return ductape.job.schedule(
        env="prd",
        product_tag="sync",
        event="sync_inventory",
        start_at=0,
        retries=3,
        input={},
        repeat={"every": 86400000},
    )


def weekly_four_times(ductape: Ductape) -> Any:
    """Run weekly, but only 4 times."""
    return ductape.job.schedule(
        env="prd",
        product_tag="reminders",
        event="send_reminder",
        start_at=0,
        retries=2,
        input={"userId": "user_123"},
        repeat={"every": 604800000, "limit": 4},
    )


def daily_until(ductape: Ductape, end_date: str = "2025-12-31T23:59:59Z") -> Any:
    """Run daily until an end date (ISO string; a date already past is refused)."""
    return ductape.job.schedule(
        env="prd",
        product_tag="promo",
        event="check_promo_status",
        start_at=0,
        retries=1,
        input={},
        repeat={"every": 86400000, "endDate": end_date},
    )


def with_session(ductape: Ductape, token: str) -> Any:
    """Resolve $Session{...} placeholders from a signed session token."""
    return ductape.job.schedule(
        env="prd",
        product_tag="notifications",
        event="send_digest",
        start_at=0,
        retries=3,
        input={"userId": "$Session{user}{id}", "email": "$Session{user}{email}"},
        session={"tag": "user-session", "token": token},
    )
