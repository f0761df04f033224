"""The "did you mean ...?" ending of an error about a misspelled name: a config key, a
registered class's name, one of a fixed set of choices.

Names are compared ignoring case, and ``-`` / spaces as ``_``, so ``Triplet-Margin``
finds ``triplet_margin``; :func:`difflib.get_close_matches` decides what is close.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def _folded(name: Any) -> str:
    return str(name).lower().replace("-", "_").replace(" ", "_")


def closest(name: Any, candidates: Iterable[Any]) -> str | None:
    """The candidate closest to ``name`` (as a string), or None when none is close."""
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(_folded(candidate), str(candidate))
    folded = _folded(name)
    if folded in by_folded and by_folded[folded] != str(name):
        return by_folded[folded]  # the same name but for case and dashes
    matches = difflib.get_close_matches(folded, list(by_folded), n=1, cutoff=0.6)
    if not matches or by_folded[matches[0]] == str(name):
        return None
    return by_folded[matches[0]]


def did_you_mean(names: Any | Iterable[Any], candidates: Iterable[Any]) -> str:
    """``"; did you mean 'epochs'?"`` for the unknown ``names`` (one name, or several),
    to append to an error message; ``""`` when no candidate is close.

    With several names each suggestion says which name it is for
    (``"; did you mean 'batch_size' for 'batch_sise', 'epochs' for 'epoch'?"``).
    """
    several = isinstance(names, (list, tuple, set, frozenset))
    wanted = sorted(names, key=str) if several else [names]
    options = [str(c) for c in candidates]
    found = [(name, closest(name, options)) for name in wanted]
    found = [(name, match) for name, match in found if match is not None]
    if not found:
        return ""
    if len(wanted) == 1:
        return f"; did you mean {found[0][1]!r}?"
    return (
        "; did you mean " + ", ".join(f"{match!r} for {str(name)!r}" for name, match in found) + "?"
    )


__all__ = ["closest", "did_you_mean"]
