"""Hard-aware deeply cascaded (HDC) pair miner (Yuan, Yang & Zhang, "Hard-Aware Deeply
Cascaded Embedding", ICCV 2017)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple, Pairs
from dmlkit.losses._rows import as_pairs
from dmlkit.miners._matrix import miner_matrix
from dmlkit.miners.base import BaseMiner, cat_tuples
from dmlkit.registry import register_miner


@register_miner("hdc")
class HDCMiner(BaseMiner):
    """The hardest ``filter_percentage`` of the positive pairs and of the negative pairs.

    Of the ``P`` positive pairs the ``ceil(filter_percentage * P)`` farthest are kept
    (for a similarity: the least similar), of the ``N`` negative pairs the
    ``ceil(filter_percentage * N)`` closest; each list is ordered from hardest to
    easiest (``torch.topk``). The candidates are all pairs of the batch (against the
    reference set when given), or the pairs set by :meth:`set_idx_externally` (a
    cascade stage refining an earlier stage's pairs). Same pairs, same order, as
    pytorch-metric-learning's ``HDCMiner``; any distance.

    Parameters
    ----------
    filter_percentage : float
        Fraction in ``[0, 1]`` of each pair list to keep.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    output_kind = "pairs"

    def __init__(
        self, filter_percentage: float = 0.5, distance: BaseDistance | None = None
    ) -> None:
        super().__init__(distance=distance)
        if not 0.0 <= float(filter_percentage) <= 1.0:
            raise ValueError(f"filter_percentage must be in [0, 1], got {filter_percentage}")
        self.filter_percentage = float(filter_percentage)
        self._external: Pairs | None = None

    def set_idx_externally(self, indices: IndexTuple, labels: Tensor | None = None) -> None:
        """Mine from these pairs (triplets give their two pairs) instead of all pairs."""
        self._external = as_pairs(indices)

    def reset_idx(self) -> None:
        """Go back to mining from all pairs."""
        self._external = None

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
        if self._external is not None:
            a1, p, a2, n = (t.to(x.device) for t in self._external)
            d_pos = miner_matrix(self.distance, x, ref)[a1, p]  # (P,)
            d_neg = miner_matrix(self.distance, x, ref)[a2, n]  # (N,)
        else:
            parts = []
            n_rows, m = x.shape[0], ref.shape[0]
            for a, b in row_chunks(n_rows, chunk_size_for(n_rows, 4 * m)):
                d = miner_matrix(self.distance, x[a:b], ref)  # (c, m)
                pos, neg = pos_neg_masks(
                    labels[a:b], ref_labels, exclude_self=same_set, row_offset=a
                )
                pa, pp = torch.where(pos)
                na, nn = torch.where(neg)
                parts.append((pa + a, pp, d[pa, pp], na + a, nn, d[na, nn]))
            a1, p, d_pos, a2, n, d_neg = (
                (torch.cat(t) for t in zip(*parts, strict=True))
                if parts
                else (torch.empty(0, device=x.device) for _ in range(6))
            )
            a1, p, a2, n = a1.long(), p.long(), a2.long(), n.long()
        sim = self.distance.is_similarity
        a1, p = self._hardest(a1, p, d_pos, largest=not sim)
        a2, n = self._hardest(a2, n, d_neg, largest=sim)
        return cat_tuples([(a1, p, a2, n)], Pairs, x.device)

    def _hardest(
        self, anchors: Tensor, others: Tensor, values: Tensor, largest: bool
    ) -> tuple[Tensor, Tensor]:
        if anchors.numel() == 0:
            return anchors, others
        k = int(math.ceil(self.filter_percentage * anchors.numel()))
        _, idx = torch.topk(values, k=k, largest=largest)
        return anchors[idx], others[idx]


__all__ = ["HDCMiner"]
