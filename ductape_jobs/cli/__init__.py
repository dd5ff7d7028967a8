"""The ``ductape-jobs`` command line: schedule and manage jobs, and check a deployment (doctor).

Owns presentation only: every command calls the public ``Ductape`` client or reads the keys
``keys.py`` names, and maps library errors to documented exit codes. Must not import ``workers``
or ``beat``.
"""

from __future__ import annotations

from ductape_jobs.cli.main import cli, main

__all__ = ["cli", "main"]
