"""The storage URL of a study, in the one form every worker records and compares.

A SQLite file is named by its absolute path (``sqlite:///runs/x/study.db`` read in
``/home/me`` is ``sqlite:////home/me/runs/x/study.db``), so workers started from other
directories, and ``best.json`` / ``best.yaml`` read from anywhere, name the same file;
an in-memory SQLite database, which no other worker sees and which is gone when its
worker ends, is refused. Other SQLAlchemy URLs are kept as given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

_URL = re.compile(r"[\w+]+://")


def _sqlite(url: str) -> tuple[str, str | None, str] | None:
    """``(driver, database, query)`` of a SQLite URL as SQLAlchemy reads it
    (``database`` None or empty: in memory); ``None`` for another database."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.partition("+")[0].lower() != "sqlite":
        return None
    path, _, query = rest.partition("?")
    if not path:  # sqlite://
        return scheme, None, query
    return scheme, unquote(path[1:]) if path.startswith("/") else None, query


def in_memory(url: str) -> bool:
    """Whether ``url`` is an in-memory SQLite database (``sqlite://``, ``sqlite:///``,
    ``sqlite:///:memory:``, a ``mode=memory`` URI)."""
    parts = _sqlite(url)
    if parts is None:
        return False
    _, database, query = parts
    return (not database or database == ":memory:" or database.startswith("file::memory:")
            or "mode=memory" in query)


def check_storage(url: str) -> None:
    """Refuse a storage that cannot hold a study beyond this process.

    Raises
    ------
    ValueError
        For an in-memory SQLite database, or a text that is no URL (a bare file path),
        saying what to give instead.
    """
    if not _URL.match(url):  # (SQLAlchemy's own rule: a URL starts with name://)
        shown = url.split("@")[-1]  # (no part that may be a password)
        raise ValueError(
            f"cannot open the study storage {shown}: it is not a SQLAlchemy URL "
            f"(dialect://...); write sqlite:///{shown} (a SQLite file) or another "
            "SQLAlchemy URL, e.g. postgresql://user@host/db")
    if in_memory(url):
        raise ValueError(
            f"the study storage {url} is an in-memory SQLite database: the study would be "
            "lost when this worker ends (no other worker, nor --resume, could find it); give "
            "a file, e.g. --storage sqlite:///runs/study.db, or leave --storage out for "
            "study.db in --out")


def absolute_storage(url: str, base: Path | None = None) -> str:
    """``url`` with a SQLite file's path made absolute (relative to ``base``, default the
    working directory) and resolved; in-memory SQLite, SQLite URIs (``file:...``) and
    other databases' URLs unchanged."""
    parts = _sqlite(url)
    if parts is None or in_memory(url):
        return url
    scheme, database, query = parts
    if database is None or database.startswith("file:"):
        return url
    path = Path(database)
    path = (path if path.is_absolute() else (base or Path.cwd()) / path).resolve()
    text = str(path).replace("%", "%25").replace("?", "%3F")  # (SQLAlchemy unquotes)
    return f"{scheme}:///{text}" + (f"?{query}" if query else "")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite storage URL on this machine (absolute), or ``None`` for
    another database, an in-memory one or a SQLite URI (``sqlite:///file:...``)."""
    if _sqlite(url) is None or in_memory(url):
        return None
    _, _, rest = absolute_storage(url).partition(":///")  # sqlite:////abs/path: a file
    database = unquote(rest.partition("?")[0])
    return Path(database) if database.startswith("/") else None


def same_storage(a: Any, b: Any) -> bool:
    """Whether two storage URLs name the same study storage (SQLite files compared by
    their absolute paths)."""
    return isinstance(a, str) and isinstance(b, str) and (
        absolute_storage(a) == absolute_storage(b))


__all__ = ["absolute_storage", "check_storage", "in_memory", "same_storage", "sqlite_file"]
