"""Triplet-margin miner: all triplets filtered by how much they violate the margin."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import Triplets
from dmlkit.miners._matrix import max_positives, miner_matrix, positive_slots
from dmlkit.miners.base import BaseMiner
from dmlkit.registry import register_miner

TripletType = Literal["all", "hard", "semihard", "easy"]


@register_miner("triplet_margin")
class TripletMarginMiner(BaseMiner):
    """Triplets selected by their margin ``gap = d(a, n) - d(a, p)`` (similarity: ``s_ap - s_an``).

    * ``"all"``: ``gap <= margin`` (every triplet that still has a loss);
    * ``"hard"``: ``gap <= 0`` (the negative is at least as close as the positive);
    * ``"semihard"``: ``0 < gap <= margin`` (FaceNet's semi-hard negatives);
    * ``"easy"``: ``gap > margin``.

    Same triplets, in the same order, as pytorch-metric-learning's ``TripletMarginMiner``
    for every type and margin, with or without a reference set, ties included: the
    matrix entries are computed as there (``torch.cdist`` for Euclidean distances), and
    ``gap`` is one subtraction of two entries, so triplets on a threshold fall on the
    same side. Any distance.
    Anchors are processed in chunks over their own positives only, so time and memory
    are O(n * k * m) (``k`` the most positives of an anchor) plus the output.

    Parameters
    ----------
    margin : float
        The margin of the triplet loss the triplets are mined for.
    type_of_triplets : {"all", "hard", "semihard", "easy"}
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    def __init__(
        self,
        margin: float = 0.2,
        type_of_triplets: TripletType = "all",
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if type_of_triplets not in ("all", "hard", "semihard", "easy"):
            raise ValueError(
                f"type_of_triplets must be 'all', 'hard', 'semihard' or 'easy', "
                f"got {type_of_triplets!r}"
            )
        self.margin = float(margin)
        self.type_of_triplets = type_of_triplets

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
        k = max_positives(labels, ref_labels, same_set)
        sign = -1.0 if self.distance.is_similarity else 1.0
        out: list[tuple[Tensor, Tensor, Tensor]] = []
        for a, b in row_chunks(n, chunk_size_for(n, 4 * max(k, 1) * m)) if k else ():
            e = sign * miner_matrix(self.distance, x[a:b], ref)  # (c, m), smaller = closer
            pos, neg = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
            order, is_pos = positive_slots(pos, k)  # (c, k) each
            e_ap = e.gather(1, order)  # (c, k)
            gap = e[:, None, :] - e_ap[:, :, None]  # (c, k, m): e_an - e_ap
            valid = is_pos[:, :, None] & neg[:, None, :]  # (c, k, m)
            if self.type_of_triplets == "easy":
                keep = gap > self.margin
            else:
                keep = gap <= self.margin
                if self.type_of_triplets == "hard":
                    keep &= gap <= 0
                elif self.type_of_triplets == "semihard":
                    keep &= gap > 0
            ai, si, ni = torch.where(valid & keep)
            out.append((ai + a, order[ai, si], ni))
        if not out:
            empty = torch.empty(0, dtype=torch.long, device=x.device)
            return Triplets(empty, empty, empty)
        return Triplets(*(torch.cat(parts) for parts in zip(*out, strict=True)))
