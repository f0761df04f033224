"""Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.chunking import chunked_sum, eager_chunk_size
from dmlkit.functional.distances import cut_sqrt
from dmlkit.functional.labels import same_label
from dmlkit.functional.tuples import IndexTuple, Pairs, triplets_to_pairs
from dmlkit.losses._rows import use_fused, with_grads
from dmlkit.losses._tuple_distances import closed_form_loss
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("contrastive")
class ContrastiveLoss(BaseMetricLoss):
    """Pull positive pairs within ``pos_margin``, push negatives beyond ``neg_margin``.

    For a distance ``d``: positive pairs cost ``relu(d - pos_margin)``, negative pairs
    ``relu(neg_margin - d)``. For a similarity the inequalities flip. Each part is averaged
    over its pairs with non-zero loss, and the two parts are added
    (pytorch-metric-learning's ``ContrastiveLoss`` with its default reducer).

    Without ``indices`` every pair of the batch is used, computed in row chunks with
    recomputation in backward, so memory stays O(chunk * n) rather than O(n^2).

    Parameters
    ----------
    pos_margin, neg_margin : float
        Margins for positive and negative pairs.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        # positives must be asked to be at least as close as negatives are pushed away;
        # otherwise a band of values costs nothing for either kind of pair
        if self.distance.is_similarity and pos_margin < neg_margin:
            raise ValueError(
                f"{type(self).__name__}: with a similarity, pos_margin ({pos_margin}) must be "
                f">= neg_margin ({neg_margin}) (e.g. pos_margin=1, neg_margin=0)"
            )
        if not self.distance.is_similarity and pos_margin > neg_margin:
            raise ValueError(
                f"{type(self).__name__}: with a distance, pos_margin ({pos_margin}) must be "
                f"<= neg_margin ({neg_margin})"
            )
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def _pos_cost(self, d: Tensor) -> Tensor:
        sign = -1.0 if self.distance.is_similarity else 1.0
        return torch.relu(sign * (d - self.pos_margin))

    def _neg_cost(self, d: Tensor) -> Tensor:
        sign = -1.0 if self.distance.is_similarity else 1.0
        return torch.relu(sign * (self.neg_margin - d))

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is None:
            return self._all_pairs(embeddings, labels, ref_embeddings, ref_labels)
        pairs = indices if isinstance(indices, Pairs) else triplets_to_pairs(indices[:3])
        requests = [(pairs.a1, pairs.p), (pairs.a2, pairs.n)]
        # one matrix or the pairs' rows (chosen by size), costs' derivatives in closed form
        return closed_form_loss(
            self.distance, embeddings, ref_embeddings, requests, self._pair_terms
        )

    def _pair_terms(self, d: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Loss of the ``(P,)`` positive and ``(N,)`` negative distances, and its derivatives."""
        sign = -1.0 if self.distance.is_similarity else 1.0
        pos = d[0].sub_(self.pos_margin).mul_(sign).clamp_min_(0.0)  # (P,) cost
        neg = d[1].sub_(self.neg_margin).mul_(-sign).clamp_min_(0.0)  # (N,) cost
        n_pos = (pos > 0).sum().clamp_min(1)
        n_neg = (neg > 0).sum().clamp_min(1)
        value = pos.sum() / n_pos + neg.sum() / n_neg
        return value, [
            (pos > 0).to(pos.dtype) * (sign / n_pos),
            (neg > 0).to(neg.dtype) * (-sign / n_neg),
        ]

    def _all_pairs(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        full_ref_labels = labels if ref_labels is None else ref_labels
        exclude_self = ref_embeddings is None
        n, m = x.shape[0], ref.shape[0]
        euclid = type(self.distance) is EuclideanDistance and not self.distance.squared
        if euclid and use_fused(x, ref, labels, None):
            return self._fused(x, ref, same_label(labels, full_ref_labels), exclude_self)

        sign = -1.0 if self.distance.is_similarity else 1.0

        def chunk_terms(a: int, b: int, x_: Tensor, ref_: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            xc = x_[a:b]  # (c, d)
            with torch.no_grad():
                d = _matrix(self.distance, xc, ref_)  # (c, m)
            same = same_label(labels[a:b], full_ref_labels)  # (c, m)
            # positives (few): the matrix's values, the gradient of their row-wise distances
            i, j = torch.where(same)  # (P,), (P,)
            if exclude_self:
                keep = i + a != j
                i, j = i[keep], j[keep]
            d_rows = self.distance.compute_rowwise(xc[i], ref_[j])  # (P,)
            pos_cost = self._pos_cost(d_rows + (d[i, j] - d_rows.detach()))  # (P,)
            # negatives (all the rest): cost and its derivative in closed form, then one
            # surrogate carries the gradient through the distance
            with torch.no_grad():
                neg_cost = d - self.neg_margin if sign < 0 else self.neg_margin - d  # (c, m)
                neg_cost.clamp_min_(0.0).masked_fill_(same, 0.0)
                active = neg_cost > 0  # (c, m)
                neg_sum = neg_cost.sum()
            if xc.requires_grad or ref_.requires_grad:
                grad = active.to(d.dtype).mul_(-sign)  # (c, m): d neg_cost / d d
                s = self.distance.matrix_surrogate(xc, ref_, grad, d)
                neg_sum = neg_sum + (s - s.detach())
            counts = torch.stack([(pos_cost > 0).sum(), active.sum()])  # (2,)
            return pos_cost.sum(), neg_sum, counts  # separate scalars: see chunked_sum

        # gradients are taken chunk by chunk: small chunks cost no recomputation and keep
        # peak memory far below one (n, m) matrix
        pos_sum, neg_sum, counts = chunked_sum(chunk_terms, n, eager_chunk_size(n, m), x, ref)
        counts = counts.clamp_min(1)
        return pos_sum / counts[0] + neg_sum / counts[1]

    def _fused(self, x: Tensor, ref: Tensor, same: Tensor, exclude_self: bool) -> Tensor:
        """Whole-matrix Euclidean path: loss and its closed-form gradient in one pass."""
        need_grad = torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)
        with torch.no_grad():
            xd, rd = x.detach(), ref.detach()
            x_sq, r_sq = (xd * xd).sum(dim=1, keepdim=True), (rd * rd).sum(dim=1)[None, :]
            d = torch.addmm(r_sq, xd, rd.T, alpha=-2.0).add_(x_sq)  # (n, m)
            cut_sqrt(d, x_sq, r_sq, inplace=True)  # (n, m) distances, safe_sqrt's zeros
            i, j = torch.where(same)  # (P,) positive pairs
            if exclude_self:
                keep = i != j
                i, j = i[keep], j[keep]
            d_pos = d[i, j]  # (P,)
            pos_cost = (d_pos - self.pos_margin).clamp_min_(0.0)  # (P,)
            pos_act = pos_cost > 0  # (P,)
            n_pos = pos_act.sum().clamp_min(1)
            t = torch.sub(self.neg_margin, d).masked_fill_(same, 0.0).relu_()  # (n, m)
            n_neg = torch.count_nonzero(t).clamp_min(1)
            loss = pos_cost.sum() / n_pos + t.sum() / n_neg
            if not need_grad:
                return loss
            # h = (d loss / d d) / d, scaled by -n_neg: -1 on active negatives
            h = t.sign_().div_(d).nan_to_num_(0.0, 0.0, 0.0)  # (n, m); 0 where d = 0
            hp = torch.where(pos_act & (d_pos > 0), -n_neg / (n_pos * d_pos), 0.0)  # (P,)
            h.index_put_((i, j), hp, accumulate=True)
            scale = -1.0 / n_neg
            gx = (h.sum(dim=1, keepdim=True) * xd - h @ rd).mul_(scale)  # (n, d)
            if exclude_self:  # ref is x and h symmetric: the ref gradient equals gx
                gr = gx
            else:
                gr = (h.sum(dim=0)[:, None] * rd - h.T @ xd).mul_(scale)  # (m, d)
        return with_grads(loss, x, ref, gx, gr)


def _matrix(distance: BaseDistance, x: Tensor, y: Tensor) -> Tensor:
    """``distance.compute_matrix(x, y)`` without autograd; Euclidean in 4-6 fused passes."""
    if type(distance) is not EuclideanDistance:
        return distance.compute_matrix(x, y)
    x_sq, y_sq = (x * x).sum(dim=1, keepdim=True), (y * y).sum(dim=1)[None, :]
    d2 = torch.addmm(y_sq, x, y.T, alpha=-2.0)  # (c, m): |y|^2 - 2 x.y
    d2.add_(x_sq).clamp_min_(0.0)
    if distance.squared:
        return d2
    return cut_sqrt(d2, x_sq, y_sq, inplace=True)  # safe_sqrt's zeros
