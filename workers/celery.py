"""What ``celery -A workers`` loads: the worker's app, made from the environment.

Celery looks for ``workers.app``, then ``workers.celery``, and finds no app on the package, so it
imports this module (with the working directory on the path, where the handler modules named in
``DUCTAPE_HANDLERS`` usually live). Importing ``workers`` itself makes nothing.
"""

from __future__ import annotations

from workers.factory import create_app

app = create_app()
