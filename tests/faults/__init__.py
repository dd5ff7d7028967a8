"""Fault injection: real Redis, ``celery worker`` and ``celery beat`` processes, killed on purpose.

Each test counts what it did (operations, faults injected) and what came of it (lost,
duplicated), prints one summary line and appends it to ``tests/output/faults.jsonl``.
"""
