"""The size checks of the preflight (:func:`~dmlkit.training.preflight.check_trainable`):
a loss's embedding width against the model's, its number of classes (or proxies)
against the labels'."""

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


__all__ = ["check_loss_sizes"]
