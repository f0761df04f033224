"""A CSV quote that is never closed is named where it opens, not taken as the rest of the
file (which then reads as one row missing its label)."""

from __future__ import annotations

import pytest

from dmlkit.data.text import read_records


def test_an_unclosed_quote_is_named_on_its_row(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text('text,label\nhello,a\n"unterminated,b\nworld,c\n')
    with pytest.raises(ValueError, match=r"e\.csv:3: a field is not quoted as CSV wants"):
        read_records(path)


def test_doubled_quotes_and_quoted_commas_still_read(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text('text,label\n"say ""hi""",a\n"Hello, world",b\n')
    assert read_records(path) == [{"text": 'say "hi"', "label": "a"},
                                  {"text": "Hello, world", "label": "b"}]
