"""Multi-similarity miner (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with
General Pair Weighting for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import Pairs
from dmlkit.miners._where import ChunkedWhere
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
    contribute no pair. Same pairs as pytorch-metric-learning's ``MultiSimilarityMiner``,
    each list in row-major order. Runs in row chunks: peak memory is the output plus
    O(n * m) bytes of kept masks (or 4 bytes per mined pair, if fewer) plus one chunk.

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
        hard_pos, hard_neg = self._collect(x, labels, ref, ref_labels, same_set)
        a1, p = hard_pos.indices()  # (P,), (P,)
        a2, nn = hard_neg.indices()  # (N,), (N,)
        return Pairs(a1, p, a2, nn)

    def _collect(
        self, x: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor, same_set: bool
    ) -> tuple[ChunkedWhere, ChunkedWhere]:
        """Masks of the mined positive and negative pairs, row block by row block.

        The last block's temporaries end with the call, before the indices are written.
        """
        sign = -1.0 if self.distance.is_similarity else 1.0
        hard_pos, hard_neg = ChunkedWhere(x.device), ChunkedWhere(x.device)
        for a, mat, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set):
            e = sign * mat  # (c, m), smaller = closer
            closest_neg = e.masked_fill(~neg, _INF).min(dim=1, keepdim=True).values  # (c, 1)
            farthest_pos = e.masked_fill(~pos, -_INF).max(dim=1, keepdim=True).values  # (c, 1)
            # +-inf thresholds (no negative / no positive) keep nothing
            hard_pos.add(pos & (e + self.epsilon > closest_neg), a)  # (c, m)
            hard_neg.add(neg & (e - self.epsilon < farthest_pos), a)  # (c, m)
        return hard_pos, hard_neg


__all__ = ["MultiSimilarityMiner"]
