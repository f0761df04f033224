"""Angular miner (Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss",
ICCV 2017)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import Triplets
from dmlkit.miners._matrix import max_positives, positive_slots
from dmlkit.miners.base import BaseMiner
from dmlkit.registry import register_miner


@register_miner("angular")
class AngularMiner(BaseMiner):
    r"""Triplets whose angle at the negative exceeds ``angle`` degrees.

    For a triplet :math:`(a, p, n)` with :math:`c = (a + p) / 2`, the angle of the
    angular loss paper is

    .. math::

        \theta = \arctan \frac{\lVert a - p \rVert}{2 \lVert n - c \rVert},

    the half-angle under which the negative sees the anchor-positive segment; a large
    :math:`\theta` means the negative sits close to the pair. Every valid triplet with
    :math:`\theta > \text{angle}` is returned, in (anchor, positive, negative) order.
    As in pytorch-metric-learning's ``AngularMiner`` (same parameter, same triplets)
    the triangle is that of the embeddings as given (not normalized). Anchors are
    processed in chunks over their own positives: time and memory O(n * k * m),
    ``k`` the most positives of an anchor.

    Parameters
    ----------
    angle : float
        Threshold in degrees.
    distance : EuclideanDistance, optional
        Only the plain Euclidean distance with ``normalize_embeddings=True`` is accepted
        (pytorch-metric-learning's ``LpDistance(p=2, power=1, normalize_embeddings=True)``),
        the only distance pytorch-metric-learning accepts here.
    """

    def __init__(self, angle: float = 20.0, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)
        d = self.distance
        if not (isinstance(d, EuclideanDistance) and not d.squared and d.normalize_embeddings):
            raise ValueError(
                "AngularMiner accepts only EuclideanDistance(squared=False, "
                f"normalize_embeddings=True), got {d!r}"
            )
        if angle <= 0 or angle >= 90:
            raise ValueError(f"AngularMiner: angle must be in (0, 90) degrees, got {angle}")
        self.angle = float(angle)

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Triplets:
        x, ref = embeddings.double(), ref_embeddings.double()  # (n, d), (m, d)
        n, m = x.shape[0], ref.shape[0]
        k = max_positives(labels, ref_labels, same_set)
        threshold = math.radians(self.angle)
        ref_sq = (ref * ref).sum(dim=1)  # (m,)
        gram = ref @ ref.T  # (m, m): p . n
        out: list[tuple[Tensor, Tensor, Tensor]] = []
        for a, b in row_chunks(n, chunk_size_for(n, 6 * max(k, 1) * m)) if k else ():
            pos, neg = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
            order, is_pos = positive_slots(pos, k)  # (c, k): each anchor's positives
            xa = x[a:b]  # (c, d)
            a_sq = (xa * xa).sum(dim=1)  # (c,)
            an = xa @ ref.T  # (c, m): a . n (and a . p)
            a_p = an.gather(1, order)  # (c, k)
            p_sq = ref_sq[order]  # (c, k)
            ap = (a_sq[:, None] + p_sq - 2.0 * a_p).clamp_min(0.0).sqrt()  # (c, k)
            # |n - (a + p)/2|^2 = |n|^2 - a.n - p.n + |a + p|^2 / 4
            sum_sq = a_sq[:, None] + p_sq + 2.0 * a_p  # (c, k): |a + p|^2
            nc2 = (
                ref_sq[None, None, :] - an[:, None, :] - gram[order]
                + sum_sq[:, :, None] / 4.0
            )  # (c, k, m)
            theta = torch.atan(ap[:, :, None] / (2.0 * nc2.clamp_min(0.0).sqrt()))  # (c, k, m)
            keep = is_pos[:, :, None] & neg[:, None, :] & (theta > threshold)
            ai, si, ni = torch.where(keep)
            out.append((ai + a, order[ai, si], ni))
        if not out:
            empty = torch.empty(0, dtype=torch.long, device=x.device)
            return Triplets(empty, empty, empty)
        return Triplets(*(torch.cat(parts) for parts in zip(*out, strict=True)))


__all__ = ["AngularMiner"]
