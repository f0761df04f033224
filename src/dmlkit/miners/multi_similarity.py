"""Multi-similarity miner (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with
General Pair Weighting for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import Pairs
from dmlkit.miners.base import BaseMiner
from dmlkit.registry import register_miner

_INF = float("inf")


@register_miner("multi_similarity")
class MultiSimilarityMiner(BaseMiner):
    """Pairs that are informative relative to the anchor's hardest pair of the other kind.

    With a similarity ``s``: a positive pair is kept when ``s_ap - epsilon < max_n s_an``
    and a negative pair when ``s_an + epsilon > min_p s_ap`` (the paper's pair mining
    step). With a distance the inequalities flip (``d_ap + epsilon > min_n d_an``,
    ``d_an - epsilon < max_p d_ap``). Anchors without a positive or without a negative
    contribute no pair. Same pairs as pytorch-metric-learning's ``MultiSimilarityMiner``
    (up to order). Runs in row chunks (O(chunk * m) memory).

    Parameters
    ----------
    epsilon : float
        Slack of the comparison with the hardest pair.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.CosineSimilarity`.
    """

    output_kind = "pairs"

    def __init__(self, epsilon: float = 0.1, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance if distance is not None else CosineSimilarity())
        self.epsilon = float(epsilon)

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
        n, m = x.shape[0], ref.shape[0]
        sign = -1.0 if self.distance.is_similarity else 1.0
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for a, b in row_chunks(n, chunk_size_for(n, m * 4)):
            e = sign * self.distance.compute_matrix(x[a:b], ref)  # (c, m), smaller = closer
            pos, neg = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
            closest_neg = e.masked_fill(~neg, _INF).min(dim=1, keepdim=True).values  # (c, 1)
            farthest_pos = e.masked_fill(~pos, -_INF).max(dim=1, keepdim=True).values  # (c, 1)
            # +-inf thresholds (no negative / no positive) keep nothing
            hard_pos = pos & (e + self.epsilon > closest_neg)  # (c, m)
            hard_neg = neg & (e - self.epsilon < farthest_pos)  # (c, m)
            a1, p = torch.where(hard_pos)
            a2, nn = torch.where(hard_neg)
            parts.append((a1 + a, p, a2 + a, nn))
        if not parts:  # no anchors
            parts = [tuple(torch.empty(0, dtype=torch.long, device=x.device) for _ in range(4))]
        return Pairs(*(torch.cat(p) for p in zip(*parts, strict=True)))


__all__ = ["MultiSimilarityMiner"]
