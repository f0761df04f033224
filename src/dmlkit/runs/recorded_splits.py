"""A saved run's own splits, rebuilt from its ``config.yaml`` and checked against the
checksums of the data its checkpoint recorded
(:mod:`~dmlkit.training.data_fingerprint`): a data section edited since training (another
``seed`` or ``max_heldout_per_class``), or a data file changed, rebuilds other items under
the same names, which a command reading ``heldout`` or ``train`` then says.
"""

from __future__ import annotations

import warnings
from typing import Any

from dmlkit.data.dataset import ArrayDataset
from dmlkit.training.data_fingerprint import (
    data_changes,
    data_fingerprint,
    parts_differ,
    saved_fingerprint,
)
from dmlkit.training.run import Run, build_splits

#: the fingerprint parts of each split, as training names them
SPLIT_PARTS = {
    "heldout": ("the held-out split",),
    "train": ("the training items", "the training labels"),
}


def split_parts(split: str, train: ArrayDataset, heldout: ArrayDataset) -> dict[str, Any]:
    """The arrays of ``split`` (``"heldout"`` or ``"train"``) as training fingerprints
    them (:func:`~dmlkit.training.run.train_run`)."""
    if split == "heldout":
        return {"the held-out split": [heldout.x, heldout.labels]}
    return {"the training items": train.x, "the training labels": train.labels}


def warn_if_not_recorded(
    run: Run, split: str, train: ArrayDataset, heldout: ArrayDataset
) -> list[str]:
    """Warn (``UserWarning``, once) when ``split`` of ``run`` as rebuilt now differs from
    the one its checkpoint recorded; returns the parts that differ. Hashes only where the
    run recorded a fingerprint of the split; says nothing for a run without one."""
    if split not in SPLIT_PARTS:
        raise ValueError(f"split must be one of {sorted(SPLIT_PARTS)}, got {split!r}")
    return warn_if_parts_changed(run.run_dir, split_parts(split, train, heldout), split)


def warn_if_parts_changed(run_dir: Any, parts: dict[str, Any], split: str) -> list[str]:
    """:func:`warn_if_not_recorded` for the named ``parts`` of a split (as training
    fingerprints them, image or text runs alike), against the checkpoint in ``run_dir``."""
    saved = saved_fingerprint(run_dir)
    if saved is None or not any(part in saved for part in parts):
        return []
    current = data_fingerprint(parts)
    changed = data_changes({k: v for k, v in saved.items() if k in current}, current)
    if changed:
        warnings.warn(
            f"{run_dir}: {parts_differ(changed)} from "
            "what the run was trained and evaluated with (its config.yaml's data section "
            "was edited, or the data file changed since), so results on its "
            f"{'held-out' if split == 'heldout' else 'training'} split are not the run's; "
            "restore the data section (and data) it was trained with to reproduce them",
            UserWarning,
            stacklevel=4,
        )
    return changed


def run_splits(run: Run, split: str = "heldout") -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, heldout)`` of a saved run (:func:`~dmlkit.training.run.build_splits`),
    warning when ``split`` (``"heldout"`` or ``"train"``, the one to be used) is not the
    data the run recorded (:func:`warn_if_not_recorded`)."""
    if split not in SPLIT_PARTS:
        raise ValueError(f"split must be one of {sorted(SPLIT_PARTS)}, got {split!r}")
    train, heldout = build_splits(run.config)
    warn_if_not_recorded(run, split, train, heldout)
    return train, heldout


__all__ = [
    "SPLIT_PARTS",
    "run_splits",
    "split_parts",
    "warn_if_not_recorded",
    "warn_if_parts_changed",
]
