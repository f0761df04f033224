"""Batch-hard quadruplet miner for the quadruplet loss (Chen, Chen, Zhang & Huang,
"Beyond triplet loss: a deep quadruplet network for person re-identification", CVPR 2017)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import Quadruplets
from dmlkit.miners.base import BaseMiner, cat_tuples
from dmlkit.registry import register_miner

QuadrupletType = Literal["hardest", "violating"]
_INF = float("inf")


@register_miner("quadruplet")
class QuadrupletMiner(BaseMiner):
    """One hardest quadruplet ``(a, p, n, n2)`` per anchor.

    Selection rule, writing ``e`` for farness (the distance, or minus the similarity):

    * ``p``: the anchor's farthest positive;
    * ``n``: the anchor's closest negative;
    * ``n2``: the item closest to ``n`` among those whose label differs from both the
      anchor's and ``n``'s (so ``(n, n2)`` is the hardest negative pair that shares no
      item or class with the anchor, the second term of the quadruplet loss).

    Anchors lacking any of the three are skipped. With ``type_of_quadruplets="violating"``
    only quadruplets with a non-zero quadruplet loss are kept, i.e. with
    ``e_ap - e_an + margin > 0`` or ``e_ap - e_{n n2} + margin2 > 0``. Positives,
    negatives and ``n2`` index the reference set. Runs in row chunks (O(chunk * m) memory).

    Parameters
    ----------
    type_of_quadruplets : {"hardest", "violating"}
    margin, margin2 : float
        The two margins of the quadruplet loss (used by ``"violating"`` only); Chen et al.
        use ``margin > margin2``.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    output_kind = "quadruplets"

    def __init__(
        self,
        type_of_quadruplets: QuadrupletType = "hardest",
        margin: float = 0.2,
        margin2: float = 0.1,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if type_of_quadruplets not in ("hardest", "violating"):
            raise ValueError(
                f"type_of_quadruplets must be 'hardest' or 'violating', got {type_of_quadruplets!r}"
            )
        self.type_of_quadruplets = type_of_quadruplets
        self.margin = float(margin)
        self.margin2 = float(margin2)

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Quadruplets:
        x = self.distance.maybe_normalize(embeddings)
        ref = self.distance.maybe_normalize(ref_embeddings)
        sign = -1.0 if self.distance.is_similarity else 1.0
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for a, mat, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set, 8):
            e = sign * mat  # (c, m), smaller = closer
            e_ap, p_idx = e.masked_fill(~pos, -_INF).max(dim=1)  # (c,)
            e_an, n_idx = e.masked_fill(~neg, _INF).min(dim=1)  # (c,)
            e_n = sign * self.distance.compute_matrix(ref[n_idx], ref)  # (c, m): from each n
            _, neg_of_n = pos_neg_masks(ref_labels[n_idx], ref_labels, exclude_self=False)
            cand = neg & neg_of_n  # (c, m): differs from the anchor's and n's label
            e_nn2, n2_idx = e_n.masked_fill(~cand, _INF).min(dim=1)  # (c,)
            keep = pos.any(dim=1) & neg.any(dim=1) & cand.any(dim=1)  # (c,)
            if self.type_of_quadruplets == "violating":
                keep &= (e_ap - e_an + self.margin > 0) | (e_ap - e_nn2 + self.margin2 > 0)
            rows = torch.arange(a, a + e.shape[0], device=x.device)
            parts.append((rows[keep], p_idx[keep], n_idx[keep], n2_idx[keep]))
        return cat_tuples(parts, Quadruplets, x.device)


__all__ = ["QuadrupletMiner"]
