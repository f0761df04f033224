"""ProxyNCA (Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies",
ICCV 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.losses.weight_classifier import WeightClassifierLoss
from dmlkit.registry import register_loss


@register_loss("proxy_nca")
class ProxyNCALoss(WeightClassifierLoss):
    """NCA against one learnable proxy per class: softmax over negative proxy distances.

    ``L = -1/B sum_i log( e^{-s d(x_i, p_{y_i})} / sum_c e^{-s d(x_i, p_c)} )`` with
    ``s = softmax_scale`` and, by default, ``d`` the squared Euclidean distance between
    L2-normalized embeddings and proxies. With a similarity ``d`` the sign flips
    (``e^{s sim}``). The denominator includes the positive proxy, as in
    pytorch-metric-learning (the paper's eq. 7 leaves it out).

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    softmax_scale : float
        Multiplier ``s`` of the logits (inverse temperature).
    distance : BaseDistance, optional
        Default ``EuclideanDistance(squared=True)`` on normalized vectors
        (pytorch-metric-learning's ``LpDistance(power=2)``).

    Attributes
    ----------
    proxies : nn.Parameter of shape (C, D)
        One proxy per class (same layout as pytorch-metric-learning's).

    Mined tuples (``indices``) weigh the samples as in pytorch-metric-learning, where the
    proxies are the reference set: only the anchors count (``a1`` and ``a2`` of pairs,
    the first member of triplets), see
    :class:`~dmlkit.losses.weight_classifier.WeightClassifierLoss`.

    Matches pytorch-metric-learning's ``ProxyNCALoss`` (value and gradient, mined tuples
    included). It drops samples whose softmax probability underflows to exactly 0; this
    one uses a stable log-softmax and keeps them.
    """

    accepts_indices = True
    weights_from_anchors = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        softmax_scale: float = 1.0,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(num_classes, embedding_size, distance=distance)
        if not softmax_scale > 0:
            raise ValueError(f"softmax_scale must be > 0, got {softmax_scale}")
        self.softmax_scale = float(softmax_scale)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.proxies)

    @staticmethod
    def default_distance() -> BaseDistance:
        return EuclideanDistance(squared=True)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class logits ``(n, C)``: ``s * sim`` or ``-s * distance`` to each proxy."""
        p = self.distance.maybe_normalize(self.proxies.to(embeddings.dtype))  # (C, D)
        return self._logits(embeddings, p)

    def _logits(self, x: Tensor, p: Tensor) -> Tensor:
        d = self.distance.compute_matrix(self.distance.maybe_normalize(x), p)  # (c, C)
        sign = 1.0 if self.distance.is_similarity else -1.0
        return (sign * self.softmax_scale) * d  # (c, C)

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        p = self.distance.maybe_normalize(self.proxies.to(embeddings.dtype))  # (C, D)

        def chunk_terms(
            xc: Tensor, lc: Tensor, wc: Tensor, p_: Tensor
        ) -> tuple[Tensor, Tensor]:
            loss = F.cross_entropy(self._logits(xc, p_), lc, reduction="none")  # (c,)
            return (loss * wc).sum(), torch.tensor(xc.shape[0], device=xc.device)

        total, count = self.chunked_row_sum(
            chunk_terms, embeddings, labels, weights, p, elems_per_row=4 * self.num_classes
        )
        return total / count.clamp_min(1)
