"""A sealed job's data at rest: what took values from a session stays encrypted or masked.

A job whose input drew values from a session is stored with that input masked (what Redis,
Celery events and Flower show) and sealed (what the handler gets, see ``planning``), together
with the session values it took. Its result is sealed the same way, since handlers often echo
their input, and its error texts are scrubbed of the session values (``scrub``) before they reach
run records, dead letters, logs or Celery events. Seals name the key that made them, so a
session type's key ring can rotate (``keyring``). Pure: no I/O; the keys come from ``Sessions``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ductape_jobs.errors import SessionError
from ductape_jobs.keyring import KeyRing
from ductape_jobs.scrub import MASK, Scrubber, leaves
from ductape_jobs.sessions import Sessions
from ductape_jobs.terms import JobSpec

__all__ = ["MASK", "SEALED_KEY", "Opened", "Vault", "seal_input"]

SEALED_KEY = "$sealed"
# What a job's sealed input holds (since key rings; older seals hold the input alone).
_INPUT, _VALUES = "$input", "$values"


def seal_input(ring: KeyRing, value: dict[str, Any], session_values: Sequence[Any]) -> str:
    """The resolved input and the session values it took, sealed under the ring's newest key."""
    return ring.seal({_INPUT: value, _VALUES: list(session_values)})


@dataclass(frozen=True)
class Opened:
    """A job's input as the handler gets it, and the scrubber of its session values."""

    input: dict[str, Any]
    hidden: Scrubber


class Vault:
    """Opens and seals the session-derived data of jobs with the configured key rings."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    def __repr__(self) -> str:
        return f"Vault({self.sessions!r})"

    def open(self, spec: JobSpec) -> Opened:
        """The input the handler gets (the sealed original when there is one), and what to hide.

        A seal made under a key that left the ring raises ``RetiredKeyError``.
        """
        if spec.sealed is None:
            return Opened(dict(spec.input), Scrubber())
        opened = self._ring(spec).open(spec.sealed)
        taken: list[Any] = []
        if isinstance(opened, dict) and set(opened) == {_INPUT, _VALUES} and ":" in spec.sealed:
            opened, taken = opened[_INPUT], opened[_VALUES]
        if not isinstance(opened, dict):
            raise SessionError("sealed", "the sealed input is not an object")
        return Opened(opened, Scrubber(_session_values(spec, opened, taken)))

    def open_input(self, spec: JobSpec) -> dict[str, Any]:
        """The input the handler gets: the sealed original when there is one."""
        return self.open(spec).input

    def seal_result(self, spec: JobSpec, result_json: str) -> str:
        """The result as stored: sealed (as {"$sealed": ...}) when the input was."""
        if spec.sealed is None:
            return result_json
        return json.dumps({SEALED_KEY: self._ring(spec).seal(json.loads(result_json))})

    def shown_result(self, spec: JobSpec, stored_json: str) -> Any:
        """What Celery gets back from the task (its logs and task-succeeded events show it)."""
        if spec.sealed is not None:
            return MASK
        return None if stored_json == "null" else json.loads(stored_json)  # most results: no parse

    def open_result(self, spec: JobSpec, stored: Any) -> Any:
        """A stored result for the caller; left sealed when this side lacks the key that sealed it."""
        if spec.sealed is None or not (isinstance(stored, dict) and set(stored) == {SEALED_KEY}):
            return stored
        try:
            return self._ring(spec).open(stored[SEALED_KEY])
        except SessionError:
            return stored

    def _ring(self, spec: JobSpec) -> KeyRing:
        return self.sessions.ring(spec.session_tag or "")


def _session_values(spec: JobSpec, opened: dict[str, Any], taken: list[Any]) -> list[object]:
    """The session data the input took, and the input's values where session data went."""
    found: list[object] = []
    leaves(taken, found)
    for path in spec.redact_paths:
        node: Any = opened
        try:
            for step in path:
                node = node[step]
        except (KeyError, IndexError, TypeError):
            continue
        leaves(node, found)
    return found
