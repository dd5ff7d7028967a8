"""The Celery worker entry point: ``celery -A workers worker``.

Owns: building the Celery app from the environment (``create_app``), importing the handler
modules named in ``DUCTAPE_HANDLERS``, registering one Celery task per event, and keeping the
event loop's timers to those still to come (``hub_timers``). Importing the
package makes nothing and connects to nothing: the app ``celery -A workers`` runs is made in
``workers.celery`` (Celery's app-factory layout). Must not import ``beat``, and must not talk to
Redis except through ``ductape_jobs`` (the store and the runner).
"""

from __future__ import annotations

from workers.factory import create_app

__all__ = ["create_app"]
