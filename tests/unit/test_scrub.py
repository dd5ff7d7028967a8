"""Unit tests for scrubbing session values out of error texts: examples and a property test."""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ductape_jobs.scrub import FRAGMENT_CHARS, MASK, SHORT_CHARS, Scrubber


class Card(BaseModel):
    """A model whose validation errors quote (and shorten) the input."""

    number: int


def pydantic_text(value: object) -> str:
    """The error text pydantic writes for ``value`` given where an int is wanted."""
    try:
        Card.model_validate({"number": value})
    except ValidationError as exc:
        return str(exc)
    return "valid"  # a numeric string validates; the caller's text still shows it elsewhere


def forms(value: str) -> list[str]:
    """How tests expect a string can be shown, derived here independently of the scrubber."""
    shown = [value, value.upper(), value.lower()]
    return shown + [
        f(s)
        for s in shown
        for f in (
            lambda s: repr(s)[1:-1],
            lambda s: ascii(s)[1:-1],
            lambda s: json.dumps(s)[1:-1],
            lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
            lambda s: repr(s + "'\"")[1:-4],
        )
    ]


# --- examples -----------------------------------------------------------------------------

EXAMPLES = [
    # (value, text, scrubbed)
    ('O\'Brien "Bob"', "ValueError: no user 'O\\'Brien \"Bob\"'", "ValueError: no user '***'"),
    ("Zoë\tQuinn", 'KeyError: "Zo\\u00eb\\tQuinn"', 'KeyError: "***"'),
    ("Zoë\tQuinn", "KeyError: 'Zo\\xeb\\tQuinn'", "KeyError: '***'"),
    ("Zoë\tQuinn", "KeyError: 'Zoë\\tQuinn'", "KeyError: '***'"),
    ("Zoë\tQuinn", "TypeError: ['ZOË\\tQUINN']", "TypeError: ['***']"),
    ("ada@example.com", "mailbox ADA@EXAMPLE.COM is full", "mailbox *** is full"),
    ("ada@example.com", "no mailbox Ada@Example.Com", "no mailbox ***"),
    ("straße", "unknown street STRASSE", "unknown street ***"),
    ('O\'Brien "Bob"', "Exception(" + repr(repr('O\'Brien "Bob"')) + ")", "Exception('\\'***\\'')"),
    ("123", "card refused: cvv 123, line 123", "card refused: cvv ***, line ***"),
    ("123", "order 41234 and token abc123 and 123x stay", "order 41234 and token abc123 and 123x stay"),
    ("42", 'File "h.py", line 42, in run', 'File "h.py", line ***, in run'),
    ("a", "a b (a) ab", "*** b (***) ab"),
    (7, "Error: [7] in 17", "Error: [***] in 17"),
    (9.5, "score 9.5 is low", "score *** is low"),
    ("4111111111111111", "card 41111111111...", "card ***..."),
    ("secret-value", "nothing to hide here", "nothing to hide here"),
    (True, "ok: True, None", "ok: True, None"),
]


@pytest.mark.parametrize(("value", "text", "expected"), EXAMPLES)
def test_examples(value: object, text: str, expected: str) -> None:
    assert Scrubber([value]).scrub(text) == expected


def test_a_suffix_after_an_ellipsis_is_masked() -> None:
    assert Scrubber(["4111111111111111"]).scrub("card ...1111111111 refused") == "card ...*** refused"


def test_pydantics_shortened_input_value_is_masked() -> None:
    value = 'O\'Brien "Bob" Zoë\tQuinn ' * 3
    text = pydantic_text(value)
    assert "..." in text and "Quinn" in text  # pydantic did shorten it, and shows pieces of it
    scrubbed = Scrubber([value]).scrub(text)
    assert "input_value='***...***'" in scrubbed
    assert "Brien" not in scrubbed and "Quinn" not in scrubbed


def test_reprlibs_shortened_repr_is_masked() -> None:
    value = "a-long-session-value-" * 3
    text = f"got {reprlib.repr(value)}"
    assert "..." in text
    assert Scrubber([value]).scrub(text) == "got '***...***'"


@pytest.mark.parametrize("keep_end", [False, True])
def test_a_cut_never_leaves_part_of_a_value(keep_end: bool) -> None:
    value = "ada.lovelace@example.com"
    hidden = Scrubber([value])
    for limit in range(1, 80):
        for text in (f"RuntimeError: mailbox {value} is full; " * 3, value * 5):
            out = hidden.clip(text, limit, keep_end=keep_end)
            assert len(out) <= limit
            edge = out[-FRAGMENT_CHARS:] if not keep_end else out[:FRAGMENT_CHARS]
            assert not (len(edge) == FRAGMENT_CHARS and edge.lower() in value.lower()), (limit, out)
            assert "lovelace" not in out


def test_values_are_scrubbed_before_the_text_is_cut() -> None:
    # Cut first, "ada@exa" would be left at the end: neither whole nor at an ellipsis.
    value = "ada@example.com"
    text = "x" * 1990 + value + "tail"
    out = Scrubber([value]).clip(text, 2000)
    assert out == "x" * 1990 + MASK + "tail"


def test_the_cut_end_is_scrubbed_again() -> None:
    # Not the value, but its first characters, cut where the cut lands: masked all the same.
    hidden = Scrubber(["ada@example.com"])
    assert hidden.clip("to ada@example.org", 10) == "to ***"
    assert hidden.clip("x example.com ok", 9, keep_end=True) == "*** ok"


def test_no_values_cut_only() -> None:
    assert Scrubber().clip("abcdef", 3) == "abc" and Scrubber().clip("abcdef", 3, keep_end=True) == "def"
    assert not Scrubber() and not Scrubber([None, True, ""]) and Scrubber(["x"])
    assert repr(Scrubber(["ada@example.com"])) == "Scrubber(...)"


# --- the property -------------------------------------------------------------------------

_VALUE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="*")
_FILLERS = st.sampled_from(
    ["", "ValueError: ", "bad input: ", "Traceback (most recent call last):\n  ", " (line 12) ", "; got "]
)
_RENDERS: dict[str, Callable[[str], str]] = {
    "raw": lambda v: v,
    "repr": repr,
    "ascii": ascii,
    "json": json.dumps,
    "json unicode": lambda v: json.dumps(v, ensure_ascii=False),
    "upper": str.upper,
    "json of upper": lambda v: json.dumps(v.upper()),
    "ascii of upper": lambda v: ascii(v.upper()),
    "lower": str.lower,
    "title": str.title,
    "repr in a list": lambda v: repr([v]),
    "repr of a repr": lambda v: repr(repr(v)),
    "json of a repr": lambda v: json.dumps(repr(v)),
    "repr in a dict": lambda v: repr({"to": v, "q": "'\""}),
    "pydantic": pydantic_text,
    "reprlib": reprlib.repr,
    "exception repr": lambda v: repr(ValueError(f"bad {v!r}")),
}


def _leaks(value: str, out: str, cut_ends: bool) -> list[str]:
    """Where a form of ``value`` can still be read in ``out``."""
    found = []
    folded = out.lower()
    for form in {f for f in forms(value) if f}:
        if len(value) >= SHORT_CHARS:
            if form.lower() in folded:
                found.append(f"whole {form!r}")
        elif re.search(r"(?<!\w)" + re.escape(form) + r"(?!\w)", out, re.IGNORECASE):
            found.append(f"token {form!r}")
    if len(value) < SHORT_CHARS:
        return found
    ends = [(m.start(), m.end()) for m in re.finditer(r"\.{3,}|\u2026", out)]
    if cut_ends:
        ends += [(len(out), len(out)), (0, 0)]
    for form in {f.lower() for f in forms(value)}:
        for k in range(FRAGMENT_CHARS, len(form)):
            found += [f"prefix {form[:k]!r}" for before, _ in ends if folded[:before].endswith(form[:k])]
            suffix = form[-k:]
            found += [f"suffix {suffix!r}" for _, after in ends if folded.startswith(suffix, after)]
    return found


@settings(max_examples=400, deadline=None)
@given(
    value=st.text(_VALUE_CHARS, min_size=1, max_size=40),
    render=st.sampled_from(sorted(_RENDERS)),
    before=_FILLERS,
    after=_FILLERS,
    cut=st.none() | st.tuples(st.integers(1, 200), st.booleans()),
)
@example(value='O\'Brien "Bob"', render="repr in a dict", before="", after="", cut=None)
@example(value="Zoë\tQuinn", render="json", before="", after="", cut=None)
@example(value="ADA@example.com", render="upper", before="", after="", cut=(20, False))
@example(value="123", render="raw", before="cvv ", after=" refused", cut=None)
@example(value='O\'Brien "Bob" Zoë\tQuinn' * 3, render="pydantic", before="", after="", cut=None)
def test_no_form_of_a_value_survives(
    value: str, render: str, before: str, after: str, cut: tuple[int, bool] | None
) -> None:
    text = before + _RENDERS[render](value) + after
    hidden = Scrubber([value, "unrelated-other-value"])
    out = hidden.scrub(text) if cut is None else hidden.clip(text, cut[0], keep_end=cut[1])
    if cut is not None:
        assert len(out) <= cut[0]
    assert _leaks(value, out, cut_ends=cut is not None) == [], (text, out)


@given(value=st.text(_VALUE_CHARS, min_size=SHORT_CHARS, max_size=30), n=st.integers(1, 5))
def test_repeated_values_are_all_masked(value: str, n: int) -> None:
    assert Scrubber([value]).scrub(" | ".join([value] * n)).count(value) == 0


@pytest.mark.parametrize(
    ("text", "limit", "keep_end", "clipped"),
    [("ab 123", 5, False, "ab **"), ("123 ab", 5, True, "23 ab"), ("cvv 12", 6, False, "cvv **")],
)
def test_a_cut_that_makes_a_short_value_whole_stays_within_its_limit(
    text: str, limit: int, keep_end: bool, clipped: str
) -> None:
    # '123' cut to '12' is a whole short value: masking it would make the text longer than asked.
    assert Scrubber(["12"]).clip(text, limit, keep_end=keep_end) == clipped
