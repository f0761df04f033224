"""Tune tests' stand-in for cross-validation: every trial scored at once, no training."""

from __future__ import annotations

from typing import Any


def scored_at_once(monkeypatch: Any) -> list[Any]:
    """Replace ``cross_validate`` with one that scores a trial 0.5 at once (its per-epoch
    curve reported); returns the list of the configs it was given, one per trial."""
    from dmlkit.training import cross_validation
    from dmlkit.training.cross_validation import CrossValResult, FoldResult

    calls: list[Any] = []

    def fake(cfg: Any, k: Any, *, on_epoch: Any, **_: Any) -> Any:
        calls.append(cfg)
        on_epoch(1, 0.5)
        folds = [
            FoldResult([0, 1, 2], [3, 4, 5], 0.5, 0.5, 0.4, 1, [0.5]),
            FoldResult([3, 4, 5], [0, 1, 2], 0.5, 0.5, 0.4, 1, [0.5]),
        ]
        return CrossValResult(0.5, 0.5, 0.5, 0.4, "final", folds, [0.5], 0.1)

    monkeypatch.setattr(cross_validation, "cross_validate", fake)
    return calls
