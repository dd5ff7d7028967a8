"""Masking session values in error texts, in every form a handler's exception can show them.

A value is looked for as given and as Python repr / ascii / JSON escapes (one and two levels
deep), in any letter case. Values shorter than ``SHORT_CHARS`` are masked only where they stand as
a whole token, so ``42`` hides in ``line 42`` but ``1423`` stays whole. Where a text was shortened
(an ellipsis, as pydantic's ``input_value='abc...xyz'`` and reprlib write, or a cut end), a
value's prefix before the cut and its suffix after it are masked too, from ``FRAGMENT_CHARS`` on.
Texts are scrubbed before they are cut (``clip``), and the cut end is scrubbed again.
Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

MASK = "***"
SHORT_CHARS = 4
FRAGMENT_CHARS = 3
# A text is cut to this many times its limit before it is scrubbed: masks only shorten it, and
# scrubbing megabytes of handler output would only be cut away afterwards.
PRE_CUT = 4
_ROUNDS = 3  # a mask can join what was around it; scrubbing again catches what that forms
_ELLIPSIS = re.compile(r"\.{3,}|\u2026")
_Escape = Callable[[str], str]
_ESCAPES: tuple[_Escape, ...] = (
    lambda s: repr(s)[1:-1],
    lambda s: repr(s + "'\"")[1:-4],  # inside a repr that had to escape its single quotes
    lambda s: ascii(s)[1:-1],
    lambda s: ascii(s + "'\"")[1:-4],
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
)


def text_forms(value: object) -> set[str]:
    """How a session value can be written in an error text (letter case aside: matched in any)."""
    if value is None or isinstance(value, bool):
        return set()  # one bit each; masking every "True" and "None" would garble every traceback
    if isinstance(value, int | float):
        return {str(value), repr(value), json.dumps(value)}
    if not isinstance(value, str) or not value:
        return set()
    bases = {value, value.lower(), value.upper(), value.casefold(), value.title(), value.swapcase()}
    found = set(bases)
    for base in bases:
        once = {escape(base) for escape in _ESCAPES} - {base}
        found |= once
        found |= {escape(form) for form in once for escape in _ESCAPES}
    return found


def leaves(node: object, out: list[object]) -> None:
    """Append every scalar inside a JSON value to ``out`` (strings, numbers; bools and nulls too)."""
    if isinstance(node, dict):
        for item in node.values():
            leaves(item, out)
    elif isinstance(node, list | tuple):
        for item in node:
            leaves(item, out)
    else:
        out.append(node)


class Scrubber:
    """Masks every text form of a set of session values."""

    def __init__(self, values: Iterable[object] = ()) -> None:
        """Collect the forms of each value; the short ones match only as whole tokens."""
        long_forms: set[str] = set()
        alternatives: dict[str, str] = {}
        for value in values:
            short = len(str(value)) < SHORT_CHARS
            for form in text_forms(value):
                if not short:
                    long_forms.add(form)
                    alternatives[form] = re.escape(form)
                elif form not in alternatives:
                    alternatives[form] = _whole_token(form)
        ordered = sorted(alternatives, key=len, reverse=True)  # the longest form at a spot wins
        self._pattern = (
            re.compile("(?=(" + "|".join(alternatives[f] for f in ordered) + "))", re.IGNORECASE)
            if ordered
            else None
        )
        self._fragments = sorted({_fold(f) for f in long_forms}, key=len, reverse=True)

    def __repr__(self) -> str:
        return "Scrubber(...)"

    def __bool__(self) -> bool:
        return self._pattern is not None

    def scrub(self, text: str) -> str:
        """``text`` with every form of every value, and every cut-off piece of one, masked."""
        if self._pattern is None:
            return text
        for _ in range(_ROUNDS):
            spans = self._spans(text)
            if not spans:
                break
            text = _mask(text, spans)
        return text

    def clip(self, text: str, limit: int, *, keep_end: bool = False) -> str:
        """At most ``limit`` characters of ``text`` (its start, or its end), scrubbed before the
        cut; the cut end is scrubbed again, so no piece of a value is left at it."""
        if self._pattern is None:
            return text[-limit:] if keep_end else text[:limit]
        window = text[-limit * PRE_CUT :] if keep_end else text[: limit * PRE_CUT]
        clean = self.scrub(window)
        cut = clean[-limit:] if keep_end else clean[:limit]
        return cut if cut == clean else self.scrub(cut)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        assert self._pattern is not None
        spans = [(m.start(), m.start() + len(m.group(1))) for m in self._pattern.finditer(text)]
        if self._fragments:
            folded = _fold(text)
            cuts = [(m.start(), m.end()) for m in _ELLIPSIS.finditer(text)]
            for before, after in [(0, 0), *cuts, (len(text), len(text))]:
                spans += self._pieces(folded, before, after)
        return [span for span in spans if span[1] > span[0]]

    def _pieces(self, folded: str, before: int, after: int) -> list[tuple[int, int]]:
        """A value's longest prefix ending at ``before`` and longest suffix starting at ``after``."""
        head = max((_prefix_at(folded, before, form) for form in self._fragments), default=0)
        tail = max((_suffix_at(folded, after, form) for form in self._fragments), default=0)
        return [(before - head, before), (after, after + tail)]


def _prefix_at(folded: str, end: int, form: str) -> int:
    """The length of the longest prefix of ``form`` (at least FRAGMENT_CHARS) that ``folded`` has
    just before ``end``; 0 if none."""
    if end < FRAGMENT_CHARS:
        return 0
    last = folded[end - 1]
    best = 0
    at = form.find(last, FRAGMENT_CHARS - 1)
    while at != -1 and at + 1 <= end:
        if folded.endswith(form[: at + 1], 0, end):
            best = at + 1
        at = form.find(last, at + 1)
    return best


def _suffix_at(folded: str, start: int, form: str) -> int:
    """The length of the longest suffix of ``form`` (at least FRAGMENT_CHARS) that ``folded`` has
    from ``start`` on; 0 if none."""
    if start >= len(folded):
        return 0
    first = folded[start]
    at = form.find(first)
    while at != -1 and len(form) - at >= FRAGMENT_CHARS:
        if folded.startswith(form[at:], start):
            return len(form) - at
        at = form.find(first, at + 1)
    return 0


def _fold(text: str) -> str:
    # Lower case without changing the length ("İ".lower() is two characters), so positions in
    # the folded text are positions in the text.
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


def _whole_token(form: str) -> str:
    return r"(?<!\w)" + re.escape(form) + r"(?!\w)"


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    parts: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if end <= done:
            continue
        if start >= done:
            parts.append(text[done:start])
            parts.append(MASK)
        done = end
    parts.append(text[done:])
    return "".join(parts)
