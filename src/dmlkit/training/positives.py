"""A run whose training classes have a single item each: no batch holds a positive pair,
so a loss that learns from positives (pair, triplet and tuple losses) trains on nothing."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor

from dmlkit.models.modes import eval_mode
from dmlkit.training.batches import fetch_items
from dmlkit.training.rng import rng_scope

#: items of distinct classes put through the loss to see whether it learns from them
PROBE_ITEMS = 8


def warn_single_items(trainer: Any, labels: Any) -> None:
    """Warn (once: call it once per run) when no class of the training ``labels`` has two
    items and ``trainer``'s loss (after its miner) gets no gradient from a batch of items
    of distinct classes: a proxy or classification loss learns from single items, a pair
    or triplet loss would train at loss 0."""
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or not len(labels):
        return
    if labels.dtype == torch.bool or not getattr(trainer, "trainable", True):
        return
    counts = torch.unique(labels, dim=0, return_counts=True)[1]  # by class id or label row
    if int(counts.max()) >= 2 or _learns_from_single_items(trainer, len(labels)):
        return
    spec = trainer.config.loss
    loss = spec.get("name") if isinstance(spec, dict) else spec
    miner = trainer.config.miner
    miner = miner.get("name") if isinstance(miner, dict) else miner
    with_miner = f" with miner {miner!r}" if trainer.miner is not None and miner else ""
    warnings.warn(
        f"every one of the {len(counts)} training classes has a single item, so no batch "
        f"holds a positive pair, and loss {loss!r}{with_miner} learns nothing from such "
        "batches (it would train at loss 0): give each class at least 2 training items "
        "(more items, or a lower data.test_fraction), or use a loss whose class proxies "
        "learn from single items (normalized_softmax, proxy_anchor, arcface, ...)",
        UserWarning, stacklevel=2)


def _learns_from_single_items(trainer: Any, n: int) -> bool:
    """Whether a copy of the trainer's miner and loss give a non-zero gradient (to the
    embeddings or the loss's own parameters) on the model's embeddings of up to
    :data:`PROBE_ITEMS` training items (each its own class). Any error: assumed so (it
    surfaces in training, where it is reported)."""
    take = list(range(min(n, PROBE_ITEMS)))
    try:
        with rng_scope(trainer.config.training.seed):
            inputs, labels, tuples = trainer.unpack(
                fetch_items(trainer.train_data, take, trainer.collate_fn))
            if tuples is not None or labels is None:
                return True
            if isinstance(inputs, Tensor):
                inputs = inputs.to(trainer.device)
            with torch.no_grad(), eval_mode(trainer.model):
                embeddings = trainer.model(inputs).float()
            labels = labels.to(trainer.device)
            embeddings.requires_grad_(True)
            loss = copy.deepcopy(trainer.loss)
            indices = None
            if trainer.miner is not None:
                indices = copy.deepcopy(trainer.miner)(embeddings.detach(), labels)
            value = loss(embeddings, labels, indices=indices)
            if not isinstance(value, Tensor) or not value.requires_grad:
                return False  # a constant: nothing to learn
            params = [embeddings, *(p for p in loss.parameters() if p.requires_grad)]
            grads = torch.autograd.grad(value, params, allow_unused=True)
    except Exception:  # noqa: BLE001
        return True
    return any(g is not None and bool((g != 0).any()) for g in grads)


__all__ = ["warn_single_items"]
