"""Assertions on the command line's refusals, shared by the CLI tests (typer's
``CliRunner`` results)."""

from __future__ import annotations

from typing import Any


def error_line(res: Any, *words: str) -> str:
    """The one ``error: `` line a refused command printed on stderr (warnings may stand
    beside it), with no traceback; it holds each of ``words``."""
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def only_error_line(res: Any, *words: str) -> str:
    """:func:`error_line` of a command that exited with status 1 and printed nothing else
    on stderr."""
    assert res.exit_code == 1, res.output
    line = error_line(res, *words)
    assert [s for s in res.stderr.splitlines() if s.strip()] == [line], res.stderr
    return line
