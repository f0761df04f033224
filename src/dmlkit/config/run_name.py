"""A config's ``name``: the run's default output folder (``runs/<name>``), so one
plain, non-empty folder name."""

from __future__ import annotations

from typing import Any


def check_run_name(value: Any) -> str:
    """``value`` as a config's ``name``; a ``ValueError`` naming it when it is not text
    (a mapping, a list, a bool or a fractional number; a whole number, ``name: 2024``,
    is the text ``"2024"``) or not one folder name (empty, ``.``, ``..``, or holding
    ``/`` or ``\\``, which would nest or misplace the run folder)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # (YAML and --set read 2024 as a number)
    if not isinstance(value, str):
        raise ValueError(
            f"name must be text (the run's folder name), got {value!r} "
            f"({type(value).__name__}); write e.g. name: my_run")
    if not value.strip() or value.strip() in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(
            f"name {value!r} is not a folder name: the run folder is runs/<name>; use "
            "letters, digits, '-', '_' or '.', without '/' (to place the run elsewhere, "
            "pass --out)")
    return value


__all__ = ["check_run_name"]
