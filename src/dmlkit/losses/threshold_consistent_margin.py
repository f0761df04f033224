"""Threshold-consistent margin loss (Zhang et al., "Threshold-Consistent Margin Loss for
Open-World Deep Metric Learning", ICLR 2024, arXiv:2307.04047)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import as_pairs, pack, setup_rows, sum_over_chunks, use_fused
from dmlkit.losses._tuple_distances import pair_distances
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("threshold_consistent_margin")
class ThresholdConsistentMarginLoss(BaseMetricLoss):
    r"""Push hard positives above ``margin_plus`` and hard negatives below ``margin_minus``.

    With cosine similarities :math:`s`, the positive pairs :math:`P` and negative pairs
    :math:`N`:

    .. math::

        L = \lambda^+ \frac{\sum_{p \in P} (m^+ - s_p)\,[s_p \le m^+]}
                           {\sum_{p \in P} [s_p \le m^+]}
          + \lambda^- \frac{\sum_{n \in N} (s_n - m^-)\,[s_n \ge m^-]}
                           {\sum_{n \in N} [s_n \ge m^-]}

    (a part whose indicator sum is 0 adds 0). The paper adds this regularizer to a base
    loss (with :class:`~dmlkit.losses.WeightedSumLoss`). Same parameters and values as
    pytorch-metric-learning's ``ThresholdConsistentMarginLoss``; with ``ref_embeddings``
    the positives and negatives are taken from the reference set (pytorch-metric-learning
    reads them from the batch there). With labels the pairs are walked in anchor chunks.

    Parameters
    ----------
    lambda_plus, lambda_minus : float
        Weights of the positive and negative parts.
    margin_plus, margin_minus : float
        Similarity thresholds :math:`m^+` and :math:`m^-`.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted (the margins are cosines).
    """

    def __init__(
        self,
        lambda_plus: float = 1.0,
        lambda_minus: float = 1.0,
        margin_plus: float = 0.9,
        margin_minus: float = 0.5,
        distance: BaseDistance | None = None,
    ) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(
                "ThresholdConsistentMarginLoss needs a CosineSimilarity, "
                f"got {type(distance).__name__}"
            )
        super().__init__(distance=distance)
        self.lambda_plus = float(lambda_plus)
        self.lambda_minus = float(lambda_minus)
        self.margin_plus = float(margin_plus)
        self.margin_minus = float(margin_minus)

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    def _parts(self, s: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """Sums and counts of both parts; ``pos``/``neg`` are multiplicities like ``s``."""
        hard_p = (s <= self.margin_plus).to(s.dtype) * pos
        hard_n = (s >= self.margin_minus).to(s.dtype) * neg
        return pack(
            ((self.margin_plus - s) * hard_p).sum(),
            ((s - self.margin_minus) * hard_n).sum(),
            hard_p.sum(),
            hard_n.sum(),
        )

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is not None:
            a1, p, a2, n = as_pairs(indices)
            (s_p, s_n), _ = pair_distances(
                self.distance, embeddings, ref_embeddings, [(a1, p), (a2, n)]
            )  # (P,), (N,): no (T, dim) copies
            ones_p, ones_n = torch.ones_like(s_p), torch.ones_like(s_n)
            zp, zn = torch.zeros_like(s_p), torch.zeros_like(s_n)
            sum_p, _, cnt_p, _ = self._parts(s_p, ones_p, zp)
            _, sum_n, _, cnt_n = self._parts(s_n, zn, ones_n)
        else:
            x, ref_, weights = setup_rows(
                self.distance, embeddings, labels, None, ref_embeddings, ref_labels
            )

            def chunk_terms(start: int, stop: int, x_: Tensor, r_: Tensor) -> Tensor:
                s = self.distance.compute_matrix(x_[start:stop], r_)  # (c, m)
                pos, neg = weights(start, stop, s.dtype, s.device)  # (c, m)
                return self._parts(s, pos, neg)

            if use_fused(x, ref_, labels, None):  # small (n, m): one matrix, plain autograd
                sum_p, sum_n, cnt_p, cnt_n = chunk_terms(0, x.shape[0], x, ref_)
            else:
                sum_p, sum_n, cnt_p, cnt_n = sum_over_chunks(
                    chunk_terms, x.shape[0], 4 * ref_.shape[0], x, ref_
                )
        loss = self.zero_loss(embeddings)
        if cnt_p > 0:
            loss = loss + self.lambda_plus * sum_p / cnt_p
        if cnt_n > 0:
            loss = loss + self.lambda_minus * sum_n / cnt_n
        return loss


__all__ = ["ThresholdConsistentMarginLoss"]
