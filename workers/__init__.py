"""The Celery worker entry point: ``celery -A workers worker``.

Owns: building the Celery app from the environment (``create_app``), importing the handler
modules named in ``DUCTAPE_HANDLERS``, and registering one Celery task per event. Importing the
package builds nothing and connects to nothing: ``workers.app``, what ``celery -A workers`` looks
up, is made on that first look (Celery's app-factory pattern). Must not import ``beat``, and must
not talk to Redis except through ``ductape_jobs`` (the store and the runner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.factory import create_app

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app", "create_app"]


def __getattr__(name: str) -> Any:
    """``workers.app``: the app ``create_app`` makes from the environment, made on first use."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made = globals()["app"] = create_app()
    return made
