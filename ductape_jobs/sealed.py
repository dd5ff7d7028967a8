"""A sealed job's data at rest: what took values from a session stays encrypted or masked.

A job whose input drew values from a session is stored with that input masked (what Redis,
Celery events and Flower show) and sealed (what the handler gets, see ``planning``). Its result
is sealed the same way, since handlers often echo their input, and its error texts are scrubbed
of the session values before they reach run records, dead letters, logs or Celery events.
Pure: no I/O; the secrets come from ``Sessions``.
"""

from __future__ import annotations

import json
from typing import Any

from ductape_jobs.errors import SessionError
from ductape_jobs.models import JobSpec
from ductape_jobs.sessions import Sessions, seal, unseal

MASK = "***"
SEALED_KEY = "$sealed"
# Shorter values are not scrubbed from error texts: replacing "1" or "42" would garble every
# line number of a traceback while hiding next to nothing.
MIN_SCRUB_CHARS = 4


class Vault:
    """Opens and seals the session-derived data of jobs with the configured session secrets."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    def __repr__(self) -> str:
        return f"Vault({self.sessions!r})"

    def open_input(self, spec: JobSpec) -> dict[str, Any]:
        """The input the handler gets: the sealed original when there is one."""
        if spec.sealed is None:
            return dict(spec.input)
        opened = unseal(spec.sealed, self._secret(spec))
        if not isinstance(opened, dict):
            raise SessionError("sealed", "the sealed input is not an object")
        return opened

    def seal_result(self, spec: JobSpec, result_json: str) -> str:
        """The result as stored: sealed (as {"$sealed": ...}) when the input was."""
        if spec.sealed is None:
            return result_json
        return json.dumps({SEALED_KEY: seal(json.loads(result_json), self._secret(spec))})

    def shown_result(self, spec: JobSpec, stored_json: str) -> Any:
        """What Celery gets back from the task (its logs and task-succeeded events show it)."""
        return MASK if spec.sealed is not None else json.loads(stored_json)

    def open_result(self, spec: JobSpec, stored: Any) -> Any:
        """A stored result for the caller; left sealed when this side lacks the session secret."""
        if spec.sealed is None or not (isinstance(stored, dict) and set(stored) == {SEALED_KEY}):
            return stored
        try:
            return unseal(stored[SEALED_KEY], self._secret(spec))
        except SessionError:
            return stored

    def session_values(self, spec: JobSpec, opened: dict[str, Any]) -> list[str]:
        """The text forms of the values a session put into ``opened``, longest first."""
        found: set[str] = set()
        for path in spec.redact_paths:
            node: Any = opened
            try:
                for step in path:
                    node = node[step]
            except (KeyError, IndexError, TypeError):
                continue
            _leaves(node, found)
        return sorted((v for v in found if len(v) >= MIN_SCRUB_CHARS), key=len, reverse=True)

    def _secret(self, spec: JobSpec) -> str:
        return self.sessions.secret_for(spec.session_tag or "")


def scrub(text: str, values: list[str]) -> str:
    """``text`` with each of ``values`` replaced by the mask."""
    for value in values:
        text = text.replace(value, MASK)
    return text


def _leaves(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        for item in node.values():
            _leaves(item, out)
    elif isinstance(node, list):
        for item in node:
            _leaves(item, out)
    elif isinstance(node, str):
        out.add(node)
        # A value also shows up as its repr or JSON form in messages (quotes, escapes).
        out.add(json.dumps(node)[1:-1])
    elif node is not None and not isinstance(node, bool):
        out.add(str(node))
