"""Errors the commands share: one-line messages, and output paths refused before any work."""

from __future__ import annotations

from pathlib import Path


def one_line(err: BaseException) -> str:
    """The message of ``err``: a file system error names its path (``PATH: reason``), a
    ``KeyError`` gives its message without the quotes ``str`` would add."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def check_output_file(path: Path, what: str = "file", option: str = "--out") -> None:
    """Raise a ``ValueError`` when ``path`` (given as ``option``) cannot become a file:
    it is a directory, or a folder above it is a file."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a {what} name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory")
            return


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Raise a ``ValueError`` when ``path`` (given as ``option``) cannot become a
    directory (it, or a folder above it, is a file)."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory")
            return
