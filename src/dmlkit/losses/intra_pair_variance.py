"""Intra-pair variance loss (Yu, Liu, Yang & Tao, "Deep Metric Learning with Tuplet
Margin Loss", ICCV 2019, eq. 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import as_pairs, pack, setup_rows, sum_over_chunks, use_fused
from dmlkit.losses._tuple_distances import pair_distances
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("intra_pair_variance")
class IntraPairVarianceLoss(BaseMetricLoss):
    r"""Penalize positive (and negative) pairs that stray from their batch mean.

    With :math:`s` the similarities of the positive pairs :math:`P` and negative pairs
    :math:`N`, and :math:`\mu_P`, :math:`\mu_N` their means (gradients flow through the
    means too):

    .. math::

        L = \frac{1}{|P|} \sum_{p \in P} \big[(1 - \epsilon_+)\,\mu_P - s_p\big]_+^2
          + \frac{1}{|N|} \sum_{n \in N} \big[s_n - (1 + \epsilon_-)\,\mu_N\big]_+^2 .

    For a distance (smaller = closer) the two brackets swap roles:
    :math:`[d_p - (1 + \epsilon_+)\mu_P]_+` and :math:`[(1 - \epsilon_-)\mu_N - d_n]_+`.
    A part with no pair adds 0, and a batch where both the positive and the negative
    pair lists hold at most one pair has loss 0 (pytorch-metric-learning's
    ``IntraPairVarianceLoss``, same parameters and default reducer). Mined pairs count
    as often as they are listed; triplets give their ``(a, p)`` and ``(a, n)`` pairs.
    With labels the pairs are walked in anchor chunks (memory O(chunk * m)).

    Parameters
    ----------
    pos_eps, neg_eps : float
        :math:`\epsilon_+`, :math:`\epsilon_-`.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.CosineSimilarity`.
    """

    def __init__(
        self, pos_eps: float = 0.01, neg_eps: float = 0.01, distance: BaseDistance | None = None
    ) -> None:
        super().__init__(distance=distance)
        self.pos_eps = float(pos_eps)
        self.neg_eps = float(neg_eps)

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    def _terms(self, s: Tensor, mu_p: Tensor, mu_n: Tensor) -> tuple[Tensor, Tensor]:
        """Squared hinge of every entry of ``s`` as a positive and as a negative."""
        if self.distance.is_similarity:
            pos = (1.0 - self.pos_eps) * mu_p - s
            neg = s - (1.0 + self.neg_eps) * mu_n
        else:
            pos = s - (1.0 + self.pos_eps) * mu_p
            neg = (1.0 - self.neg_eps) * mu_n - s
        return torch.relu(pos) ** 2, torch.relu(neg) ** 2

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is not None:
            return self._listed_pairs(embeddings, indices, ref_embeddings)
        x, ref, weights = setup_rows(
            self.distance, embeddings, labels, None, ref_embeddings, ref_labels
        )
        n, m = x.shape[0], ref.shape[0]
        if use_fused(x, ref, labels, None):  # small (n, m): one matrix, plain autograd
            s = self.distance.compute_matrix(x, ref)  # (n, m)
            full_ref = labels if ref_labels is None else ref_labels
            pos, neg = pos_neg_masks(labels, full_ref, exclude_self=ref_embeddings is None)
            sp, sn = s[pos], s[neg]  # (P,), (N,)
            if sp.numel() <= 1 and sn.numel() <= 1:
                return self.zero_loss(embeddings)
            zero = self.zero_loss(embeddings)
            total = zero
            if sp.numel():
                total = total + self._terms(sp, sp.mean(), zero)[0].mean()
            if sn.numel():
                total = total + self._terms(sn, zero, sn.mean())[1].mean()
            return total

        def means(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            s = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = weights(start, stop, s.dtype, s.device)  # (c, m) 0/1
            return pack((s * pos).sum(), (s * neg).sum(), pos.sum(), neg.sum())

        sum_p, sum_n, n_pos, n_neg = sum_over_chunks(means, n, 4 * m, x, ref)
        if n_pos <= 1 and n_neg <= 1:
            return self.zero_loss(embeddings)
        mu = torch.stack([sum_p / n_pos.clamp_min(1), sum_n / n_neg.clamp_min(1)])  # (2,)

        def hinges(start: int, stop: int, x_: Tensor, ref_: Tensor, mu_: Tensor) -> Tensor:
            s = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = weights(start, stop, s.dtype, s.device)  # (c, m)
            lp, ln = self._terms(s, mu_[0], mu_[1])  # (c, m) each
            return pack((lp * pos).sum(), (ln * neg).sum())

        loss_p, loss_n = sum_over_chunks(hinges, n, 4 * m, x, ref, mu)
        return loss_p / n_pos.clamp_min(1) + loss_n / n_neg.clamp_min(1)

    def _listed_pairs(
        self, embeddings: Tensor, indices: IndexTuple, ref_embeddings: Tensor | None
    ) -> Tensor:
        a1, p, a2, n = as_pairs(indices)
        if a1.numel() <= 1 and a2.numel() <= 1:
            return self.zero_loss(embeddings)
        total = self.zero_loss(embeddings)
        zero = total
        (s_p, s_n), _ = pair_distances(
            self.distance, embeddings, ref_embeddings, [(a1, p), (a2, n)]
        )  # (P,), (N,): no (T, dim) copies
        if a1.numel():
            s = s_p
            total = total + self._terms(s, s.mean(), zero)[0].mean()
        if a2.numel():
            s = s_n
            total = total + self._terms(s, zero, s.mean())[1].mean()
        return total


__all__ = ["IntraPairVarianceLoss"]
