"""Pair-margin miner: the positive and negative pairs that violate their margins."""

from __future__ import annotations

from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.tuples import Pairs
from dmlkit.miners._where import ChunkedWhere
from dmlkit.miners.base import BaseMiner
from dmlkit.registry import register_miner


@register_miner("pair_margin")
class PairMarginMiner(BaseMiner):
    """Positive pairs farther than ``pos_margin`` and negative pairs closer than ``neg_margin``.

    For a distance: positives with ``d > pos_margin``, negatives with ``d < neg_margin``;
    for a similarity: positives with ``s < pos_margin``, negatives with ``s > neg_margin``.
    These are exactly the pairs with a non-zero contrastive loss (Hadsell et al. 2006).
    Same pairs, in the same (row-major) order, as pytorch-metric-learning's
    ``PairMarginMiner``. Runs in row chunks: peak memory is the output plus O(n * m)
    bytes of kept masks (or 4 bytes per mined pair, if fewer) plus one chunk.

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
        mined_pos, mined_neg = self._collect(x, labels, ref, ref_labels, same_set)
        a1, p = mined_pos.indices()  # (P,), (P,)
        a2, nn = mined_neg.indices()  # (N,), (N,)
        return Pairs(a1, p, a2, nn)

    def _collect(
        self, x: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor, same_set: bool
    ) -> tuple[ChunkedWhere, ChunkedWhere]:
        """Masks of the mined positive and negative pairs, row block by row block.

        The last block's temporaries end with the call, before the indices are written.
        """
        mined_pos, mined_neg = ChunkedWhere(x.device), ChunkedWhere(x.device)
        for a, d, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set):
            if self.distance.is_similarity:
                pos &= d < self.pos_margin  # (c, m)
                neg &= d > self.neg_margin  # (c, m)
            else:
                pos &= d > self.pos_margin  # (c, m)
                neg &= d < self.neg_margin  # (c, m)
            mined_pos.add(pos, a)
            mined_neg.add(neg, a)
        return mined_pos, mined_neg


__all__ = ["PairMarginMiner"]
