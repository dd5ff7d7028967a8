"""Django: a view that schedules a job with the sync client, one per process (see apps.py)."""
