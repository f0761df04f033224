"""What a resumed run carries over from its earlier sessions, and what it retires.

A resume that trains new epochs of a finished run makes the run's ``model.pt`` and
``metrics.json`` (the final state of its earlier epochs), and the ``evaluation.json`` and
``report.html`` made from them, out of date as soon as the first new epoch is
checkpointed. They are removed before training starts
(:func:`retire_finished_outputs`), so that a run stopped part-way holds one state: its
checkpoint, which the loaders use for a run without ``model.pt`` (as for a first run
stopped part-way). Nothing is lost: until the first new epoch the checkpoint holds the
same weights, and from then on later ones.

``train_seconds`` is the run's total training time: the epochs of earlier sessions (the
``seconds`` of the checkpoint's history records) plus this session's time
(:func:`earlier_seconds`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: the files of a finished run that a resume training new epochs makes out of date: its
#: final weights and metrics, and what ``dmlkit evaluate`` / ``dmlkit report`` made of them
FINISHED_OUTPUTS = ("metrics.json", "model.pt", "evaluation.json", "report.html")


def trains_new_epochs(checkpoint: dict[str, Any] | None, epochs: int) -> bool:
    """Whether resuming from ``checkpoint`` trains an epoch: it is below ``epochs`` and
    did not stop early."""
    if checkpoint is None:
        return False
    return int(checkpoint.get("epoch", 0)) < epochs and not checkpoint.get("stopped", False)


def retire_finished_outputs(out_dir: Path, checkpoint: dict[str, Any] | None, epochs: int) -> None:
    """Remove ``out_dir``'s :data:`FINISHED_OUTPUTS` when resuming from
    ``checkpoint`` trains new epochs (:func:`trains_new_epochs`); keep them otherwise.

    Each removal is atomic; at every point the files left agree with the checkpoint
    (no new epoch has trained yet)."""
    if not trains_new_epochs(checkpoint, epochs):
        return
    for name in FINISHED_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)


def earlier_seconds(checkpoint: dict[str, Any] | None) -> float:
    """The training time of the epochs a resumed run trained before this session: the sum
    of its checkpoint's history ``seconds`` (0 for a new run; a record without a number
    there, from an older checkpoint, counts 0)."""
    if checkpoint is None:
        return 0.0
    total = 0.0
    for record in checkpoint.get("history") or []:
        value = record.get("seconds") if isinstance(record, dict) else None
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            total += float(value)
    return total


__all__ = ["FINISHED_OUTPUTS", "earlier_seconds", "retire_finished_outputs", "trains_new_epochs"]
