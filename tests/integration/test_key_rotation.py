"""Schedules sealed under a session key ring, over real Redis: the same schedule across a rotation."""

from __future__ import annotations

from typing import Any

import redis

from ductape_jobs import Ductape, Settings
from ductape_jobs.keyring import key_id

OLD = "test-secret-not-for-prod-0123456789abcdef"  # the conftest secret
NEW = "rotated-secret-not-for-prod-0123456789abcd"


def client(settings: Settings, *secrets: str) -> Ductape:
    """A producer whose "user-session" ring is ``secrets``."""
    return Ductape(settings=settings.replace(**{"sessions": {"user-session": {"secrets": list(secrets)}}}))


def test_the_same_schedule_is_found_across_a_rotation_until_the_old_key_goes(
    ductape: Ductape, settings: Settings, r: redis.Redis, prefix: str
) -> None:
    token = ductape.sessions.start("user-session", {"email": "ada@example.com"})
    request: dict[str, Any] = {
        "env": "dev", "product_tag": "tests", "event": "echo", "input": {"to": "$Session{email}"},
        "repeat": {"every": 60_000}, "start_at": "2999-01-01T00:00:00Z",
        "session": {"tag": "user-session", "token": token},
    }  # fmt: skip
    first = ductape.job.schedule(request).job_id
    with client(settings, NEW, OLD) as rotated:
        assert rotated.job.schedule(request).job_id == first  # found through its digest under OLD
        fresh = rotated.sessions.start("user-session", {"email": "ada@example.com"})
        again = {**request, "session": {"tag": "user-session", "token": fresh}}
        assert rotated.job.schedule(again).job_id == first  # a new token, the same values
    # The old job's fingerprint is the only one written: the twin lookup did not add keys.
    assert len(list(r.scan_iter(match=f"{prefix}:fp:*"))) == 1
    with client(settings, NEW) as after:
        # Without the old key its digest cannot be made: a new schedule, sealed under NEW.
        second = after.job.schedule({**request, "session": {"tag": "user-session", "token": fresh}}).job_id
        assert second != first
        assert after.job.get(second).spec.sealed.startswith(key_id(NEW) + ":")  # type: ignore[union-attr]
        assert (
            after.job.schedule({**request, "session": {"tag": "user-session", "token": fresh}}).job_id
            == second
        )
