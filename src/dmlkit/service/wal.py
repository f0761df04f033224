"""The line format of the service's write-ahead log, and reading it back.

One record per line: ``CRC32 JSON`` (the checksum of the JSON body, 8 hex digits), ended
by a newline. Records are appended one at a time, each flushed and fsynced before its
write is acknowledged, so a crash can only tear the *last* line: one that is unterminated
or fails its checksum there was never acknowledged and is dropped. A bad line with any
line after it is not a torn append but damage to the log, and the records after it were
acknowledged: reading stops with :class:`CorruptLogError` instead of dropping them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CorruptLogError(RuntimeError):
    """A write-ahead log record, not the last line, fails its checksum."""


def encode(record: dict[str, Any]) -> bytes:
    """One log line for ``record``: its checksum, its JSON body and a newline."""
    body = json.dumps(record, separators=(",", ":"), allow_nan=False)  # always valid JSON
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


def decode(line: bytes) -> dict[str, Any] | None:
    """The record of one log line, or None when the line is unterminated or damaged."""
    try:
        text = line.decode()
        crc, body = text.rstrip("\n").split(" ", 1)
        if not text.endswith("\n") or int(crc, 16) != zlib.crc32(body.encode()):
            return None
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None


def _corrupt(path: Path, number: int) -> CorruptLogError:
    return CorruptLogError(
        f"the write-ahead log {path} is damaged at line {number}: that record fails its "
        "checksum and is not the last line (only a last line cut by a crash is dropped), "
        "so the writes logged after it would be lost; the log is left as it is: restore "
        "it from a backup, or move it away to start from the last checkpoint without its "
        "writes"
    )


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """``(line number, record, line length in bytes)`` of each intact record of the log
    at ``path``, in order; a torn last line is left out. Raises :class:`CorruptLogError`
    (naming the log and the line) at a bad line that has a line after it, having yielded
    the records before it."""
    bad: int | None = None  # the line number of a bad line, torn if it is the last
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if bad is not None:
                raise _corrupt(path, bad)
            record = decode(line)
            if record is None:
                bad = number
                continue
            yield number, record, len(line)


__all__ = ["CorruptLogError", "decode", "encode", "read_records"]
