"""Lifted structured loss (Song, Xiang, Jegelka & Savarese, CVPR 2016) and its generalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.labels import self_mask
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import masked_logsumexp, pack, setup_rows, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


class _LiftedBase(BaseMetricLoss):
    def __init__(
        self,
        neg_margin: float = 1.0,
        pos_margin: float = 0.0,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if not self.distance.is_similarity:  # distances are >= 0: so are their margins
            for name, value in (("neg_margin", neg_margin), ("pos_margin", pos_margin)):
                if value < 0:
                    raise ValueError(
                        f"{type(self).__name__}: {name} must be >= 0 for a distance, got {value}"
                    )
        self.neg_margin = float(neg_margin)
        self.pos_margin = float(pos_margin)

    def _pos_excess(self, d: Tensor) -> Tensor:
        """How far a positive is beyond ``pos_margin`` (larger = worse)."""
        return self.pos_margin - d if self.distance.is_similarity else d - self.pos_margin

    def _neg_excess(self, d: Tensor) -> Tensor:
        """How far a negative is inside ``neg_margin`` (larger = worse)."""
        return d - self.neg_margin if self.distance.is_similarity else self.neg_margin - d


@register_loss("lifted_structure")
class LiftedStructureLoss(_LiftedBase):
    r"""Smooth lifted structured loss of Song et al. 2016, per positive pair.

    For a positive pair :math:`(i, j)` with negatives :math:`N_i` of :math:`i` and
    :math:`N_j` of :math:`j`:

    .. math::

        \ell_{ij} = \tfrac12 \Big[\log\Big(\sum_{k \in N_i} e^{\mu_- - d_{ik}}
            + \sum_{l \in N_j} e^{\mu_- - d_{jl}}\Big) + d_{ij} - \mu_+\Big]_+^2

    averaged over positive pairs (pytorch-metric-learning's ``LiftedStructureLoss``:
    ``neg_margin`` :math:`\mu_-`, ``pos_margin`` :math:`\mu_+`, plain distances, not
    squared). With mined ``indices``, the negatives of a pair are the mined negative
    pairs whose anchor is :math:`i` or :math:`j`; with ``ref_embeddings`` the index
    :math:`j` is a reference index and, as in pytorch-metric-learning, the negatives of
    query :math:`j` are used when :math:`j < n`.

    Parameters
    ----------
    neg_margin, pos_margin : float
        :math:`\mu_-`, :math:`\mu_+`.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.

    Notes
    -----
    Two chunked passes (per-anchor negative log-sum-exps, then positive pairs), each
    recomputed in backward: memory O(chunk * m).
    """

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x, ref, weights = setup_rows(
            self.distance, embeddings, labels, indices, ref_embeddings, ref_labels
        )
        n, m = x.shape[0], ref.shape[0]

        def neg_lse(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            d = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            _, neg_w = weights(start, stop, d.dtype, d.device)  # (c, m)
            lse = masked_logsumexp(self._neg_excess(d), neg_w > 0, weights=neg_w)  # (c,)
            has_neg = (neg_w > 0).any(dim=1).to(d.dtype)  # (c,)
            pad = (start, n - stop)
            return torch.cat([F.pad(lse, pad), F.pad(has_neg, pad)])  # (2n,)

        rows = sum_over_chunks(neg_lse, n, 3 * m, x, ref)  # (2n,)
        lse_q, has_q = rows[:n], rows[n:] > 0  # (n,), (n,)
        # the negatives of reference j are those of query j (pytorch-metric-learning's rule)
        k = min(n, m)
        lse_r = torch.cat([lse_q[:k], lse_q.new_zeros(m - k)])  # (m,)
        has_r = torch.cat([has_q[:k], has_q.new_zeros(m - k)])  # (m,)

        def pos_terms(
            start: int, stop: int, x_: Tensor, ref_: Tensor, lq: Tensor, lr: Tensor
        ) -> Tensor:
            d = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos_w, neg_w = weights(start, stop, d.dtype, d.device)  # (c, m)
            hq, hr = has_q[start:stop, None], has_r[None, :]  # (c, 1), (1, m)
            hr = hr & ~self_mask(stop - start, m, start, d.device)  # j == i: its negatives once
            a, b = lq[start:stop, None].expand_as(d), lr[None, :].expand_as(d)  # (c, m)
            both = torch.logaddexp(a, b)  # (c, m)
            neg_part = torch.where(hq & hr, both, torch.where(hq, a, torch.where(hr, b, 0.0 * a)))
            loss = torch.relu(neg_part + self._pos_excess(d)) ** 2 / 2  # (c, m)
            return pack((loss * pos_w).sum(), pos_w.sum(), neg_w.sum())

        total, n_pos, n_neg = sum_over_chunks(pos_terms, n, 6 * m, x, ref, lse_q, lse_r)
        if n_pos == 0 or n_neg == 0:
            return self.zero_loss(embeddings)
        return total / n_pos


@register_loss("generalized_lifted_structure")
class GeneralizedLiftedStructureLoss(_LiftedBase):
    r"""Generalized lifted structure loss (Hermans, Beyer & Leibe 2017, eq. 4), per anchor.

    .. math::

        \ell_i = \Big[\log\sum_{p \in P_i} e^{d_{ip} - \mu_+}
                    + \log\sum_{n \in N_i} e^{\mu_- - d_{in}}\Big]_+

    averaged over all anchors (pytorch-metric-learning's
    ``GeneralizedLiftedStructureLoss``). The smooth, per-anchor form of Song et al.'s
    lifted structured loss.

    Parameters
    ----------
    neg_margin, pos_margin : float
        :math:`\mu_-`, :math:`\mu_+`.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.

    Notes
    -----
    Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
    CVPR 2016; Hermans et al., "In Defense of the Triplet Loss for Person
    Re-Identification", 2017. Anchor chunks are recomputed in backward.
    """

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x, ref, weights = setup_rows(
            self.distance, embeddings, labels, indices, ref_embeddings, ref_labels
        )

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            d = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos_w, neg_w = weights(start, stop, d.dtype, d.device)  # (c, m)
            pos, neg = pos_w > 0, neg_w > 0
            z = masked_logsumexp(self._pos_excess(d), pos) + masked_logsumexp(
                self._neg_excess(d), neg
            )  # (c,)
            return pack(torch.relu(z).sum(), pos.sum() + neg.sum())

        total, n_pairs = sum_over_chunks(chunk_terms, x.shape[0], 4 * ref.shape[0], x, ref)
        if n_pairs == 0:
            return self.zero_loss(embeddings)
        return total / x.shape[0]
