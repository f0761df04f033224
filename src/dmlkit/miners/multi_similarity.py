"""Multi-similarity miner (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with
General Pair Weighting for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import Pairs
from dmlkit.miners.base import BaseMiner, cat_tuples
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
    shares_matrix = True  # its matrix is only compared, never modified

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
        sign = -1.0 if self.distance.is_similarity else 1.0
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for a, mat, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set):
            e = sign * mat  # (c, m), smaller = closer
            closest_neg = e.masked_fill(~neg, _INF).min(dim=1, keepdim=True).values  # (c, 1)
            farthest_pos = e.masked_fill(~pos, -_INF).max(dim=1, keepdim=True).values  # (c, 1)
            # +-inf thresholds (no negative / no positive) keep nothing
            hard_pos = pos & (e + self.epsilon > closest_neg)  # (c, m)
            hard_neg = neg & (e - self.epsilon < farthest_pos)  # (c, m)
            a1, p = torch.where(hard_pos)
            a2, nn = torch.where(hard_neg)
            parts.append((a1 + a, p, a2 + a, nn))
        return cat_tuples(parts, Pairs, x.device)


__all__ = ["MultiSimilarityMiner"]
