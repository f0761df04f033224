"""Relations between hierarchical labels ``(n, L)``, coarsest level first.

Two items *share depth* ``s`` when their labels agree on levels ``0..s-1`` and differ at
level ``s`` (``s = L``: same leaf class). Losses, samplers and metrics that treat the
hierarchy as graded relevance use this one quantity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_hierarchical(labels: Tensor, name: str = "labels") -> Tensor:
    """``(n,)`` class labels as a one-level hierarchy ``(n, 1)``; ``(n, L)`` unchanged.

    Raises TypeError for bool (multi-label) tensors, which have no hierarchy.
    """
    if labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class ids per level, got dtype {labels.dtype}")
    if labels.dim() == 1:
        return labels[:, None]
    if labels.dim() != 2:
        raise ValueError(f"{name} must have shape (n,) or (n, L), got {tuple(labels.shape)}")
    return labels


def shared_depth(labels_a: Tensor, labels_b: Tensor | None = None) -> Tensor:
    """All-pairs shared depth, ``(n, L), (m, L) -> (n, m)`` int64 in ``[0, L]``."""
    labels_b = labels_a if labels_b is None else labels_b
    if labels_a.dim() != 2 or labels_b.dim() != 2 or labels_a.shape[1] != labels_b.shape[1]:
        raise ValueError(
            f"need hierarchical labels (n, L) and (m, L), got {tuple(labels_a.shape)} "
            f"and {tuple(labels_b.shape)}"
        )
    eq = labels_a[:, None, :] == labels_b[None, :, :]  # (n, m, L)
    return eq.long().cumprod(dim=2).sum(dim=2)  # (n, m)


def shared_depth_rowwise(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Row-wise shared depth, ``(n, L), (n, L) -> (n,)`` int64 in ``[0, L]``."""
    if labels_a.shape != labels_b.shape or labels_a.dim() != 2:
        raise ValueError(
            "need two (n, L) label tensors, got "
            f"{tuple(labels_a.shape)} and {tuple(labels_b.shape)}"
        )
    return (labels_a == labels_b).long().cumprod(dim=1).sum(dim=1)  # (n,)


__all__ = ["as_hierarchical", "shared_depth", "shared_depth_rowwise"]
