"""The Celery worker entry point: ``celery -A workers worker``.

Owns: building the Celery app from the environment, importing the handler modules named in
``DUCTAPE_HANDLERS``, and registering one Celery task per event. Must not talk to Redis except
through ``ductape_jobs`` (the store and the runner).
"""

from __future__ import annotations

from workers.app import app, build_app

__all__ = ["app", "build_app"]
