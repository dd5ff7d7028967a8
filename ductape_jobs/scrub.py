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
# A second level: an escaped value inside a message that is itself shown as a repr or JSON.
_AGAIN: tuple[_Escape, ...] = (_ESCAPES[0], _ESCAPES[1], _ESCAPES[4])


def _shown(value: object) -> bool:
    # Booleans and nulls carry one bit each; masking every "True" and "None" would garble every
    # traceback. Empty strings cannot be found.
    return (isinstance(value, int | float) and not isinstance(value, bool)) or (
        isinstance(value, str) and value != ""
    )


def text_forms(value: object) -> set[str]:
    """How a session value can be written in an error text (letter case aside: matched in any)."""
    if not _shown(value):
        return set()
    if not isinstance(value, str):
        return {str(value), repr(value), json.dumps(value)}
    # Other letter cases match by IGNORECASE; these bases are for what case changes in escapes
    # ("Ë" is \u00cb, "ë" \u00eb) and in length ("ß".upper() is "SS").
    bases = {value, value.lower(), value.upper(), value.casefold()}
    found = set(bases)
    for base in bases:
        once = {escape(base) for escape in _ESCAPES} - {base}
        found |= once
        found |= {escape(form) for form in once for escape in _AGAIN}
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
    """Masks every text form of a set of session values (compiled at the first text to scrub)."""

    def __init__(self, values: Iterable[object] = ()) -> None:
        """Keep the values; most runs succeed and never need their forms."""
        self._values = [v for v in values if _shown(v)] if values else []
        self._compiled: _Compiled | None = None

    def __repr__(self) -> str:
        return "Scrubber(...)"

    def __bool__(self) -> bool:
        return bool(self._values)

    def scrub(self, text: str) -> str:
        """``text`` with every form of every value, and every cut-off piece of one, masked."""
        if not self._values:
            return text
        if self._compiled is None:
            self._compiled = _Compiled(self._values)
        for _ in range(_ROUNDS):
            masked = self._compiled.pieces(self._compiled.whole(text))
            if masked == text:
                break
            text = masked
        return text

    def clip(self, text: str, limit: int, *, keep_end: bool = False) -> str:
        """At most ``limit`` characters of ``text`` (its start, or its end), scrubbed before the
        cut; the cut end is scrubbed again, so no piece of a value is left at it."""
        if not self._values:
            return text[-limit:] if keep_end else text[:limit]
        window = text[-limit * PRE_CUT :] if keep_end else text[: limit * PRE_CUT]
        clean = self.scrub(window)
        cut = clean[-limit:] if keep_end else clean[:limit]
        if cut == clean:
            return cut
        # A cut can leave a whole short form at its end ('123' cut to '12', a value): masking it
        # lengthens the text, so cut and scrub again; a mask is what ends up at the edge.
        for _ in range(3):
            cut = self.scrub(cut)
            if len(cut) <= limit:
                return cut
            cut = cut[-limit:] if keep_end else cut[:limit]
        if limit <= len(MASK):
            return MASK[:limit]
        return (MASK + cut[len(MASK) - limit :]) if keep_end else (cut[: limit - len(MASK)] + MASK)


class _Compiled:
    """The forms of some values: one pattern for whole forms, an index for cut-off pieces."""

    def __init__(self, values: Iterable[object]) -> None:
        alternatives: dict[str, str] = {}
        long_forms: set[str] = set()
        for value in values:
            short = len(str(value)) < SHORT_CHARS
            for form in text_forms(value):
                key = form.lower()  # forms alike but for case are one alternative (IGNORECASE)
                if not short:
                    long_forms.add(_fold(form))
                    alternatives[key] = re.escape(form)
                elif key not in alternatives:
                    alternatives[key] = r"(?<!\w)" + re.escape(form) + r"(?!\w)"
        ordered = sorted(alternatives.values(), key=len, reverse=True)  # the longest form wins
        self._pattern = re.compile("(?=(" + "|".join(ordered) + "))", re.IGNORECASE)
        # Pieces are found by the 3 characters at the cut: its last before, its first after.
        self._heads: dict[str, list[tuple[int, str]]] = {}  # -> (length, form): form[:length]
        self._tails: dict[str, list[tuple[int, str]]] = {}  # -> (length, form): form[-length:]
        for form in long_forms:
            for k in range(FRAGMENT_CHARS, len(form)):
                self._heads.setdefault(form[k - FRAGMENT_CHARS : k], []).append((k, form))
                start = len(form) - k
                self._tails.setdefault(form[start : start + FRAGMENT_CHARS], []).append((k, form))
        for table in (self._heads, self._tails):
            for found in table.values():
                found.sort(reverse=True)  # longest first: the first that fits is the one

    def whole(self, text: str) -> str:
        """``text`` with every whole form masked (overlapping ones as one)."""
        spans = [(m.start(), m.start() + len(m.group(1))) for m in self._pattern.finditer(text)]
        return _mask(text, spans)

    def pieces(self, text: str) -> str:
        """``text`` with each form's prefix before a cut or an ellipsis masked, and its suffix after."""
        if not self._heads:
            return text
        folded = _fold(text)
        spans: list[tuple[int, int]] = []
        cuts = [(m.start(), m.end()) for m in _ELLIPSIS.finditer(text)]
        for before, after in [(0, 0), *cuts, (len(text), len(text))]:
            heads = self._heads.get(folded[before - FRAGMENT_CHARS : before], ()) if before else ()
            for k, form in heads:
                if before >= k and folded[before - k : before] == form[:k]:
                    spans.append((before - k, before))
                    break
            for k, form in self._tails.get(folded[after : after + FRAGMENT_CHARS], ()):
                if folded[after : after + k] == form[len(form) - k :]:
                    spans.append((after, after + k))
                    break
        return _mask(text, spans)


def _fold(text: str) -> str:
    # Lower case without changing the length ("İ".lower() is two characters), so positions in
    # the folded text are positions in the text.
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


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
