"""Tuples drawn from class labels: simulated weak supervision (the labels are then dropped).

:class:`LabelGroups` groups items by class for uniform same- / other-class draws;
:func:`triplets_from_labels` and :func:`pairs_from_labels` draw ``(T, 3)`` triplets and
``(T, 2)`` pairs with their similar flags.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class LabelGroups:
    """Items grouped by class label, for uniform draws of same- or other-class items.

    O(n log n) to build, O(1) per draw (no ``(T, n)`` mask).

    Parameters
    ----------
    labels : Tensor or array (n,) of int
    """

    def __init__(self, labels: Tensor | np.ndarray) -> None:
        y = torch.as_tensor(labels if isinstance(labels, Tensor) else np.asarray(labels))
        if y.dim() == 2 and not y.is_floating_point() and y.dtype != torch.bool:
            raise ValueError(
                f"labels are {tuple(y.shape)} hierarchical (n, L) labels, but drawing pairs / "
                "triplets needs one class label per item, (n,): pass one level's column "
                "(labels[:, k]), or the leaf classes (np.unique(labels, axis=0, "
                "return_inverse=True)[1])")
        if y.dim() != 1 or y.is_floating_point():
            raise ValueError(f"labels must be (n,) integers, got {y.dtype} {tuple(y.shape)}")
        self.order = torch.argsort(y, stable=True)  # items grouped by class
        _, self.inverse, self.counts = torch.unique(y, return_inverse=True, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # (C,) first sorted position
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(len(y), device=y.device)  # sorted position
        self.class_size = self.counts[self.inverse]  # (n,) size of each item's class

    @staticmethod
    def _uniform_below(high: Tensor, g: torch.Generator) -> Tensor:
        """One integer in ``[0, high)`` per entry of ``high``."""
        u = torch.rand(high.shape, generator=g).to(high.device)
        return (u * high).long().clamp_max(high - 1)

    def positives(self, anchors: Tensor, g: torch.Generator) -> Tensor:
        """A uniform same-class item other than the anchor, per anchor (class size >= 2)."""
        c = self.inverse[anchors]
        pos = self.starts[c] + self._uniform_below(self.counts[c] - 1, g)
        return self.order[pos + (pos >= self.rank[anchors]).long()]

    def negatives(self, anchors: Tensor, g: torch.Generator) -> Tensor:
        """A uniform item of another class, per anchor."""
        c = self.inverse[anchors]
        pos = self._uniform_below(len(self.order) - self.counts[c], g)
        return self.order[pos + (pos >= self.starts[c]).long() * self.counts[c]]


def triplets_from_labels(labels: Tensor | np.ndarray, num_triplets: int, seed: int = 0) -> Tensor:
    """``(T, 3)`` uniform random triplets ``(anchor, positive, negative)`` from class labels.

    Simulates weak supervision from a labelled dataset (the labels are then discarded).
    Anchors come from classes with at least two items. O(n log n + T) time and memory.
    """
    if num_triplets < 1:
        raise ValueError(f"num_triplets must be >= 1, got {num_triplets}")
    groups = LabelGroups(labels)
    eligible = torch.where(groups.class_size >= 2)[0]  # anchors that have a positive
    if eligible.numel() == 0 or groups.counts.numel() < 2:
        raise ValueError("triplets need a class with two items and at least two classes")
    g = torch.Generator().manual_seed(seed)
    anchors = eligible[torch.randint(len(eligible), (num_triplets,), generator=g)]  # (T,)
    positives = groups.positives(anchors, g)
    negatives = groups.negatives(anchors, g)
    return torch.stack([anchors, positives, negatives], dim=1)  # (T, 3)


def pairs_from_labels(
    labels: Tensor | np.ndarray, num_pairs: int, seed: int = 0, similar_fraction: float = 0.5
) -> tuple[Tensor, Tensor]:
    """``(T, 2)`` random pairs and their ``(T,)`` similar flags, drawn from class labels."""
    trip = triplets_from_labels(labels, num_pairs, seed)
    g = torch.Generator().manual_seed(seed + 1)
    similar = torch.rand(num_pairs, generator=g) < similar_fraction  # (T,)
    second = torch.where(similar, trip[:, 1], trip[:, 2])
    return torch.stack([trip[:, 0], second], dim=1), similar.long()


__all__ = ["LabelGroups", "pairs_from_labels", "triplets_from_labels"]
