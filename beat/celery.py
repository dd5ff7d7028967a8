"""What ``celery -A beat beat`` loads: beat's own app, made from the environment.

Beat needs the deployment's settings, queues and broker, never the worker's handlers, runner or
the validated models they read: this app carries none of them (about 5 MB less than ``celery -A
workers beat``, which still works, and which loads the handler modules). Celery looks for
``beat.app``, then ``beat.celery``, and finds this module's ``app``; its ``beat_scheduler`` is
``beat:RedisScheduler``, so no ``-S`` is needed.
"""

from __future__ import annotations

from ductape_jobs import celery_app
from ductape_jobs.settings import Settings

settings = Settings.from_env()
app = celery_app.create_app(settings, name="beat")
celery_app.use_our_transport(app, settings)
app.ductape_settings = settings  # RedisScheduler takes these instead of reading the environment again
