"""The shape of a run's ``metrics.json`` as the report and its figures read it.

``metrics.json`` is written by training; a file edited or written by something else may
be valid JSON of another shape. :func:`check_metrics` refuses such a file in one line
naming it, before any work, instead of failing deep inside the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the held-out retrieval metrics the report's table shows (each a number, or null)
TABLE_KEYS = ("precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_2",
              "recall_at_4", "recall_at_8")
#: the columns beside the learned metrics: objects holding the same metrics
BASELINE_KEYS = ("baseline", "baseline_unnormalized")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: JSON's name for each type a parsed JSON value has
_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
          int: "a number", float: "a number"}


def _shown(value: Any) -> str:
    """``value`` as JSON (cut short), after its kind: ``an array [1, 2]``."""
    text = json.dumps(value, default=str)
    text = text if len(text) <= 40 else text[:37] + "..."
    return "null" if value is None else f"{_KINDS.get(type(value), type(value).__name__)} {text}"


def _check_table(metrics: dict[str, Any], where: str) -> str | None:
    """What is wrong with the table metrics of ``metrics`` (``where`` names it)."""
    for key in TABLE_KEYS:
        if key in metrics and metrics[key] is not None and not _number(metrics[key]):
            return f"{where}{key} is {_shown(metrics[key])}, not a number"
    return None


def _check_history(history: Any) -> str | None:
    """What is wrong with a ``history`` list of per-epoch records."""
    if not isinstance(history, list):
        return f"its history is {_shown(history)}, not an array of per-epoch records"
    for i, record in enumerate(history, 1):
        if not isinstance(record, dict):
            return f"its history's record {i} is {_shown(record)}, not an object"
        if "epoch" not in record:
            return f"its history's record {i} has no epoch"
        for key, value in record.items():
            if (key in ("epoch", "lr") or key.startswith("val_")) and not _number(value):
                return f"its history's record {i}: {key} is {_shown(value)}, not a number"
    return None


def metrics_problem(metrics: Any) -> str | None:
    """What is wrong with the shape of a parsed ``metrics.json`` (``None`` when nothing).

    The file is a JSON object; its table metrics (:data:`TABLE_KEYS`) are numbers (or
    null), as are those of its :data:`BASELINE_KEYS` objects; its ``history``, when
    present, is a list of objects, each with a numeric ``epoch`` (and numeric ``lr`` and
    ``val_*`` values where it has them).
    """
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        return f"it holds {_shown(metrics)}, not an object of metrics"
    problem = _check_table(metrics, "")
    for name in BASELINE_KEYS:
        if problem is None and name in metrics:
            if not isinstance(metrics[name], dict):
                problem = f"{name} is {_shown(metrics[name])}, not an object of metrics"
            else:
                problem = _check_table(metrics[name], f"{name}.")
    if problem is None and "history" in metrics and metrics["history"] is not None:
        problem = _check_history(metrics["history"])
    return problem


def check_metrics(metrics: Any, path: str | Path, fix: str) -> dict[str, Any]:
    """``metrics`` (a parsed ``metrics.json`` at ``path``; ``{}`` for ``None``), or a
    ``ValueError`` naming the file, what is wrong with it (:func:`metrics_problem`) and
    ``fix``."""
    problem = metrics_problem(metrics)
    if problem is not None:
        raise ValueError(f"{path} is not a dmlkit metrics file: {problem}; {fix}")
    return metrics or {}


__all__ = ["BASELINE_KEYS", "TABLE_KEYS", "check_metrics", "metrics_problem"]
