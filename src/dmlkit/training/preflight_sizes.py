"""The size checks of the preflight (:func:`~dmlkit.training.preflight.check_trainable`):
a loss's embedding width against the model's, its number of classes (or proxies)
against the labels', and batches of one item for a model with batch norms."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.training.build import _DIM_KEYS

#: loss attributes that hold the embedding width (``l``: the manifold loss's name)
_DIM_ATTRS = ("embedding_size", "embedding_dim", "descriptors_dim", "l")
#: loss attributes that hold a number of classes, and what they count
_CLASS_ATTRS = {"num_classes": "classes", "K": "proxies, one per class"}


def _dim_attrs(module: Any) -> list[str]:
    """:data:`_DIM_ATTRS`, the parameters of ``module``'s constructor first (a message
    names the setting its config takes: ``descriptors_dim``, not a base's attribute)."""
    try:
        params = inspect.signature(type(module).__init__).parameters
    except (TypeError, ValueError):
        return list(_DIM_ATTRS)
    return sorted(_DIM_ATTRS, key=lambda key: key not in params)


def check_loss_sizes(loss: Any, names: dict[str, Any], dim: int, labels: Tensor) -> None:
    """Refuse a loss (or a loss it nests) whose embedding width is not the model's output
    width, or whose number of classes (or proxies) is below what the labels need."""
    from dmlkit.losses.base import BaseMetricLoss

    if not isinstance(loss, nn.Module):
        return
    top = names["loss"]
    for module in loss.modules():
        if not isinstance(module, BaseMetricLoss):
            continue
        which = (
            f"loss {top!r}"
            if module is loss
            else (
                f"the {getattr(type(module), 'registry_name', type(module).__name__)} loss in "
                f"loss {top!r}"
            )
        )
        for key in _dim_attrs(module):
            value = getattr(module, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value != dim:
                raise ValueError(
                    f"embedding size mismatch: {which} has {key}={value}, but model "
                    f"{names['model']!r} gives embeddings of dim {dim}; set {key} to {dim}"
                    + (
                        ", or leave it out of the loss config to take it from the model"
                        if key in _DIM_KEYS
                        else ""
                    )
                )
        if labels.dim() != 1 or labels.dtype == torch.bool or not len(labels):
            continue
        need = int(labels.max()) + 1
        for key, what in _CLASS_ATTRS.items():
            value = getattr(module, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value < need:
                classes = int(torch.unique(labels).numel())
                raise ValueError(
                    f"{which} has {key}={value} (the number of {what}), but the data has "
                    f"{classes} classes (labels up to {need - 1}); set {key} to at least "
                    f"{need}"
                    + (
                        ", or leave it out of the loss config to take it from the data"
                        if key == "num_classes"
                        else ""
                    )
                )


def check_batch_of_one(trainer: Any, given_sampler: bool = False) -> None:
    """Refuse a sampler whose batches hold one item when the model has batch norms that
    train: one item has no batch statistics, and the first batch would stop the run with
    torch's message. ``given_sampler``: the sampler was passed ready-made (no setting of
    the config sizes it).

    Only samplers of a fixed ``batch_size`` are checked. :class:`~dmlkit.training.batches.
    RandomBatchSampler` (no ``sampler`` section) drops a last incomplete batch, so its
    batches hold one item only at ``training.batch_size`` 1 or with one training item;
    a configured sampler's own ``batch_size`` replaces ``training.batch_size``."""
    from dmlkit.training.grad_cache import training_batch_norms

    sampler = trainer.sampler
    size = getattr(sampler, "batch_size", None)
    if hasattr(sampler, "batch_multiple") or not isinstance(size, int) or size != 1:
        return
    if getattr(trainer.config.data, "kind", "labels") != "labels":
        return  # (a batch of weak pairs / triplets holds 2 / 3 items per tuple)
    if not any(p.requires_grad for p in trainer.model.parameters()) and not any(
        p.requires_grad for p in trainer.loss.parameters()
    ):
        return  # (nothing trains: epochs only validate, in eval mode)
    norms = training_batch_norms(trainer.model)
    if not norms:
        return
    name = trainer.config.model.get("name") or type(trainer.model).__name__
    layers = f"{', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}"
    why = (
        f"but model {name!r} has batch norm layers ({layers}), which cannot normalize a "
        "single item in training mode"
    )
    requested = getattr(sampler, "requested_batch_size", size)
    if given_sampler:
        raise ValueError(
            f"the sampler makes batches of one item, {why}: give it a batch size of at least 2"
        )
    if trainer.config.sampler is not None:
        raise ValueError(
            f"sampler.batch_size 1 makes batches of one item, {why}: set sampler.batch_size "
            "to at least 2"
        )
    if requested != 1:  # (one training item: every batch is that item)
        raise ValueError(
            f"the training data holds a single item, so every batch holds one, {why}: "
            "train on at least 2 items"
        )
    raise ValueError(
        f"training.batch_size 1 makes batches of one item, {why}: set training.batch_size "
        "to at least 2"
    )


__all__ = ["check_batch_of_one", "check_loss_sizes"]
