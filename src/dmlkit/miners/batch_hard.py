"""Batch-hard triplet miner (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import Triplets
from dmlkit.miners.base import BaseMiner, cat_tuples
from dmlkit.registry import register_miner


@register_miner("batch_hard")
class BatchHardMiner(BaseMiner):
    """For each anchor: its farthest positive and its closest negative.

    Anchors without a positive or a negative in the reference set are skipped. Runs in
    row chunks (O(chunk * m) memory). Same triplets as pytorch-metric-learning's
    ``BatchHardMiner`` (up to ties).

    Parameters
    ----------
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    def __init__(self, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Triplets:
        x = self.distance.maybe_normalize(embeddings)
        ref = self.distance.maybe_normalize(ref_embeddings)
        n, m = x.shape[0], ref.shape[0]
        worst, best = self.distance.worst_value, -self.distance.worst_value
        anchors, positives, negatives = [], [], []
        for a, b in row_chunks(n, chunk_size_for(n, m * 4)):
            d = self.distance.compute_matrix(x[a:b], ref)  # (c, m)
            pos, neg = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
            _, p_idx = self.distance.farthest(d.masked_fill(~pos, best), dim=1)  # (c,)
            _, n_idx = self.distance.closest(d.masked_fill(~neg, worst), dim=1)  # (c,)
            ok = pos.any(dim=1) & neg.any(dim=1)  # (c,)
            rows = torch.arange(a, b, device=x.device)
            anchors.append(rows[ok])
            positives.append(p_idx[ok])
            negatives.append(n_idx[ok])
        if not anchors:  # an empty batch
            return cat_tuples([], Triplets, x.device)
        return Triplets(torch.cat(anchors), torch.cat(positives), torch.cat(negatives))
