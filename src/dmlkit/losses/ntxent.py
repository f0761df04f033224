"""NT-Xent / InfoNCE loss (van den Oord et al. 2018; Chen et al., SimCLR, ICML 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import masked_logsumexp, pack, setup_rows, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("ntxent")
class NTXentLoss(BaseMetricLoss):
    r"""Normalized temperature-scaled cross entropy, one term per positive pair.

    For a positive pair :math:`(i, p)` and the negatives :math:`N_i` of anchor :math:`i`:

    .. math::

        \ell_{ip} = -\log \frac{e^{s_{ip}/\tau}}{e^{s_{ip}/\tau} + \sum_{k \in N_i} e^{s_{ik}/\tau}}

    averaged over positive pairs (pytorch-metric-learning's ``NTXentLoss``). With mined
    ``indices`` the negatives of a pair are the mined negative pairs sharing its anchor
    (counted with multiplicity). For a distance ``-d`` is the similarity. Also
    registered as ``"infonce"`` (:class:`InfoNCELoss`).

    Parameters
    ----------
    temperature : float
        :math:`\tau`.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.CosineSimilarity`.

    Notes
    -----
    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020; Sohn 2016; van den Oord et al., "Representation
    Learning with Contrastive Predictive Coding", 2018. Anchor chunks are recomputed in
    backward: memory O(chunk * m).
    """

    def __init__(self, temperature: float = 0.07, distance: BaseDistance | None = None) -> None:
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
            neg_lse = masked_logsumexp(logits, neg_w > 0, weights=neg_w)  # (c,)
            has_neg = (neg_w > 0).any(dim=1, keepdim=True)  # (c, 1)
            denom = torch.where(
                has_neg, torch.logaddexp(logits, neg_lse[:, None]), logits
            )  # (c, m): log(e^{s_ip} + sum_k e^{s_ik})
            loss = denom - logits  # (c, m)
            return pack((loss * pos_w).sum(), pos_w.sum(), neg_w.sum())

        total, n_pos, n_neg = sum_over_chunks(chunk_terms, x.shape[0], 5 * ref.shape[0], x, ref)
        if n_pos == 0 or n_neg == 0:
            return self.zero_loss(embeddings)
        return total / n_pos


@register_loss("infonce")
class InfoNCELoss(NTXentLoss):
    """InfoNCE (van den Oord et al. 2018): the same loss as :class:`NTXentLoss`."""
