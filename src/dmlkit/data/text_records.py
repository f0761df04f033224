"""The records of text data files: UTF-8 (or UTF-16 with a byte-order mark) ``.csv`` /
``.tsv`` / ``.txt`` files with a header row, and ``.jsonl`` files of one JSON object a
line, each record with the line it ends on, so that the readers of :mod:`dmlkit.data.text`
name the row of a bad value."""

from __future__ import annotations

import codecs
import csv
import io
import json
import numbers
from collections.abc import Sequence
from pathlib import Path

#: byte-order marks of the UTF-16 / UTF-32 encodings a file may be written in, longest
#: first (the UTF-32 little-endian mark begins with UTF-16's)
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped), or of a UTF-16 /
    UTF-32 file that begins with its byte-order mark (as Windows editors save
    "Unicode" text).

    A file in another encoding raises ``ValueError`` naming the file, the line and the
    byte that is not UTF-8; one whose NUL bytes fall as UTF-16 or UTF-32 puts them (a
    file saved in one of those without its byte-order mark) names that encoding.
    """
    path = Path(path)
    raw = path.read_bytes()
    for bom, encoding in _WIDE_BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding).removeprefix("\ufeff")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path} begins with the byte-order mark of {encoding.upper()} but is "
                    f"not {encoding.upper()} text (offset {err.start}: {err.reason}); "
                    f"re-encode the file as UTF-8 (iconv -f {encoding} -t utf-8 "
                    f"{path.name} > utf8_{path.name})") from None
    wide = _wide_without_bom(raw) if b"\x00" in raw else None
    if wide is not None:
        raise ValueError(
            f"{path} looks like {wide} text without a byte-order mark (NUL bytes between "
            f"its characters), not UTF-8; re-encode the file as UTF-8 (iconv -f {wide} -t "
            f"UTF-8 {path.name} > utf8_{path.name})")
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start  # (offset in the file)
        line = raw[:at].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line} is not UTF-8 text (byte {raw[at]:#04x} at offset "
            f"{at}); re-encode the file as UTF-8 (from Latin-1, for example: "
            f"iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name})") from None


def _wide_without_bom(raw: bytes) -> str | None:
    """``"UTF-32LE"`` / ``"UTF-32BE"`` / ``"UTF-16LE"`` / ``"UTF-16BE"`` where the NUL bytes
    of ``raw`` fall as that encoding puts them in mostly-Latin text (the zero high bytes
    of each character), else None."""
    def nul_share(offset: int, step: int) -> float:
        part = raw[offset::step]
        return part.count(0) / len(part) if part else 0.0

    if len(raw) >= 4:
        for name, zeros, data in (("UTF-32LE", (2, 3), 0), ("UTF-32BE", (0, 1), 3)):
            if all(nul_share(i, 4) == 1.0 for i in zeros) and nul_share(data, 4) < 0.5:
                return name
    if len(raw) >= 2:
        for name, zeros, data in (("UTF-16LE", 1, 0), ("UTF-16BE", 0, 1)):
            if nul_share(zeros, 2) >= 0.5 and nul_share(data, 2) < 0.5:
                return name
    return None


def _numbered_records(path: Path) -> list[tuple[int, dict]]:
    """``(line, row)`` of each record of a ``.csv`` / ``.tsv`` / ``.txt`` or ``.jsonl``
    file: the line a CSV record ends on (its only line, unless a quoted field spans
    lines) or a JSONL record's line. Blank lines are skipped."""
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory, not a text data file: give a .csv, "
                                ".tsv, .jsonl or .txt file")
    if not path.is_file():
        raise FileNotFoundError(f"text data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt", ".jsonl"):
        raise ValueError(f"unknown text data format {suffix!r} for {path}: use .csv, .tsv, .jsonl")
    text = read_utf8(path)
    if suffix != ".jsonl":
        return _delimited_records(path, text, suffix == ".csv")
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # (not splitlines: JSON strings may
        if not line.strip():                       # hold U+2028 and other breaks)
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as err:
            raise ValueError(f"{path}:{n}: the object names the key {err.args[0]!r} twice; "
                             "keep one") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n} is not JSON: {err}") from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}:{n} is not a JSON object (it is a JSON {_JSON_TYPES[type(row)]}); "
                'each line must be one object, e.g. {"text": "...", "label": "..."}')
        _check_unicode_values(path, n, row)
        rows.append((n, row))
    return rows


def _check_unicode_values(path: Path, line: int, row: dict) -> None:
    """Refuse a JSONL record holding a string that cannot be written as UTF-8: a lone
    surrogate (``"\\ud800"``, an escape JSON allows), which no tokenizer takes."""
    for key, value in row.items():
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{path}:{line}: the value of {key!r} is not valid Unicode (a lone "
                f"surrogate, {value[err.start]!r}, at character {err.start}); remove the "
                "escape, or write the character it is half of whole (both halves of the "
                "surrogate pair)") from None


def _delimited_records(path: Path, text: str, comma: bool) -> list[tuple[int, dict]]:
    """``(line, row)`` of each record of a CSV (``comma``) or tab-separated file, refusing
    a row with more fields than the header. A row with fewer has ``None`` in the columns
    it lacks, which the readers refuse where they need a value (:func:`_require_values`,
    a score). Tab-separated files have no quoting (quotes are text, as in
    :func:`load_stsb`): a field cannot hold a tab or a newline."""
    if comma:  # (strict: a quote never closed is an error, not the rest of the file)
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t",
                                quoting=csv.QUOTE_NONE)
    try:
        _check_header(path, reader.fieldnames or [], reader.line_num)
    except csv.Error as err:
        raise _quoting_error(path, 1, err) from None
    records: list[tuple[int, dict]] = []
    rows = iter(reader)
    while True:
        done = records[-1][0] if records else reader.line_num  # the last line read whole
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as err:
            raise _quoting_error(path, done + 1, err) from None
        header = len(reader.fieldnames or ())
        extra = row.get(None)
        if extra is not None:
            fix = ('quote each field that holds a comma ("Hello, world")' if comma else
                   "separate the fields by one tab each; a text holding a tab needs a .csv "
                   "or .jsonl file")
            raise ValueError(f"{path}:{reader.line_num} has {header + len(extra)} fields but "
                             f"the header names {header}; {fix}")
        records.append((reader.line_num, row))
    return records


def _check_header(path: Path, names: Sequence[str], line: int) -> None:
    """Refuse a header row (ending on ``line``) naming a column twice: a reader would keep
    one of the two silently."""
    first: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name in first:
            raise ValueError(f"{path}:{line}: the header names the column {name!r} twice "
                             f"(fields {first[name]} and {i}); rename one")
        first[name] = i


def _quoting_error(path: Path, line: int, err: csv.Error) -> ValueError:
    return ValueError(f"{path}:{line}: a field is not quoted as CSV wants ({err}): a quote "
                      "opened there is never closed, or a quote inside a quoted field is "
                      'not doubled; write it as "" or quote the whole field')


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object from its ``(key, value)`` pairs, refusing a key given twice (which
    ``json.loads`` would keep the last of silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    """A JSON object naming a key twice (its ``args[0]``)."""


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_records(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``.csv`` / ``.tsv`` / ``.txt`` (header row) or ``.jsonl`` file as dicts.

    Files are UTF-8 (a byte-order mark is allowed); every JSONL line is one object.
    """
    return [row for _, row in _numbered_records(Path(path))]


def _column(rows: list[dict], names: Sequence[str], path: Path, what: str) -> str:
    """The first of ``names`` that a row has (JSONL rows may differ in keys: a row
    without the column is then refused by :func:`_require_values`, naming it)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for name in names:
        if name in keys:
            return name
    raise ValueError(f"{path} has no {what} column (one of {list(names)}); columns: {list(keys)}")


def _nonempty_records(path: Path) -> tuple[list[int], list[dict]]:
    """``(lines, rows)`` of :func:`_numbered_records`, refusing a file without rows."""
    numbered = _numbered_records(path)
    if not numbered:
        raise ValueError(f"{path} holds no rows (only a header, or nothing); add rows")
    lines, rows = zip(*numbered, strict=True)
    return list(lines), list(rows)


def _require_values(path: Path, lines: list[int], rows: list[dict],
                    columns: Sequence[tuple[str, str]]) -> None:
    """Refuse a row whose value in one of ``columns`` (``(column, what)``) is missing,
    null or blank, naming the file and the row's line."""
    for line, r in zip(lines, rows, strict=True):
        for col, what in columns:
            value = r.get(col)
            if value is None or not str(value).strip():
                raise ValueError(f"{path}, row {line}: no {what} ({col!r} is missing or "
                                 "empty); fill it in or drop the row")



def _json_texts(path: Path, lines: list[int], rows: list[dict], col: str,
                what: str) -> list[str]:
    """The values of the text column ``col``: strings as written (a CSV field always is
    one); a JSON number, array, object or boolean is refused, naming its row, rather
    than embedded as its Python spelling."""
    out = []
    for line, r in zip(lines, rows, strict=True):
        value = r[col]
        if not isinstance(value, str):
            raise ValueError(
                f"{path}, row {line}: the {what} ({col!r}) is a JSON "
                f"{_JSON_TYPES.get(type(value), type(value).__name__)} ({json.dumps(value)[:40]})"
                f", not a string; write it in quotes")
        out.append(value)
    return out


def _json_labels(path: Path, lines: list[int], rows: list[dict], col: str) -> list[str]:
    """The labels of the column ``col`` as text: strings as written, JSON integers (and
    integral numbers, ``1.0``) as their decimal spelling, so ``1`` and ``1.0`` are one
    class; a boolean, a fractional number, an array or an object is refused, naming its
    row."""
    out = []
    for line, r in zip(lines, rows, strict=True):
        value = r[col]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, str | numbers.Integral):
            raise ValueError(
                f"{path}, row {line}: the label ({col!r}) is a JSON "
                f"{_JSON_TYPES.get(type(value), type(value).__name__)} ({json.dumps(value)[:40]})"
                ", not a class name (a string) or a class id (an integer); write it as one")
        out.append(str(value).strip())
    return out

