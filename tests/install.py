"""The one install recipe: the Dockerfile and tests/e2e/test_install.py both follow it.

Build the wheel from the sources alone, install it into a Python that has nothing else (no dev
extras), and put the app files (the example handlers, Flower's columns) beside it on PYTHONPATH.
tests/unit/test_deploy.py checks that the Dockerfile's lines are these.
"""

from __future__ import annotations

SOURCES = ("pyproject.toml", "README.md", "ductape_jobs", "workers", "beat")  # the wheel's inputs
APP_FILES = ("examples", "flowerconfig.py")  # not in the wheel: the deployment's own files
BUILD = ("pip", "wheel", "--no-deps", "--wheel-dir", "{wheels}", "{src}")
INSTALL = ("pip", "install", "{wheels}/*.whl")


def command(template: tuple[str, ...], pip: list[str], **paths: str) -> list[str]:
    """``template`` with its paths filled in and ``pip`` (an executable and its arguments) for pip."""
    return [*pip, *(part.format(**paths) for part in template[1:])]
