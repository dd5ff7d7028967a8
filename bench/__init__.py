"""``make bench``: ductape-jobs measured beside plain Celery and RedBeat, in one run, on one Redis.

Owns: the figures of issue 6 (producer throughput, end to end, beat release time, beat memory,
lateness, round trips), the fixtures they load and the table they print. It only measures: no
timing is ever asserted, and nothing here is imported by the library, workers or beat.
"""
