"""``read_interactions`` reads quoted CSV fields and a UTF-8 byte-order mark, and names
lines by their number in the file."""

from __future__ import annotations

import pytest

from dmlkit.data.interactions import read_interactions


@pytest.mark.parametrize("text", [
    '"user","item","rating","timestamp"\n"u1","a",5,1\n"u1","b",4,2\n"u2","a",3,1\n',
    '"u1","a",5,1\n"u1","b",4,2\n"u2","a",3,1\n',
    '"user", "item", "rating", "timestamp"\n"u1", "a", 5, 1\n"u1", "b", 4, 2\n"u2", "a", 3, 1\n',
])
def test_quoted_fields_are_read_without_their_quotes(tmp_path, text):
    path = tmp_path / "q.csv"
    path.write_text(text)
    data = read_interactions(path)
    assert data.users.tolist() == ["u1", "u1", "u2"]
    assert data.items.tolist() == ["a", "b", "a"]
    assert data.ratings.tolist() == [5.0, 4.0, 3.0]


def test_a_quoted_id_may_hold_the_separator(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('user,item\nu1,"Heat, 1995"\nu2,b\n')
    assert read_interactions(path).items.tolist() == ["Heat, 1995", "b"]


@pytest.mark.parametrize("header", ["userId,movieId,rating,timestamp\r\n", ""])
def test_a_byte_order_mark_is_dropped(tmp_path, header):
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + header + "1,10,5,1\r\n1,11,4,2\r\n").encode("utf-8"))
    data = read_interactions(path)
    assert data.users.tolist() == ["1", "1"] and data.items.tolist() == ["10", "11"]


def test_an_unclosed_quote_is_refused(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('u1,"a,5,1\nu2,b,4,2\n')
    with pytest.raises(ValueError, match="not closed"):
        read_interactions(path)


@pytest.mark.parametrize("text, line", [
    ("user,item,rating,timestamp\n\nu1,a,5,1\n\n\nu1,b,5,2\nu2,a,3\n", 7),
    ("u1,a,5,1\n\n\nu1,b,x,2\n", 4),
    ("\nuser,item\n\nu1,\n", 4),
])
def test_errors_name_the_line_by_its_number_in_the_file(tmp_path, text, line):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"line {line}:"):
        read_interactions(path)
