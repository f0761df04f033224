"""What a saved run's weights and held-out metrics are, read back from its files.

A run without ``model.pt`` (it did not finish, or the file was removed) is used with its
checkpoint's weights: those ``model.pt`` would have held (:func:`checkpoint_state`), which
for a run trained with validation are its best epoch's (``best_state``), not its last.
:func:`checkpoint_weights` says which they are. ``metrics.json`` is read by
:func:`read_metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def checkpoint_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model weights a checkpoint stands in with for ``model.pt``: its kept best
    epoch's (``best_state``, training with validation), else its last epoch's."""
    best = checkpoint.get("best_state")
    if isinstance(best, dict) and isinstance(best.get("model"), dict):
        return best["model"]
    return checkpoint["model"]


def checkpoint_weights(checkpoint: dict[str, Any], config: Any) -> str:
    """What a run's weights are when its checkpoint's (:func:`checkpoint_state`) stand in
    for a missing model.pt, in words."""
    epoch, epochs = int(checkpoint.get("epoch", 0)), config.training.epochs
    unfinished = epoch < epochs and not checkpoint.get("stopped", False)
    what = (f"checkpoint of epoch {epoch} of {epochs} (unfinished run)" if unfinished
            else f"checkpoint of epoch {epoch}, its last")
    if checkpoint_state(checkpoint) is checkpoint["model"]:
        return what
    best = checkpoint.get("best_epoch")
    epoch_of = f"epoch {best}" if isinstance(best, int) and best > 0 else "its best epoch"
    return (f"{what}, with the weights of {epoch_of}, the best by validation MAP@R"
            + (" so far" if unfinished else ", which model.pt holds"))


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A run's metrics.json (``None`` when it has none);
    an empty or cut file (a kill while an older dmlkit wrote it) is a ``ValueError``
    naming it and the way back."""
    from dmlkit.training.run_dir import resume_command

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        what = "is empty" if not path.stat().st_size else f"is not valid JSON ({err})"
        raise ValueError(
            f"{path} {what}: the run's weights are intact, only its held-out metrics are "
            f"lost; rewrite them with: {resume_command(path.parent)} (or delete the "
            "file)") from None


__all__ = ["checkpoint_state", "checkpoint_weights", "read_metrics"]
