"""Circle loss (Sun, Cheng, Zhang, Zhang, Zheng, Wang & Wei, CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import masked_logsumexp, pack, setup_rows, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("circle")
class CircleLoss(BaseMetricLoss):
    r"""Pair similarity optimization with self-paced weights, per anchor.

    For anchor :math:`i` with positive similarities :math:`s_p` and negative
    similarities :math:`s_n`:

    .. math::

        \ell_i = \operatorname{softplus}\Big(
            \log\sum_{p} e^{-\gamma a_p (s_p - \Delta_p)} +
            \log\sum_{n} e^{\gamma a_n (s_n - \Delta_n)}\Big),

    :math:`a_p = [1 + m - s_p]_+`, :math:`a_n = [s_n + m]_+` (treated as constants),
    :math:`\Delta_p = 1 - m`, :math:`\Delta_n = m`. Anchors lacking a positive or a
    negative contribute nothing; the loss is the mean over anchors with a non-zero
    loss (pytorch-metric-learning's ``CircleLoss`` and its default reducer).

    Parameters
    ----------
    m : float
        Relaxation margin.
    gamma : float
        Scale.
    detach_weights : bool
        Treat the self-paced weights :math:`a_p, a_n` as constants in backward (the
        paper's and pytorch-metric-learning's choice). ``False`` differentiates through
        them, which makes the gradient the exact derivative of the loss value.
    distance : BaseDistance, optional
        Must be a similarity; default :class:`~dmlkit.distances.CosineSimilarity`.

    Notes
    -----
    Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
    CVPR 2020. All pairs are processed in anchor chunks recomputed in backward.
    """

    def __init__(
        self,
        m: float = 0.4,
        gamma: float = 80.0,
        detach_weights: bool = True,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if not self.distance.is_similarity:
            raise ValueError(
                "CircleLoss needs a similarity (e.g. CosineSimilarity), "
                f"got {type(self.distance).__name__}"
            )
        if gamma <= 0:
            raise ValueError(f"CircleLoss: gamma must be > 0, got {gamma}")
        self.m = float(m)
        self.gamma = float(gamma)
        self.detach_weights = detach_weights

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

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
        m, gamma = self.m, self.gamma

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            s = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos_w, neg_w = weights(start, stop, s.dtype, s.device)  # (c, m)
            pos, neg = pos_w > 0, neg_w > 0
            s_w = s.detach() if self.detach_weights else s
            logit_p = -gamma * torch.relu(1 + m - s_w) * (s - (1 - m))  # (c, m)
            logit_n = gamma * torch.relu(s_w + m) * (s - m)  # (c, m)
            z = masked_logsumexp(logit_p, pos) + masked_logsumexp(logit_n, neg)  # (c,)
            valid = pos.any(dim=1) & neg.any(dim=1)  # (c,)
            loss = F.softplus(z) * valid  # (c,)
            return pack(loss.sum(), (loss > 0).sum(), pos.sum() + neg.sum())

        total, n_nonzero, n_pairs = sum_over_chunks(
            chunk_terms, x.shape[0], 6 * ref.shape[0], x, ref
        )
        if n_pairs == 0:
            return self.zero_loss(embeddings)
        return total / n_nonzero.clamp_min(1)
