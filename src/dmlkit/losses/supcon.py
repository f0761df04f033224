"""Supervised contrastive loss (Khosla et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import masked_logsumexp, pack, setup_rows, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("supcon")
class SupConLoss(BaseMetricLoss):
    r"""Mean log-likelihood of each anchor's positives against all its pairs.

    For anchor :math:`i` with positives :math:`P_i`, negatives :math:`N_i` and
    :math:`A_i = P_i \cup N_i`:

    .. math::

        \ell_i = -\frac{1}{|P_i|}\sum_{p \in P_i}
            \Big(s_{ip}/\tau - \log\sum_{a \in A_i} e^{s_{ia}/\tau}\Big)

    (the "L_out" form). The loss is the mean of :math:`\ell_i` over anchors with a
    non-zero loss, and 0 unless the batch has both a positive and a negative pair
    (pytorch-metric-learning's ``SupConLoss`` and its default reducer). For a distance
    ``-d`` is used as the similarity.

    Parameters
    ----------
    temperature : float
        :math:`\tau`.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.CosineSimilarity`.

    Notes
    -----
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020. Anchor chunks are
    recomputed in backward: memory O(chunk * m). Softmaxes run in fp32 or better.
    """

    def __init__(self, temperature: float = 0.1, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

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
        sign = 1.0 if self.distance.is_similarity else -1.0

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            logits = sign * self.distance.compute_matrix(x_[start:stop], ref_) / self.temperature
            pos_w, neg_w = weights(start, stop, logits.dtype, logits.device)  # (c, m)
            pos, neg = pos_w > 0, neg_w > 0
            log_norm = masked_logsumexp(logits, pos | neg)  # (c,)
            n_pos = pos.sum(dim=1)  # (c,)
            pos_logit_sum = (logits * pos).sum(dim=1)  # (c,)
            mean_log_prob = (pos_logit_sum - n_pos * log_norm) / n_pos.clamp_min(1)  # (c,)
            loss = -mean_log_prob  # (c,)
            loss = torch.where(loss > 0, loss, torch.zeros_like(loss))  # rounding-safe
            return pack(loss.sum(), (loss > 0).sum(), pos.sum(), neg.sum())

        total, n_nonzero, n_pos, n_neg = sum_over_chunks(
            chunk_terms, x.shape[0], 5 * ref.shape[0], x, ref
        )
        if n_pos == 0 or n_neg == 0:
            return self.zero_loss(embeddings)
        return total / n_nonzero.clamp_min(1)
