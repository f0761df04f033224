"""Tuplet margin loss (Yu & Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import masked_logsumexp, pack, setup_rows, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


def cos_minus_angle(cos: Tensor, angle: float) -> Tensor:
    """``cos(arccos(cos) - angle)`` elementwise, with a finite gradient at ``cos = +-1``.

    ``cos(t - a) = cos t cos a + sin t sin a`` with ``sin t = sqrt(1 - cos^2 t) >= 0``;
    ``1 - cos^2`` is clamped to 1e-12, so the slope stays finite where ``arccos`` has none.
    """
    c = cos.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - c * c).clamp_min(1e-12))
    return c * math.cos(angle) + sin * math.sin(angle)


@register_loss("tuplet_margin")
class TupletMarginLoss(BaseMetricLoss):
    r"""Softmax over one positive and the anchor's negatives, with an angular margin.

    For a positive pair :math:`(a, p)` at angle :math:`\theta_{ap}` and the anchor's
    negatives :math:`N_a` at cosines :math:`\cos\theta_{an}`:

    .. math::

        \ell_{ap} = \log\Big(1 + \sum_{n \in N_a}
            e^{s (\cos\theta_{an} - \cos(\theta_{ap} - \beta))}\Big)

    with scale :math:`s` and margin :math:`\beta`; the loss is the mean of
    :math:`\ell_{ap}` over all positive pairs (a pair whose anchor has no negative adds 0
    and still counts). Mined pairs count as often as they are listed; mined triplets
    give their ``(a, p)`` and ``(a, n)`` pairs. Matches pytorch-metric-learning's
    ``TupletMarginLoss`` (labels, mined tuples, ``ref_embeddings``), except that a
    positive at angle exactly 0 gets a finite gradient there, not NaN.

    Parameters
    ----------
    margin : float
        Angular margin :math:`\beta` in degrees (the paper's and pytorch-metric-learning's
        default 5.73, i.e. 0.1 rad).
    scale : float
        Scale :math:`s` of the cosines.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted (the margin is an angle).

    Notes
    -----
    All pairs are walked in anchor chunks: memory O(chunk * m), not O(n * m).
    """

    def __init__(
        self, margin: float = 5.73, scale: float = 64.0, distance: BaseDistance | None = None
    ) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(
                f"TupletMarginLoss needs a CosineSimilarity, got {type(distance).__name__}"
            )
        super().__init__(distance=distance)
        if scale <= 0:
            raise ValueError(f"TupletMarginLoss: scale must be > 0, got {scale}")
        self.margin = float(margin)
        self.scale = float(scale)

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    @property
    def margin_radians(self) -> float:
        """The margin in radians (pytorch-metric-learning keeps this in ``margin``)."""
        return math.radians(self.margin)

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
        beta, s = self.margin_radians, self.scale

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            cos = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos_w, neg_w = weights(start, stop, cos.dtype, cos.device)  # (c, m)
            neg = neg_w > 0
            lse = masked_logsumexp(s * cos, neg, weights=neg_w)  # (c,)
            has_neg = neg.any(dim=1, keepdim=True)  # (c, 1)
            pos_logit = s * cos_minus_angle(cos, beta)  # (c, m)
            term = torch.where(has_neg, F.softplus(lse[:, None] - pos_logit), 0.0)  # (c, m)
            return pack((term * pos_w).sum(), pos_w.sum())

        total, n_pos = sum_over_chunks(chunk_terms, x.shape[0], 4 * ref.shape[0], x, ref)
        if n_pos == 0:
            return self.zero_loss(embeddings)
        return total / n_pos


__all__ = ["TupletMarginLoss", "cos_minus_angle"]
