"""Checks a :class:`~dmlkit.training.Trainer` makes when it is built, before any epoch:
that its model, miner and loss can train on the data at all."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from dmlkit.models.modes import eval_mode
from dmlkit.training.batches import fetch_items
from dmlkit.training.rng import rng_scope


def check_trainable(trainer: Any, labels: Any, given: dict[str, Any] | None = None) -> None:
    """Refuse, when ``trainer`` is built, before any epoch starts (and before a run
    directory holds more than its config), a model, miner or loss that cannot train on
    this data (its ``labels``; ``given``: the parts passed ready-made): e.g. a classifier
    or proxy loss given a miner's tuples or ``(n, L)`` hierarchical labels, a text or
    audio model given images, a label-free miner given class labels. Otherwise the
    run would stop at its first batch.

    A small batch of the training items (up to 8 classes x 4) goes through the model
    in eval mode without gradients (no batch-norm statistic changes, every
    submodule's mode kept), then through copies of the miner and the loss as a
    training batch does (a memory bank or a queue is not filled); the random states
    are restored after (augmentation draws)."""
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or not len(labels):
        return  # (tuple data: weak supervision has no class labels to batch by)
    given = given or {}
    names = {part: (type(given[part]).__name__ if given.get(part) is not None  # ready-made
                    else spec.get("name") if isinstance(spec, dict) else spec)
             for part in ("model", "miner", "loss")
             for spec in [getattr(trainer.config, part, None)]}
    if trainer.miner is not None and not getattr(trainer.miner, "takes_labels", True):
        raise ValueError(
            f"miner {names['miner']!r} takes no labels: it reads the batch's layout (e.g. "
            "rows packed as triplets, for data.kind: triplets), while this data has class "
            "labels; use a miner that mines by label (batch_hard, multi_similarity, ...) "
            "or none")
    _, group = torch.unique(labels, dim=0, return_inverse=True)  # by class id or label row
    picks = [torch.nonzero(group == g).flatten()[:4]
             for g in range(min(int(group.max()) + 1, 8))]
    take = torch.cat(picks).tolist()
    kind = ("multi-labels (n, C)" if labels.dtype == torch.bool else
            "hierarchical labels (n, L)" if labels.dim() == 2 else "class labels")
    try:
        with rng_scope(trainer.config.training.seed):  # (draws of augmentation: undone)
            # (the plain fetch: a distributed trainer's own takes a process's share)
            batch = fetch_items(trainer.train_data, take, trainer.collate_fn)
        inputs, batch_labels, tuples = trainer.unpack(batch)
    except Exception:  # a data error surfaces in training, where it is reported
        return
    if tuples is not None or batch_labels is None:
        return
    if isinstance(inputs, Tensor):
        inputs = inputs.to(trainer.device)
    try:
        with torch.no_grad(), eval_mode(trainer.model):
            embeddings = trainer.model(inputs).float()
    except (ValueError, TypeError) as err:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"model {names['model']!r} cannot take this data's inputs "
                         f"({shape}): {err}") from err
    except Exception:  # the model's own error surfaces in training, as before
        return
    batch_labels = batch_labels.to(trainer.device)
    indices = None  # as a training batch: the miner's tuples go to the loss
    for part, module in (("miner", trainer.miner), ("loss", trainer.loss)):
        if module is None:
            continue
        try:
            with torch.no_grad():
                if part == "miner":
                    indices = copy.deepcopy(module)(embeddings, batch_labels)
                else:
                    copy.deepcopy(module)(embeddings, batch_labels, indices=indices)
        except (ValueError, TypeError) as err:
            if part == "loss" and indices is not None and "indices" in str(err):
                hint = ("it takes no mined tuples: remove the miner (miner: null, or "
                        "--set miner=null)")
            elif labels.dim() == 2:
                hint = ("pair and tuple losses (e.g. multi_similarity, hierarchical_triplet) "
                        "take them; classifier and proxy losses need one class per item")
            else:
                hint = "see its documentation for the data it needs"
            raise ValueError(f"{part} {names[part]!r} cannot train on this data's {kind}: "
                             f"{err}; {hint}") from err


__all__ = ["check_trainable"]
