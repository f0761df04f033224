"""Quadruplet loss (Chen, Chen, Zhang & Huang, CVPR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.tuples import IndexTuple, Pairs, Quadruplets, Triplets, pairs_to_triplets
from dmlkit.losses._rows import RowWeights, pack, positive_pairs, sum_over_chunks
from dmlkit.losses._tuple_distances import pair_distances
from dmlkit.losses.base import BaseMetricLoss, mean_nonzero
from dmlkit.registry import register_loss


@register_loss("quadruplet")
class QuadrupletLoss(BaseMetricLoss):
    r"""Triplet term plus a term pushing other classes' negative pairs beyond positives.

    Writing :math:`e` for farness (the distance, or minus the similarity), a quadruplet
    :math:`(a, p, n, n_2)` has :math:`y_a = y_p`, :math:`y_n \ne y_a`,
    :math:`y_{n_2} \ne y_a`, :math:`y_{n_2} \ne y_n`, and

    .. math::

        \ell = \overline{[e_{ap} - e_{an} + \alpha_1]_+}
             + \overline{[e_{ap} - e_{n n_2} + \alpha_2]_+}

    where each bar is the mean over the tuples with a non-zero term (the first over
    triplets :math:`(a, p, n)`, the second over quadruplets), as the triplet losses here.

    * ``indices`` as :class:`Quadruplets` (e.g. from ``QuadrupletMiner``): both terms
      over those tuples; :class:`Triplets` / :class:`Pairs`: the first term only.
    * labels only (the all-tuples version): the first term over every triplet of the
      batch; the second over every positive pair :math:`(a, p)` and every ordered
      negative pair :math:`(n, n_2)` of the reference set whose two classes both differ
      from :math:`a`'s. Neither is materialized: the first sorts each anchor's
      negatives (O(n m log m)); the second sorts the positive-pair thresholds
      :math:`e_{ap} + \alpha_2` once, per class too, and for each negative pair counts
      and sums the thresholds above it minus those of its two own classes
      (O(m^2 log P) time for P positive pairs, O(chunk * m) memory). Needs ``(n,)``
      class labels.

    Parameters
    ----------
    margin, margin2 : float
        :math:`\alpha_1`, :math:`\alpha_2` (Chen et al. use :math:`\alpha_1 > \alpha_2`).
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings
        (the paper learns the metric itself; pass ``EuclideanDistance(squared=True)`` for
        its squared distances).

    Notes
    -----
    Chen et al., "Beyond Triplet Loss: a Deep Quadruplet Network for Person
    Re-identification", CVPR 2017.
    """

    def __init__(
        self, margin: float = 0.2, margin2: float = 0.1, distance: BaseDistance | None = None
    ) -> None:
        super().__init__(distance=distance)
        for name, value in (("margin", margin), ("margin2", margin2)):
            if value < 0:
                raise ValueError(f"QuadrupletLoss: {name} must be >= 0, got {value}")
        self.margin = float(margin)
        self.margin2 = float(margin2)

    def _far(self, x: Tensor, y: Tensor) -> Tensor:
        d = self.distance.pairwise(x, y)
        return -d if self.distance.is_similarity else d

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is None:
            return self._all_tuples(embeddings, labels, ref_embeddings, ref_labels)
        trip = pairs_to_triplets(indices) if isinstance(indices, Pairs) else Triplets(*indices[:3])
        if trip.anchor.numel() == 0:
            return self.zero_loss(embeddings)
        quad = isinstance(indices, Quadruplets)
        (e_ap, e_an), ref_d = pair_distances(
            self.distance,
            embeddings,
            ref_embeddings,
            [(trip.anchor, trip.positive), (trip.anchor, trip.negative)],
            ref_requests=[(indices.negative, indices.negative2)] if quad else (),
        )  # (T,) each, from one matrix or one gather: no (T, dim) copies
        if self.distance.is_similarity:
            e_ap, e_an, ref_d = -e_ap, -e_an, [-v for v in ref_d]
        loss = mean_nonzero(torch.relu(e_ap - e_an + self.margin), embeddings)
        if quad:
            e_nn = ref_d[0]  # (T,)
            loss = loss + mean_nonzero(torch.relu(e_ap - e_nn + self.margin2), embeddings)
        return loss

    # -- all tuples ---------------------------------------------------------------------
    def _all_tuples(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels.dim() != 1:
            raise ValueError(
                "QuadrupletLoss over all tuples needs (n,) class labels; "
                "pass Quadruplets indices for other label kinds"
            )
        full_ref_labels = labels if ref_labels is None else ref_labels
        a, p = positive_pairs(labels, ref_labels)  # (P,), (P,)
        if a.numel() == 0:
            return self.zero_loss(embeddings)
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        sign = -1.0 if self.distance.is_similarity else 1.0
        first = self._triplet_term(x, ref, labels, ref_labels, ref_embeddings is None, sign)
        # thresholds e_ap + margin2 of every positive pair, and their anchors' classes
        thresholds = sign * self.distance.compute_rowwise(x[a], ref[p]) + self.margin2  # (P,)
        _, cls = torch.unique(torch.cat([labels, full_ref_labels]), return_inverse=True)
        second = self._pair_term(ref, cls[labels.shape[0] :], thresholds, cls[a], sign)
        return first + second

    def _triplet_term(
        self,
        x: Tensor,
        ref: Tensor,
        labels: Tensor,
        ref_labels: Tensor | None,
        same: bool,
        sign: float,
    ) -> Tensor:
        weights = RowWeights(labels, ref_labels, None, ref.shape[0], same)
        margin = self.margin

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            e = sign * self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = weights(start, stop, e.dtype, e.device)  # (c, m)
            neg_sorted, _ = torch.sort(e.masked_fill(neg == 0, float("inf")), dim=1)  # (c, m)
            finite = torch.where(torch.isinf(neg_sorted), 0.0, neg_sorted)
            prefix = F.pad(torch.cumsum(finite.double(), dim=1), (1, 0))  # (c, m + 1)
            thresh = e + margin  # (c, m): violated by negatives with e_an < e_ap + margin
            cnt = torch.searchsorted(neg_sorted.detach().contiguous(), thresh.detach().contiguous())
            cnt = cnt * pos.long()  # (c, m) only real positives
            per_pos = cnt * thresh.double() - prefix.gather(1, cnt)  # (c, m)
            return pack(per_pos.sum().to(e.dtype), cnt.sum())

        total, count = sum_over_chunks(chunk_terms, x.shape[0], 8 * ref.shape[0], x, ref)
        return total / count.clamp_min(1)

    def _pair_term(
        self, ref: Tensor, ref_cls: Tensor, thresholds: Tensor, t_cls: Tensor, sign: float
    ) -> Tensor:
        n_cls = int(max(ref_cls.max(), t_cls.max())) + 1
        big_p = thresholds.numel()
        t_all, _ = torch.sort(thresholds)  # (P,)
        lo, hi = float(t_all[0].detach()), float(t_all[-1].detach())
        span = hi - lo + 2.0
        # thresholds sorted by (class, value): keys shifted by class * span never interleave
        by_value = torch.argsort(thresholds.detach(), stable=True)
        order = by_value[torch.argsort(t_cls[by_value], stable=True)]  # (P,)
        t_seg, seg_cls = thresholds[order], t_cls[order]  # (P,)
        keys = (t_seg.detach().double() - lo + 1.0) + seg_cls.double() * span  # (P,)
        seg_end = torch.cumsum(torch.bincount(seg_cls, minlength=n_cls), 0)  # (C,)

        def above(cum: Tensor, sorted_keys: Tensor, query: Tensor, end: Tensor, d: Tensor):
            k = torch.searchsorted(sorted_keys, query.contiguous(), right=True)  # (c, m)
            return cum[end] - cum[k], (end - k).to(d.dtype)  # sum and count of t > d

        def chunk_terms(start: int, stop: int, ref_: Tensor, ts: Tensor, tseg: Tensor) -> Tensor:
            e = sign * self.distance.compute_matrix(ref_[start:stop], ref_)  # (c, m)
            cu, cv = ref_cls[start:stop, None], ref_cls[None, :]  # (c, 1), (1, m)
            neg = (cu != cv).expand_as(e)  # (c, m) ordered negative pairs
            cum_all = F.pad(torch.cumsum(ts.double(), 0), (1, 0))  # (P + 1,)
            cum_seg = F.pad(torch.cumsum(tseg.double(), 0), (1, 0))  # (P + 1,)
            q = e.detach().double().clamp(lo - 0.5, hi + 0.5) - lo + 1.0  # (c, m)
            end_all = torch.full_like(e, big_p, dtype=torch.long)
            s_all, n_all = above(cum_all, ts.detach().double() - lo + 1.0, q, end_all, e)
            s_u, n_u = above(cum_seg, keys, q + cu.double() * span, seg_end[cu].expand_as(e), e)
            s_v, n_v = above(cum_seg, keys, q + cv.double() * span, seg_end[cv].expand_as(e), e)
            count = (n_all - n_u - n_v) * neg  # (c, m) valid thresholds above e_{n n2}
            total = ((s_all - s_u - s_v).to(e.dtype) - count * e) * neg  # (c, m)
            return pack(total.sum(), count.sum())

        total, count = sum_over_chunks(
            chunk_terms, ref.shape[0], 16 * ref.shape[0], ref, t_all, t_seg
        )
        return total / count.clamp_min(1)
