"""The app's one ``Ductape`` client, made when Django starts and closed when the process exits."""

import atexit

from django.apps import AppConfig

from ductape_jobs import Ductape


class JobsConfig(AppConfig):
    name = "examples.django_app"
    label = "jobs"

    def ready(self) -> None:
        # One client per process: it is thread-safe and keeps its connections (REDIS_URL, DUCTAPE_*).
        self.ductape = Ductape()
        atexit.register(self.ductape.close)
