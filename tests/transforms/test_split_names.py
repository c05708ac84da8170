"""Display names split in Polars must split as nameparser splits them.

split_names takes plain 'First Last' and 'Last, First' names in Polars and leaves the
rest to nameparser; the fast paths must never answer differently from nameparser.
"""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from nameparser import HumanName
from polars.testing import assert_frame_equal

from transforms.records import SCHEMA_NAMES, _plain_comma_names, split_names


def by_nameparser(full: str) -> tuple[str, str | None, str | None]:
    parsed = HumanName(full)
    first, last = parsed.first or None, parsed.last or None
    tidy = " ".join(p for p in (first, parsed.middle or None, last) if p) or full
    return tidy, first, last


def split(*names: str) -> dict[str, tuple[str, str | None, str | None]]:
    out = split_names(pl.Series(names, dtype=pl.String))
    return {row[0]: row[1:] for row in out.rows()}


def test_hand_worked_names() -> None:
    assert split(
        "Doe, Jane",
        "Weber,François",
        "Jane Doe",
        "Jane Ph.D.",  # a suffix written with periods: no last name
        "Smith, III",  # a suffix after the comma: no first name
        "de la Cruz, Uma",  # prefixes stay with the last name
        "Jane Vi",  # a Roman numeral nameparser takes for a suffix
    ) == {
        "Doe, Jane": ("Jane Doe", "Jane", "Doe"),
        "Weber,François": ("François Weber", "François", "Weber"),
        "Jane Doe": ("Jane Doe", "Jane", "Doe"),
        "Jane Ph.D.": ("Jane", "Jane", None),
        "Smith, III": ("Smith", None, "Smith"),
        "de la Cruz, Uma": ("Uma de la Cruz", "Uma", "de la Cruz"),
        "Jane Vi": ("Jane", "Jane", None),
    }


def test_comma_fast_path_takes_plain_names_only() -> None:
    names = pl.Series(
        ["Doe, Jane", "Doe , J.", "Smith, Jr", "de la Cruz, Uma", "A, B, C", "Doe, (Jo)"]
    )
    expected = pl.DataFrame(
        {
            "display_name": ["Doe, Jane", "Doe , J."],
            "name": ["Jane Doe", "J. Doe"],
            "first_name": ["Jane", "J."],
            "last_name": ["Doe", "Doe"],
        },
        schema=SCHEMA_NAMES,
    )
    assert_frame_equal(_plain_comma_names(names), expected)


def test_known_parts_are_reused_not_parsed_again() -> None:
    known = pl.DataFrame(
        [("Doe, Jane", "Someone Else", "Someone", "Else")], schema=SCHEMA_NAMES, orient="row"
    )
    out = split_names(pl.Series(["Doe, Jane"]), known)
    assert out.rows() == [("Doe, Jane", "Someone Else", "Someone", "Else")]


PLAIN = ["Jane", "Doe", "Weber", "François", "Okafor", "Li", "Xi", "Mix", "O'Neil", "Smith-Jones"]
SPECIAL = ["Dr", "dr.", "Jr", "jr.", "III", "Iv", "Vi", "v", "X", "I", "2", "Ph.D.", "M.D.", "Esq"]
MORE = [
    "van",
    "de",
    "la",
    "der",
    "and",
    "&",
    "Mr",
    "Mrs",
    "Sir",
    "J.",
    "e",
    "x@y.com",
    "(Bo)",
    '"Bo"',
]
WORD = st.sampled_from(PLAIN + SPECIAL + MORE)
FORM = st.sampled_from(["{} {}", "{}, {}", "{},{}", "{} , {}", "{} {} {}", "{}, {} {}"])


@settings(max_examples=300, deadline=None)
@given(FORM, st.lists(WORD, min_size=3, max_size=3))
def test_split_names_agrees_with_nameparser(form: str, words: list[str]) -> None:
    full = form.format(*words)
    assert split(full)[full] == by_nameparser(full)
