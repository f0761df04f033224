"""A saved run's splits with what rebuilding them warned of, kept as notes.

:func:`~dmlkit.runs.recorded_splits.run_splits` warns when the run's held-out (or
training) split, rebuilt from its ``config.yaml`` now, is not the data it was trained
and evaluated with. The report and the explanation put that warning in their own output
(the HTML page, ``explain.json``) as well, and warn of it again, so that a caller (and
the command line) still sees it once.
"""

from __future__ import annotations

import warnings
from typing import Any

from dmlkit.runs.recorded_splits import run_splits


def splits_with_notes(run: Any, split: str = "heldout") -> tuple[Any, Any, list[str]]:
    """``(train, heldout, notes)`` of a loaded run: its splits
    (:func:`~dmlkit.runs.recorded_splits.run_splits`, which checks ``split``) and the
    messages of the ``UserWarning`` s that building them gave (e.g. that the held-out
    split differs from the run's own), each warned of again, once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, heldout = run_splits(run, split)
    for w in caught:  # (said again to the caller's filters: once each)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return train, heldout, notes


#: what the report adds to a warning that its held-out split is not the run's own
REPORT_SPLIT_NOTE = ("; in this report, the map, gallery, verification, per-class results "
                     "and confusions are of the held-out split rebuilt now, while the "
                     "held-out metrics table is the run's own (metrics.json)")


__all__ = ["REPORT_SPLIT_NOTE", "splits_with_notes"]
