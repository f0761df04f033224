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
    names = _names(trainer, given or {}, ("model", "miner", "loss"))
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


def _names(trainer: Any, given: dict[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
    """Each part's name: its class for a part passed ready-made, else its config's name."""
    return {part: (type(given[part]).__name__ if given.get(part) is not None
                   else spec.get("name") if isinstance(spec, dict) else spec)
            for part in parts for spec in [getattr(trainer.config, part, None)]}


def check_batch_negatives(trainer: Any, labels: Any, given: dict[str, Any] | None = None
                          ) -> None:
    """Refuse, before any epoch, a sampler whose every batch holds one class
    (``classes_per_batch == 1``, which the sampler warned about) with a loss that can
    only learn from negatives within a batch: pair, triplet and tuple losses then see
    no negative pair in any batch, and train nothing (or only pull items together).

    A loss learns from one-class batches when something other than the batch supplies
    the negatives: its own class weights or proxies (normalized_softmax, proxy_anchor,
    arcface, center, ...: their parameters get a gradient from a one-class batch) or a
    memory of earlier batches (cross_batch_memory). That is what is checked, on one
    class's items through the model (eval mode, no gradient), a copy of the miner and
    a copy of the loss, as in :func:`check_trainable`."""
    from dmlkit.losses.cross_batch_memory import CrossBatchMemory

    if getattr(trainer.sampler, "classes_per_batch", None) != 1:
        return
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or not len(labels):
        return
    if any(isinstance(m, CrossBatchMemory) for m in trainer.loss.modules()):
        return  # its memory holds the classes of earlier batches
    learns = False
    if any(p.requires_grad for p in trainer.loss.parameters()):
        _, group = torch.unique(labels, dim=0, return_inverse=True)  # (n,)
        take = torch.nonzero(group.reshape(-1) == 0).flatten()[:4].tolist()  # one class
        try:
            with rng_scope(trainer.config.training.seed):
                inputs, batch_labels, _ = trainer.unpack(
                    fetch_items(trainer.train_data, take, trainer.collate_fn))
            if isinstance(inputs, Tensor):
                inputs = inputs.to(trainer.device)
            with torch.no_grad(), eval_mode(trainer.model):
                embeddings = trainer.model(inputs).float()
            batch_labels = batch_labels.to(trainer.device)
            loss = copy.deepcopy(trainer.loss)
            indices = None
            if trainer.miner is not None:
                indices = copy.deepcopy(trainer.miner)(embeddings, batch_labels)
            embeddings.requires_grad_(True)
            params = [p for p in loss.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss(embeddings, batch_labels, indices=indices),
                                        params, allow_unused=True)
        except Exception:  # (an error of the data, model or loss surfaces in training)
            return
        learns = any(g is not None and bool((g != 0).any()) for g in grads)
    if not learns:
        names = _names(trainer, given or {}, ("sampler", "loss"))
        raise ValueError(
            f"sampler {names['sampler'] or type(trainer.sampler).__name__!r} puts one class "
            f"in every batch, so loss {names['loss'] or type(trainer.loss).__name__!r} has "
            "no negative pair in any batch and would train nothing (or only pull items "
            "together): put at least two classes in a batch (m_per_class: batch_size >= "
            "2 * m; hierarchical: classes_per_super >= 2 or batch_size >= 2 * m * "
            "classes_per_super), or use a loss whose class weights or proxies supply the "
            "negatives (normalized_softmax, proxy_anchor, arcface, ...)")


__all__ = ["check_trainable", "check_batch_negatives"]
