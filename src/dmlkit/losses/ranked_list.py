"""Ranked list loss (Wang, Hua, Kodirov, Hu, Garnier & Robertson, "Ranked List Loss for Deep
Metric Learning", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import pack, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss

#: added once per reference to each weight sum (pytorch-metric-learning's 1e-5 per entry)
WEIGHT_EPS = 1e-5


@register_loss("ranked_list")
class RankedListLoss(BaseMetricLoss):
    r"""Pull positives inside a sphere of radius :math:`\alpha - m`, push negatives beyond
    :math:`\alpha`, each set weighted by how badly its members violate.

    For anchor :math:`i` with distances :math:`d_{ij}`, the violating positives
    :math:`P^*_i = \{j: y_j = y_i, j \ne i, d_{ij} > \alpha - m\}` and negatives
    :math:`N^*_i = \{j: y_j \ne y_i, d_{ij} < \alpha\}` (entries with :math:`d_{ij} = 0`
    are left out of both, as in pytorch-metric-learning):

    .. math::

        L_P(i) = \frac{\sum_{j \in P^*_i} w^+_{ij} (d_{ij} - (\alpha - m))}
                      {\sum_{j \in P^*_i} w^+_{ij} + \epsilon |R|},\quad
        w^+_{ij} = e^{T_p (d_{ij} - (\alpha - m))},

        L_N(i) = \frac{\sum_{j \in N^*_i} w^-_{ij} (\alpha - d_{ij})}
                      {\sum_{j \in N^*_i} w^-_{ij} + \epsilon |R|},\quad
        w^-_{ij} = e^{T_n (\alpha - d_{ij})},

        L = \frac{1}{n}\sum_i (1 - \lambda) L_P(i) + \lambda L_N(i),

    with :math:`\lambda` = ``imbalance``, :math:`|R|` the number of references (the
    batch, or ``ref_embeddings``) and :math:`\epsilon = 10^{-5}` (pytorch-metric-learning
    adds it to every entry of the weight row). The weights are differentiated through,
    as there. ``Tp = 0`` is the paper's RLL-Simpler. Matches pytorch-metric-learning's
    ``RankedListLoss``, which takes labels only; here ``ref_embeddings`` also work
    (no self-exclusion then, unless they are the batch itself: ``ref_embeddings=embeddings,
    ref_labels=labels``, the same objects, is no reference). Mined tuples are not used
    (ValueError), as there.

    Parameters
    ----------
    margin : float
        Margin :math:`m` between the positive and the negative boundary.
    Tn : float
        Temperature of the negative weights.
    imbalance : float
        Weight :math:`\lambda \in [0, 1]` of the negative part.
    alpha : float, optional
        Negative boundary :math:`\alpha`; default ``1 + margin / 2``.
    Tp : float
        Temperature of the positive weights.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on L2-normalized embeddings.

    Notes
    -----
    Anchors are walked in chunks: memory O(chunk * m), not O(n * m). The weights are
    computed relative to each row's largest, so no temperature or margin overflows them
    (large ``Tn`` / ``Tp`` tend to the hardest violator's gap).
    """

    requires_labels = True
    accepts_indices = False

    def __init__(
        self,
        margin: float,
        Tn: float,  # noqa: N803 (pytorch-metric-learning's name)
        imbalance: float = 0.5,
        alpha: float | None = None,
        Tp: float = 0.0,  # noqa: N803
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if not 0.0 <= imbalance <= 1.0:
            raise ValueError(f"imbalance must be in [0, 1], got {imbalance}")
        self.margin = float(margin)
        self.Tn = float(Tn)
        self.imbalance = float(imbalance)
        self.alpha = 1.0 + self.margin / 2.0 if alpha is None else float(alpha)
        self.Tp = float(Tp)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels is None:
            raise ValueError("RankedListLoss needs labels")
        no_ref = ref_embeddings is None
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if no_ref else self.distance.maybe_normalize(ref_embeddings)  # (m, d)
        full_ref_labels = labels if no_ref else ref_labels
        n, m = x.shape[0], ref.shape[0]
        pos_bound, neg_bound = self.alpha - self.margin, self.alpha

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            d = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = pos_neg_masks(
                labels[start:stop], full_ref_labels, exclude_self=no_ref, row_offset=start
            )  # (c, m)
            pos = pos & (d > pos_bound) & (d > 0)  # (c, m): violating positives
            neg = neg & (d < neg_bound) & (d > 0)  # (c, m): violating negatives
            pos_gap = torch.where(pos, d - pos_bound, 0.0)  # (c, m)
            neg_gap = torch.where(neg, neg_bound - d, 0.0)  # (c, m)
            eps = WEIGHT_EPS * m
            loss_p = weighted_gap_mean(pos, pos_gap, self.Tp, eps)  # (c,)
            loss_n = weighted_gap_mean(neg, neg_gap, self.Tn, eps)  # (c,)
            loss = (1.0 - self.imbalance) * loss_p + self.imbalance * loss_n  # (c,)
            return pack(loss.sum(), pos.sum() + neg.sum())

        total, _ = sum_over_chunks(chunk_terms, n, 6 * m, x, ref)
        return total / n


def weighted_gap_mean(valid: Tensor, gap: Tensor, temperature: float, eps: float) -> Tensor:
    r"""Per row, :math:`\sum_j w_j g_j / (\sum_j w_j + \epsilon)` over the ``valid``
    entries, :math:`w_j = e^{T g_j}`, without overflow.

    ``valid``, ``gap`` are ``(c, m)``. Every term is scaled by :math:`e^{-M}`, ``M`` the
    row's largest :math:`T g_j` over its valid entries (clamped at 0, so rows that could
    not overflow, and rows with no valid entry, are computed as written): the ratio is
    unchanged, ``eps`` included (scaled alike). Returns ``(c,)``; 0 for a row with no
    valid entry.
    """
    logits = temperature * gap  # (c, m)
    shift = torch.where(valid, logits, 0.0).amax(dim=1, keepdim=True).clamp_min(0.0)  # (c, 1)
    shift = shift.detach()  # the ratio does not depend on it
    w = torch.where(valid, torch.exp(torch.where(valid, logits - shift, 0.0)), 0.0)  # (c, m)
    denom = w.sum(dim=1) + eps * torch.exp(-shift.squeeze(1))  # (c,)
    return (w * gap).sum(dim=1) / denom  # (c,)


__all__ = ["RankedListLoss", "WEIGHT_EPS"]
