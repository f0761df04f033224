"""Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for, maybe_checkpoint, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple, Pairs, triplets_to_pairs
from dmlkit.losses.base import BaseMetricLoss, mean_nonzero
from dmlkit.registry import register_loss


@register_loss("contrastive")
class ContrastiveLoss(BaseMetricLoss):
    """Pull positive pairs within ``pos_margin``, push negatives beyond ``neg_margin``.

    For a distance ``d``: positive pairs cost ``relu(d - pos_margin)``, negative pairs
    ``relu(neg_margin - d)``. For a similarity the inequalities flip. Each part is averaged
    over its pairs with non-zero loss, and the two parts are added
    (pytorch-metric-learning's ``ContrastiveLoss`` with its default reducer).

    Without ``indices`` every pair of the batch is used, computed in row chunks with
    recomputation in backward, so memory stays O(chunk * n) rather than O(n^2).

    Parameters
    ----------
    pos_margin, neg_margin : float
        Margins for positive and negative pairs.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def _pos_cost(self, d: Tensor) -> Tensor:
        sign = -1.0 if self.distance.is_similarity else 1.0
        return torch.relu(sign * (d - self.pos_margin))

    def _neg_cost(self, d: Tensor) -> Tensor:
        sign = -1.0 if self.distance.is_similarity else 1.0
        return torch.relu(sign * (self.neg_margin - d))

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is None:
            return self._all_pairs(embeddings, labels, ref_embeddings, ref_labels)
        pairs = indices if isinstance(indices, Pairs) else triplets_to_pairs(indices[:3])
        ref = embeddings if ref_embeddings is None else ref_embeddings
        d_pos = self.distance.pairwise(embeddings[pairs.a1], ref[pairs.p])  # (P,)
        d_neg = self.distance.pairwise(embeddings[pairs.a2], ref[pairs.n])  # (N,)
        return mean_nonzero(self._pos_cost(d_pos), embeddings) + mean_nonzero(
            self._neg_cost(d_neg), embeddings
        )

    def _all_pairs(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        full_ref_labels = labels if ref_labels is None else ref_labels
        exclude_self = ref_embeddings is None
        n, m = x.shape[0], ref.shape[0]

        def chunk_terms(xc: Tensor, ref_: Tensor, lc: Tensor, start: int) -> tuple[Tensor, Tensor]:
            d = self.distance.compute_matrix(xc, ref_)  # (c, m)
            pos, neg = pos_neg_masks(
                lc, full_ref_labels, exclude_self=exclude_self, row_offset=start
            )
            pos_cost = self._pos_cost(d) * pos  # (c, m)
            neg_cost = self._neg_cost(d) * neg  # (c, m)
            sums = torch.stack([pos_cost.sum(), neg_cost.sum()])  # (2,)
            counts = torch.stack([(pos_cost > 0).sum(), (neg_cost > 0).sum()])  # (2,)
            return sums, counts

        sums = x.new_zeros(2)
        counts = torch.zeros(2, dtype=torch.long, device=x.device)
        chunk = chunk_size_for(n, m * 4)
        for a, b in row_chunks(n, chunk):
            s, c = maybe_checkpoint(chunk_terms, x[a:b], ref, labels[a:b], a, enabled=chunk < n)
            sums = sums + s
            counts = counts + c
        return (sums / counts.clamp_min(1)).sum()
