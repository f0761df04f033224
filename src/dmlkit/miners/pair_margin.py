"""Pair-margin miner: the positive and negative pairs that violate their margins."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.tuples import Pairs
from dmlkit.miners.base import BaseMiner, cat_tuples
from dmlkit.registry import register_miner


@register_miner("pair_margin")
class PairMarginMiner(BaseMiner):
    """Positive pairs farther than ``pos_margin`` and negative pairs closer than ``neg_margin``.

    For a distance: positives with ``d > pos_margin``, negatives with ``d < neg_margin``;
    for a similarity: positives with ``s < pos_margin``, negatives with ``s > neg_margin``.
    These are exactly the pairs with a non-zero contrastive loss (Hadsell et al. 2006).
    Same pairs, in the same (row-major) order, as pytorch-metric-learning's
    ``PairMarginMiner``. Runs in row chunks (O(chunk * m) memory).

    Parameters
    ----------
    pos_margin, neg_margin : float
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    output_kind = "pairs"
    shares_matrix = True  # its matrix is only compared, never modified

    def __init__(
        self,
        pos_margin: float = 0.2,
        neg_margin: float = 0.8,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Pairs:
        x = self.distance.maybe_normalize(embeddings)
        ref = self.distance.maybe_normalize(ref_embeddings)
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for a, d, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set):
            if self.distance.is_similarity:
                pos &= d < self.pos_margin
                neg &= d > self.neg_margin
            else:
                pos &= d > self.pos_margin
                neg &= d < self.neg_margin
            a1, p = torch.where(pos)
            a2, nn = torch.where(neg)
            parts.append((a1 + a, p, a2 + a, nn))
        return cat_tuples(parts, Pairs, x.device)


__all__ = ["PairMarginMiner"]
