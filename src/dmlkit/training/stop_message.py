"""The ``train.log`` line of a training run that stopped on an error: when it stopped,
why (one line), and how to continue it where a checkpoint was kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit.training.run_dir import resume_command


def stop_message(trainer: Any, err: BaseException, trained: int | None) -> str:
    """The line :meth:`~dmlkit.training.Trainer.fit` logs when ``err`` stopped it;
    ``trained``: the epoch trained and not yet through its end-of-epoch steps
    (validation, checkpoint, callbacks), else None (stopped inside an epoch)."""
    where = trainer.checkpoint_path if trainer.out_dir else None
    if where is not None and not Path(where).is_file():
        where = None  # stopped before the first checkpoint: nothing to resume
    kept = f" checkpoint of epoch {trainer.saved_epoch} kept at {where}" if where else ""
    # in train_epoch: "during" the next epoch; in _after_epoch (validation, its
    # checkpoint, the callbacks): "finishing" it, or "after" it once it was saved
    during = (f"during epoch {trainer.epoch + 1}" if trained is None else
              f"after epoch {trained}" if trainer.out_dir is not None
              and trainer.saved_epoch == trained else f"finishing epoch {trained}")
    from dmlkit.training.distributed import lost_peer, lost_peer_reason  # (imports trainer)

    lines = str(err).strip().splitlines()  # a log line is one line
    reason = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300
                               else "") if lines else ""
    if lost_peer(err):  # the engine's own text (a source path, a greeting): its gist
        reason = "lost the connection to another process of the job: " + lost_peer_reason(err)
    return (f"training stopped {during} ({type(err).__name__}: {reason}).{kept}"
            + (f"; continue with: {resume_command(trainer.out_dir)}" if where else ""))


__all__ = ["stop_message"]
