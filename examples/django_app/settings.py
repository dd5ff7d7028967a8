"""Minimal Django settings for the example (``DJANGO_SETTINGS_MODULE=examples.django_app.settings``)."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = ["examples.django_app.apps.JobsConfig"]
ROOT_URLCONF = "examples.django_app.urls"
USE_TZ = True
