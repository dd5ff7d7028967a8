"""Each (product_tag, event) pair has its own Celery task name, never one of Celery's own."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductape_jobs.celery_app import create_app
from ductape_jobs.errors import JobValidationError
from ductape_jobs.models import JobRequest
from ductape_jobs.registry import Registry, RunContext
from ductape_jobs.settings import Settings
from ductape_jobs.terms import JobSpec, task_name
from ductape_jobs.wire import MessageBuilder

# Mostly short tags over a tiny alphabet with dots, where collisions would show up if they could.
slug = st.one_of(
    st.from_regex(r"[ab][ab.]{0,5}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True),
)
dotted = st.builds(
    lambda head, tail: f"{head}.{tail}", slug, st.from_regex(r"[A-Za-z0-9_.-]{0,8}", fullmatch=True)
)


def noop(input: dict[str, Any], ctx: RunContext) -> None:
    return None


def other(input: dict[str, Any], ctx: RunContext) -> None:
    return None


@given(slug, slug, slug, slug)
def test_two_pairs_share_a_name_only_when_they_are_the_same_pair(p1: str, e1: str, p2: str, e2: str) -> None:
    assert (task_name(p1, e1) == task_name(p2, e2)) == ((p1, e1) == (p2, e2))


@given(dotted, slug)
def test_a_dotted_product_is_split_from_its_event_by_a_colon(product: str, event: str) -> None:
    assert task_name(product, event).split(":") == [product, event]


def test_names_without_a_dot_in_the_product_are_unchanged() -> None:
    assert task_name("billing", "process_payment") == "billing.process_payment"
    assert task_name("billing", "refund.notify") == "billing.refund.notify"
    assert task_name("billing.refund", "notify") == "billing.refund:notify"


def test_the_colliding_pairs_of_the_issue_get_two_tasks_and_two_messages() -> None:
    registry = Registry()
    one = registry.add("billing.refund", "notify", noop)
    two = registry.add("billing", "refund.notify", other)
    settings = Settings(key_prefix="t")
    app = create_app(settings)
    for entry in (one, two):  # what workers/app.py does for every handler
        app.task(name=entry.task_name, shared=False)(entry.fn)
    assert app.tasks[one.task_name].run is noop and app.tasks[two.task_name].run is other
    builder = MessageBuilder(app, settings)
    for entry in (one, two):
        spec = JobSpec(env="dev", product_tag=entry.product_tag, event=entry.event, retries=0, input={},
                       created_ms=0)  # fmt: skip
        headers = json.loads(builder.build("j:1", spec, 1, 1).payload)["headers"]
        assert app.tasks[headers["task"]].run is entry.fn


@pytest.mark.parametrize("product", ["celery", "celery.x"])
def test_celerys_namespace_is_refused_at_schedule(product: str) -> None:
    with pytest.raises(
        JobValidationError, match=r"^product_tag: .*reserved.*celery\.chord_unlock"
    ) as refused:
        JobRequest.parse({"env": "dev", "product_tag": product, "event": "backend_cleanup"})
    assert refused.value.field == "product_tag"
    assert repr(product) in str(refused.value) and "choose another product tag" in str(refused.value)


@pytest.mark.parametrize("product", ["celery", "celery.x"])
def test_celerys_namespace_is_refused_at_registration(product: str) -> None:
    with pytest.raises(JobValidationError, match=r"^handler\.product_tag: .*reserved") as refused:
        Registry().add(product, "chord_unlock", noop)
    assert refused.value.field == "handler.product_tag"


@pytest.mark.parametrize("product", ["Celery", "celeryx", "my-celery", "celery_jobs"])
def test_names_near_celerys_are_fine(product: str) -> None:
    JobRequest.parse({"env": "dev", "product_tag": product, "event": "e"})
    assert not task_name(product, "e").startswith("celery.")
    Registry().add(product, "e", noop)


@pytest.mark.parametrize(
    ("product", "event", "field"),
    [("a:b", "e", "product_tag"), ("p", "x:y", "event"), ("p", "", "event"), ("", "e", "product_tag"),
     ("p", "a b", "event"), ("p", "e\n", "event"), ("p", 1, "event")],
)  # fmt: skip
def test_registration_takes_only_the_tags_schedule_takes(product: str, event: Any, field: str) -> None:
    with pytest.raises(JobValidationError, match=re.escape(f"handler.{field}: ")):
        Registry().add(product, event, noop)
