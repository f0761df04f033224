"""The regularizers a training batch's loss gets on top of the configured loss."""

from __future__ import annotations

from torch import Tensor

from dmlkit.functional.anchor import similarity_drift
from dmlkit.functional.uniformity import uniformity


def regularization(embeddings: Tensor, reference: Tensor | None, anchor_weight: float,
                   uniformity_weight: float) -> Tensor | float:
    """The regularizers a batch's loss gets: ``anchor_weight x`` the similarity drift from
    ``reference`` (the starting model's embeddings of the same items; skipped when None)
    plus ``uniformity_weight x`` the batch's uniformity (skipped for a batch of one)."""
    total: Tensor | float = 0.0
    if reference is not None and anchor_weight > 0:
        total = total + anchor_weight * similarity_drift(embeddings, reference)
    if uniformity_weight > 0 and len(embeddings) > 1:  # (pairs)
        total = total + uniformity_weight * uniformity(embeddings)
    return total


__all__ = ["regularization"]
