"""Neighbourhood components analysis loss (Goldberger, Roweis, Hinton & Salakhutdinov,
"Neighbourhood Components Analysis", NeurIPS 2004)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._miner_weights import miner_weights
from dmlkit.losses._rows import masked_logsumexp, pack, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("nca")
class NCALoss(BaseMetricLoss):
    r"""Log-probability that a sample's stochastic nearest neighbour shares its label.

    Each query :math:`i` picks a reference :math:`j \ne i` with probability
    :math:`p_{ij} = \operatorname{softmax}_j(-s\, d(x_i, x_j))` (:math:`+s` for a
    similarity), and

    .. math::

        \ell_i = -\log \sum_{j:\, y_j = y_i} p_{ij},
        \qquad L = \frac{1}{|V|} \sum_{i \in V} w_i \ell_i,

    where :math:`V` are the queries with at least one positive reference. Without
    ``indices`` every :math:`w_i = 1`; with mined tuples :math:`w_i` is how often sample
    :math:`i` occurs in them over the largest such count (with ``ref_embeddings`` only the
    anchors count), and an empty mined set means all weights 1, as in
    pytorch-metric-learning's ``NCALoss``, which this matches (labels, mined tuples,
    ``ref_embeddings``). That loss also drops queries whose probability underflows to 0;
    this one works in log space and keeps them.

    Parameters
    ----------
    softmax_scale : float
        Inverse temperature :math:`s`.
    distance : BaseDistance, optional
        Default ``EuclideanDistance(squared=True)`` on L2-normalized embeddings
        (pytorch-metric-learning's ``LpDistance(power=2)``), as in the paper.

    Notes
    -----
    Queries are walked in chunks: memory O(chunk * m), not O(n * m).
    """

    requires_labels = True

    def __init__(self, softmax_scale: float = 1.0, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)
        if softmax_scale <= 0:
            raise ValueError(f"NCALoss: softmax_scale must be > 0, got {softmax_scale}")
        self.softmax_scale = float(softmax_scale)

    @staticmethod
    def default_distance() -> BaseDistance:
        return EuclideanDistance(squared=True)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels is None:
            raise ValueError("NCALoss needs labels")
        no_ref = ref_embeddings is None
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if no_ref else self.distance.maybe_normalize(ref_embeddings)  # (m, d)
        full_ref_labels = labels if no_ref else ref_labels
        n, m = x.shape[0], ref.shape[0]
        w = miner_weights(indices, n, x, using_ref=not no_ref)  # (n,)
        sign = self.softmax_scale * (1.0 if self.distance.is_similarity else -1.0)

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            logits = sign * self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = pos_neg_masks(
                labels[start:stop], full_ref_labels, exclude_self=no_ref, row_offset=start
            )  # (c, m)
            others = pos | neg  # (c, m): every reference but the query itself
            # one exponential for both sums, shifted by the row's largest logit
            z = logits.masked_fill(~others, torch.finfo(logits.dtype).min)  # (c, m)
            peak = z.amax(dim=1, keepdim=True).detach()  # (c, 1)
            e = torch.exp(z - peak)  # (c, m), 0 off ``others``
            valid = pos.any(dim=1)  # (c,)
            sum_pos = (e * pos).sum(dim=1)  # (c,)
            log_all = torch.log(e.sum(dim=1))  # (c,), relative to the peak
            # a sum below the smallest normal number (0, or subnormal: its reciprocal, the
            # gradient of its log, overflows) is taken again as a log-sum-exp
            normal = sum_pos >= torch.finfo(sum_pos.dtype).tiny  # (c,)
            log_pos = torch.log(torch.where(normal, sum_pos, 1.0))  # (c,)
            lost = valid & ~normal  # positives underflowed below the peak
            if bool(lost.any()):
                log_pos = torch.where(lost, masked_logsumexp(logits, pos) - peak[:, 0], log_pos)
            loss = torch.where(valid, log_all - log_pos, 0.0) * w[start:stop]  # (c,)
            return pack(loss.sum(), valid.sum())

        total, count = sum_over_chunks(chunk_terms, n, 4 * m, x, ref)
        if count == 0:
            return self.zero_loss(embeddings)
        return total / count


__all__ = ["NCALoss"]
